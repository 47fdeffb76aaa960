"""Deployment: ONNX export (end-to-end / heads-only), FP16 and INT8 Q/DQ ONNX, TensorRT engines,
and one predictor API over PyTorch, onnxruntime and TensorRT.

Needs ``pip install retinakit[deploy]`` (ONNX, onnxruntime, onnxscript, NVIDIA Model
Optimizer) and, for engines, ``retinakit[tensorrt]``. Importing this package needs neither:
each function reports the missing extra when it is called. See docs/deployment.md.
"""
from ._deps import MissingDependencyError
from .calib_cache import CacheError
from .calibration import CalibrationError, calibration_arrays, list_images
from .onnx import export_onnx, read_metadata
from .predictor import (
    Predictor,
    PredictorError,
    load_model,
    load_predictor,
    model_metadata,
)
from .quantize import (
    CALIBRATION_METHODS,
    QuantizationError,
    convert_fp16,
    quantize_int8,
)
from .winograd import winograd_onnx

__all__ = [
    "CALIBRATION_METHODS",
    "CacheError",
    "CalibrationError",
    "MissingDependencyError",
    "Predictor",
    "PredictorError",
    "QuantizationError",
    "calibration_arrays",
    "convert_fp16",
    "export_onnx",
    "list_images",
    "load_model",
    "load_predictor",
    "model_metadata",
    "quantize_int8",
    "read_metadata",
    "winograd_onnx",
]
