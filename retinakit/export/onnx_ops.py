"""Export-only op ``retinakit_export::nms_keep`` and its translation to ONNX ``NonMaxSuppression``.

The end-to-end export graph calls :func:`nms_keep` where it needs NMS. In PyTorch it runs
the compiled ``retinakit.ops.batched_nms``; ``torch.onnx.export(..., dynamo=True)`` replaces
it (through :data:`CUSTOM_TRANSLATION_TABLE`) by the standard ONNX ``NonMaxSuppression``
followed by a ``ScatterND`` that turns the selected indices into a keep mask, so the graph
has static output shapes and runs in onnxruntime and TensorRT without plugins.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["CUSTOM_TRANSLATION_TABLE", "nms_keep"]


@torch.library.custom_op("retinakit_export::nms_keep", mutates_args=())
def nms_keep(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float, max_per_class: int) -> Tensor:
    """Per-class NMS keep mask.

    Args:
        boxes: ``[N, M, 4]`` float32 XYXY candidates.
        scores: ``[N, C, M]`` float32; candidate ``m`` takes part in class ``c``'s NMS when
            ``scores[n, c, m] > score_threshold``.
        iou_threshold: a box is suppressed by a higher-scored kept box of its class when IoU > this.
        max_per_class: at most this many boxes kept per image and class (highest scores first).

    Returns:
        ``keep [N, M]`` float32, 1.0 where candidate ``m`` is kept for some class, else 0.0.
    """
    from .. import ops

    n_img, _, m = scores.shape
    keep = torch.zeros(n_img, m, dtype=torch.float32, device=scores.device)
    for n in range(n_img):
        cls_idx, box_idx = torch.nonzero(scores[n] > score_threshold, as_tuple=True)
        if box_idx.numel() == 0:
            continue
        kept = ops.batched_nms(boxes[n, box_idx].float(), scores[n, cls_idx, box_idx].float(), cls_idx, iou_threshold)
        kept_cls = cls_idx[kept]
        # Rank of each kept box within its class (kept is ordered by decreasing score).
        rank = torch.zeros_like(kept)
        for c in torch.unique(kept_cls).tolist():
            sel = (kept_cls == c).nonzero().flatten()
            rank[sel] = torch.arange(sel.numel(), device=rank.device)
        keep[n, box_idx[kept[rank < max_per_class]]] = 1.0
    return keep


@nms_keep.register_fake
def _nms_keep_fake(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float, max_per_class: int) -> Tensor:
    return scores.new_empty((scores.shape[0], scores.shape[2]), dtype=torch.float32)


def _nms_keep_onnx(boxes: Any, scores: Any, iou_threshold: float, score_threshold: float, max_per_class: int) -> Any:
    """onnxscript translation: NonMaxSuppression -> ScatterND of ones into ``zeros [N, M]``."""
    from onnxscript import opset18 as op

    selected = op.NonMaxSuppression(
        boxes,
        scores,
        op.Constant(value_ints=[int(max_per_class)]),
        op.Constant(value_floats=[float(iou_threshold)]),
        op.Constant(value_floats=[float(score_threshold)]),
        center_point_box=0,
    )  # [S, 3] int64: (batch, class, box)
    batch_and_box = op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)  # [S, 2]
    num_selected = op.Slice(op.Shape(selected), op.Constant(value_ints=[0]), op.Constant(value_ints=[1]))
    ones = op.Expand(op.Constant(value_floats=[1.0]), num_selected)
    nm = op.Concat(
        op.Slice(op.Shape(scores), op.Constant(value_ints=[0]), op.Constant(value_ints=[1])),
        op.Slice(op.Shape(scores), op.Constant(value_ints=[2]), op.Constant(value_ints=[3])),
        axis=0,
    )
    zeros = op.ConstantOfShape(nm, value=_float_tensor(0.0))
    return op.ScatterND(zeros, batch_and_box, ones)


def _float_tensor(value: float) -> Any:
    import numpy as np
    import onnx

    return onnx.numpy_helper.from_array(np.array([value], dtype=np.float32))


CUSTOM_TRANSLATION_TABLE: dict[Any, Any] = {torch.ops.retinakit_export.nms_keep.default: _nms_keep_onnx}
