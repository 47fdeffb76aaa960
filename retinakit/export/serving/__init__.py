"""Files that serving engines load unchanged: a Triton model repository and a DeepStream nvinfer config.

* :func:`write_triton_repository` (``tools/deploy.py --triton-repo``): ``config.pbtxt``, labels
  and the ONNX model or TensorRT engine, for Triton's onnxruntime / tensorrt backends.
* :func:`export_deepstream_onnx` + :func:`write_deepstream_config` (``tools/deploy.py
  --deepstream``): a graph in the layout of DeepStream's stock BatchedNMS parser and its
  ``config_infer_primary_retinakit.txt``.

Neither needs Triton or DeepStream installed. See docs/deployment.md.
"""
from .deepstream import (
    DEEPSTREAM_OUTPUTS,
    DeepStreamModule,
    deepstream_scale,
    export_deepstream_onnx,
    write_deepstream_config,
)
from .labels import class_labels, write_labels
from .triton import TritonTensor, onnx_io, triton_config_text, write_triton_repository

__all__ = [
    "DEEPSTREAM_OUTPUTS",
    "DeepStreamModule",
    "TritonTensor",
    "class_labels",
    "deepstream_scale",
    "export_deepstream_onnx",
    "onnx_io",
    "triton_config_text",
    "write_deepstream_config",
    "write_labels",
    "write_triton_repository",
]
