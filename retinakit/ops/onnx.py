"""ONNX translations of retinakit ops for the dynamo-based ``torch.onnx.export``.

``nms`` becomes the standard ONNX ``NonMaxSuppression`` (opset >= 11), which onnxruntime
and TensorRT's ONNX parser run natively, so exported models need no custom plugin::

    from retinakit.ops.onnx import custom_translation_table
    torch.onnx.export(model, args, dynamo=True, custom_translation_table=custom_translation_table())

Differences from the compiled kernel that an exported model inherits from the ONNX op:
boxes are normalised (corners in any order, so inverted boxes are not empty there), boxes of
zero area never suppress, and NaN scores are not removed; on ordinary boxes the kept indices
are the same. Needs ``onnxscript`` (``pip install retinakit[deploy]``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["custom_translation_table", "nms_to_onnx"]


def _opset() -> Any:
    try:
        from onnxscript import opset18
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise ImportError(
            "Exporting retinakit ops to ONNX needs onnxscript: pip install 'retinakit[deploy]' (or pip install onnxscript)."
        ) from e
    return opset18


def nms_to_onnx(boxes: Any, scores: Any, iou_threshold: float) -> Any:
    """``retinakit::nms(boxes [N, 4], scores [N], iou_threshold) -> keep [K]`` as ONNX.

    ``NonMaxSuppression(boxes [1, N, 4], scores [1, 1, N], max_output = N, iou_threshold)``
    gives ``[K, 3]`` rows (batch, class, index) in decreasing score; the index column is kept.
    """
    op = _opset()
    b = op.Unsqueeze(boxes, op.Constant(value_ints=[0]))
    s = op.Unsqueeze(scores, op.Constant(value_ints=[0, 1]))
    if getattr(scores, "dtype", None) is not None and str(scores.dtype).lower() not in ("float", "float32", "1"):
        b, s = op.Cast(b, to=1), op.Cast(s, to=1)
    max_out = op.Shape(boxes, start=0, end=1)
    iou = op.Constant(value_floats=[float(iou_threshold)])
    selected = op.NonMaxSuppression(b, s, max_out, iou)
    idx = op.Gather(selected, op.Constant(value_ints=[2]), axis=1)
    return op.Reshape(idx, op.Constant(value_ints=[-1]))


def custom_translation_table() -> dict[Any, Callable[..., Any]]:
    """``{torch.ops.retinakit.nms.default: nms_to_onnx}`` for ``torch.onnx.export(dynamo=True)``.

    Loads the compiled extension (the op must exist to be exported).
    """
    from ._ext import use_compiled

    use_compiled("nms")
    _opset()
    return {torch.ops.retinakit.nms.default: nms_to_onnx}
