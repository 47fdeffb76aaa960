"""INT8 for ONNX Runtime on CPU: a Q/DQ layout that ONNX Runtime fuses into integer kernels.

Model Optimizer's INT8 graph (:func:`retinakit.export.quantize_int8`, for TensorRT) puts
QuantizeLinear/DequantizeLinear only on the *inputs* of convolutions. TensorRT fuses that;
ONNX Runtime's CPU provider does not: its QDQ -> ``QLinearConv`` fusion needs a Q on the
convolution's *output* too, so it runs each conv in FP32 behind its DQ nodes and the INT8
model is slower than FP32 (docs/deployment.md, measured).

:func:`quantize_int8_ort` makes the layout ONNX Runtime wants with ``onnxruntime.quantization``
(QDQ format, Q/DQ on inputs and outputs, per-channel signed INT8 weights, unsigned INT8
activations with a zero point, i.e. U8S8: the combination ONNX Runtime's x86 integer GEMM
kernels take, with VNNI ``vpdpbusd`` where the CPU has it). Only backbone/head nodes are
quantized (minus ``exclude``); the post-processing stays FP32. Not for TensorRT.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..config import ConfigError
from ._deps import require
from .onnx import MAX_IR_VERSION, read_metadata, write_metadata
from .quantize import excluded_node_names, trunk_node_names

__all__ = ["ORT_CALIBRATION_METHODS", "quantize_int8_ort"]

logger = logging.getLogger(__name__)

# onnxruntime's histogram calibrators (entropy, percentile) collect every tensor of the graph,
# including the data-dependent detections, and fail on them; min/max works on the e2e graph.
ORT_CALIBRATION_METHODS = ("max",)


def quantize_int8_ort(
    onnx_path: str,
    output_path: str,
    *,
    calibration_data: dict[str, np.ndarray],
    method: str = "max",
    exclude: Sequence[str] = (),
    per_channel: bool = True,
) -> str:
    """ONNX Runtime CPU flavour of the INT8 model (QDQ with output Q, U8S8, per-channel weights).

    Args:
        calibration_data: ``{"images": [N, 3, H, W], "image_sizes": [N, 2]}`` float32 (see
            :func:`retinakit.export.calibration.calibration_arrays`).
        method: ``"max"`` (min/max ranges) only.
        exclude: ``EXPORT.INT8.EXCLUDE`` patterns: matching backbone/head nodes stay FP32.
        per_channel: one weight scale per output channel (the default, what deploy writes);
            ``False`` (one scale per tensor) exists for the recipe comparison of
            ``tools/benchmark.py int8 --ort-per-tensor``.
    """
    onnx = require("onnx")
    q = require("onnxruntime.quantization", "INT8 for ONNX Runtime (onnxruntime.quantization)")
    if method not in ORT_CALIBRATION_METHODS:
        raise ConfigError(
            f"EXPORT.INT8.ORT_CPU_MODEL calibrates with min/max only (onnxruntime's {method!r} calibrator cannot run on "
            "the end-to-end graph): set EXPORT.INT8.CALIBRATION_METHOD (--calibration-method) max, or turn the ORT model off."
        )
    proto = onnx.load(onnx_path, load_external_data=False)
    kept = set(excluded_node_names(proto, exclude))
    nodes = [n for n in trunk_node_names(proto)[0] if n not in kept]
    n_images = len(calibration_data["images"])

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= n_images:
                return None
            self.i += 1
            return {k: v[self.i - 1 : self.i] for k, v in calibration_data.items()}

    q.quantize_static(
        onnx_path, output_path, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
        activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8, nodes_to_quantize=nodes,
        calibrate_method=q.CalibrationMethod.MinMax, extra_options={"ActivationSymmetric": False},
    )
    out = onnx.load(output_path)
    out.ir_version = min(out.ir_version, MAX_IR_VERSION)
    meta = read_metadata(onnx_path)
    meta.update({"precision": "int8", "calibration_method": method, "int8_layout": "onnxruntime-cpu"})
    write_metadata(out, meta)
    onnx.save(out, output_path)
    logger.info(f"Wrote ONNX Runtime CPU INT8 model '{output_path}' ({len(nodes)} backbone/head nodes quantizable).")
    return output_path
