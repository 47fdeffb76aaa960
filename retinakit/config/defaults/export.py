"""EXPORT.* defaults (deployment: ONNX, FP16/INT8, TensorRT)."""
from ..config import CfgNode as CN


def add_export_config(_C: CN) -> None:
    _C.EXPORT = CN()
    _C.EXPORT.OPSET = 18
