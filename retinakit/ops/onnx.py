"""ONNX translations of retinakit ops for the dynamo-based ``torch.onnx.export``.

Both NMS ops become the standard ONNX ``NonMaxSuppression`` (opset >= 11), emitted in one
place (:func:`_non_max_suppression`), which onnxruntime and TensorRT's ONNX parser run
natively, so exported models need no custom plugin::

    from retinakit.ops.onnx import custom_translation_table
    torch.onnx.export(model, args, dynamo=True, custom_translation_table=custom_translation_table())

* ``retinakit::nms(boxes [M, 4], scores [M], iou) -> keep [K]``: the kept indices.
* ``retinakit_export::nms_keep(boxes [N, M, 4], scores [N, C, M], ...) -> keep [N, M]``: the
  static-shape keep mask of the end-to-end detection graph
  (:meth:`retinakit.modeling.postprocess.RetinaNetPostProcessor.forward_static`).

Differences from the compiled kernel that an exported model inherits from the ONNX op:
boxes are normalised (corners in any order, so inverted boxes are not empty there), boxes of
zero area never suppress, and NaN scores are not removed; on ordinary boxes the kept indices
are the same. Needs ``onnxscript`` (``pip install retinakit[deploy]``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import nms as _nms  # noqa: F401  (defines torch.ops.retinakit_export.nms_keep)

__all__ = ["custom_translation_table", "nms_keep_to_onnx", "nms_to_onnx"]


def _opset() -> Any:
    try:
        from onnxscript import opset18
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise ImportError(
            "Exporting retinakit ops to ONNX needs onnxscript: pip install 'retinakit[deploy]' (or pip install onnxscript)."
        ) from e
    return opset18


def _non_max_suppression(op: Any, boxes: Any, scores: Any, max_per_class: Any, iou_threshold: float, score_threshold: float | None) -> Any:
    """``NonMaxSuppression(boxes [N, M, 4], scores [N, C, M])`` -> ``selected [S, 3]`` int64 rows
    ``(batch, class, box)``, XYXY corners (``center_point_box=0``), by decreasing score per class."""
    args = [boxes, scores, max_per_class, op.Constant(value_floats=[float(iou_threshold)])]
    if score_threshold is not None:
        args.append(op.Constant(value_floats=[float(score_threshold)]))
    return op.NonMaxSuppression(*args, center_point_box=0)


def nms_to_onnx(boxes: Any, scores: Any, iou_threshold: float) -> Any:
    """``retinakit::nms(boxes [M, 4], scores [M], iou_threshold) -> keep [K]`` as ONNX: one
    image and one class, at most ``M`` kept; the box column of the selected rows."""
    op = _opset()
    b = op.Unsqueeze(boxes, op.Constant(value_ints=[0]))
    s = op.Unsqueeze(scores, op.Constant(value_ints=[0, 1]))
    if getattr(scores, "dtype", None) is not None and str(scores.dtype).lower() not in ("float", "float32", "1"):
        b, s = op.Cast(b, to=1), op.Cast(s, to=1)
    selected = _non_max_suppression(op, b, s, op.Shape(boxes, start=0, end=1), iou_threshold, None)
    idx = op.Gather(selected, op.Constant(value_ints=[2]), axis=1)
    return op.Reshape(idx, op.Constant(value_ints=[-1]))


def nms_keep_to_onnx(boxes: Any, scores: Any, iou_threshold: float, score_threshold: float, max_per_class: int) -> Any:
    """``retinakit_export::nms_keep`` as ONNX: the selected ``(batch, box)`` pairs scattered as
    ones into ``zeros [N, M]``."""
    op = _opset()
    max_out = op.Constant(value_ints=[int(max_per_class)])
    selected = _non_max_suppression(op, boxes, scores, max_out, iou_threshold, score_threshold)
    batch_and_box = op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)  # [S, 2]
    ones = op.Expand(op.Constant(value_floats=[1.0]), op.Shape(selected, start=0, end=1))
    n_and_m = op.Concat(op.Shape(scores, start=0, end=1), op.Shape(scores, start=2, end=3), axis=0)
    zeros = op.ConstantOfShape(n_and_m, value=_float_tensor(0.0))
    return op.ScatterND(zeros, batch_and_box, ones)


def _float_tensor(value: float) -> Any:
    import numpy as np
    import onnx

    return onnx.numpy_helper.from_array(np.array([value], dtype=np.float32))


def custom_translation_table() -> dict[Any, Callable[..., Any]]:
    """ONNX translations of ``torch.ops.retinakit.nms`` and ``torch.ops.retinakit_export.nms_keep``
    for ``torch.onnx.export(dynamo=True)``. Loads the compiled extension (the ops must exist)."""
    from ._ext import use_compiled

    use_compiled("nms")
    _opset()
    return {torch.ops.retinakit.nms.default: nms_to_onnx, torch.ops.retinakit_export.nms_keep.default: nms_keep_to_onnx}
