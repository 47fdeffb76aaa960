"""NMS ops: typed wrappers over ``torch.ops.retinakit.{nms,batched_nms,soft_nms,multiclass_nms}``.

Semantics (IoU formula, ordering, NaN/Inf handling) are documented in
:mod:`retinakit.ops.reference`, which also holds the pure-torch versions used by tests.
The kernel is picked by PyTorch's dispatcher from the tensors' device (CPU or CUDA);
under autocast, float16/bfloat16 boxes and scores are computed in float32.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from ._ext import use_compiled

__all__ = ["batched_nms", "multiclass_nms", "nms", "nms_keep", "soft_nms"]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, *, allow_reference: bool = False) -> Tensor:
    """Greedy non-maximum suppression, torchvision's signature and semantics.

    Args:
        boxes: ``[N, 4]`` XYXY, any float dtype.
        scores: ``[N]``. NaN/Inf scores are never kept.
        iou_threshold: boxes with IoU ``>`` this with a kept, higher-scored box are dropped.
        allow_reference: use the pure-torch reference when the extension is missing.

    Returns:
        ``keep [K]`` int64 indices into ``boxes``, by decreasing score (ties: lower index first).
    """
    if use_compiled("nms", allow_reference):
        return torch.ops.retinakit.nms(boxes, scores, float(iou_threshold))
    return reference.nms(boxes, scores, iou_threshold)


def batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *, allow_reference: bool = False
) -> Tensor:
    """NMS applied independently within each category (torchvision's signature).

    Args:
        boxes: ``[N, 4]`` XYXY. scores: ``[N]``. idxs: ``[N]`` integer category of each box.
        iou_threshold: IoU above which a lower-scored box of the same category is dropped.

    Returns:
        ``keep [K]`` int64, by decreasing score, ties by lower index. IoU is computed on the
        original coordinates (no coordinate-offset trick), so it is exact for any category count.
    """
    if use_compiled("batched_nms", allow_reference):
        return torch.ops.retinakit.batched_nms(boxes, scores, idxs, float(iou_threshold))
    return reference.batched_nms(boxes, scores, idxs, iou_threshold)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
    *,
    allow_reference: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-category soft-NMS (Bodla et al. 2017).

    Args:
        boxes: ``[N, 4]`` XYXY. scores: ``[N]``. idxs: ``[N]`` integer categories.
        method: ``"linear"`` (score *= 1 - IoU when IoU > iou_threshold) or
            ``"gaussian"`` (score *= exp(-IoU^2 / sigma) for every overlapping box).
        score_threshold: boxes whose decayed score falls below it are dropped.

    Returns:
        ``keep [K]`` int64 in selection order and ``new_scores [K]`` float32 (non-increasing for non-negative
        scores; a decayed negative score grows toward 0, see the reference).
    """
    if method not in ("linear", "gaussian"):
        raise ValueError(f"soft_nms method must be 'linear' or 'gaussian', got {method!r}.")
    if use_compiled("soft_nms", allow_reference):
        return torch.ops.retinakit.soft_nms(
            boxes, scores, idxs, method, float(sigma), float(iou_threshold), float(score_threshold)
        )
    return reference.soft_nms(boxes, scores, idxs, method, sigma, iou_threshold, score_threshold)


def multiclass_nms(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    num_valid: Tensor,
    nms_type: str = "batched",
    iou_threshold: float = 0.5,
    max_detections: int = 100,
    soft_method: str = "gaussian",
    soft_sigma: float = 0.5,
    soft_score_threshold: float = 0.001,
    *,
    allow_reference: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """NMS of a batch of padded candidate sets, one call for all images (no host sync).

    Args:
        boxes: ``[N, M, 4]`` float32, scores: ``[N, M]``, classes: ``[N, M]`` int64; image ``n``
            uses rows ``[0, num_valid[n])`` (the output of :func:`decode_detections`).
        num_valid: ``[N]`` int64.
        nms_type: ``"batched"`` (per class), ``"agnostic"`` or ``"soft"`` (per-class soft-NMS).

    Returns:
        ``boxes [N, D, 4]`` float32, ``scores [N, D]`` float32, ``classes [N, D]`` int64 (-1 in
        padding), ``num_detections [N]`` int64, with ``D = max_detections``; rows by decreasing score.
    """
    if nms_type not in ("batched", "agnostic", "soft"):
        raise ValueError(f"nms_type must be 'batched', 'agnostic' or 'soft', got {nms_type!r}.")
    args = (nms_type, float(iou_threshold), int(max_detections), soft_method, float(soft_sigma), float(soft_score_threshold))
    if use_compiled("multiclass_nms", allow_reference):
        return torch.ops.retinakit.multiclass_nms(boxes, scores, classes, num_valid, *args)
    return reference.multiclass_nms(boxes, scores, classes, num_valid, *args)


@torch.library.custom_op("retinakit_export::nms_keep", mutates_args=())
def nms_keep(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float, max_per_class: int) -> Tensor:
    """Per-class NMS as a keep mask with static shapes: the NMS of traced (exported) graphs.

    ``torch.onnx.export(dynamo=True)`` turns it into ONNX ``NonMaxSuppression`` through
    :func:`retinakit.ops.onnx.custom_translation_table`; in PyTorch it runs :func:`batched_nms`.

    Args:
        boxes: ``[N, M, 4]`` float32 XYXY candidates.
        scores: ``[N, C, M]`` float32; candidate ``m`` takes part in class ``c``'s NMS when
            ``scores[n, c, m] > score_threshold``.
        iou_threshold: a box is suppressed by a higher-scored kept box of its class when IoU > this.
        max_per_class: at most this many boxes kept per image and class (highest scores first).

    Returns:
        ``keep [N, M]`` float32, 1.0 where candidate ``m`` is kept for some class, else 0.0.
    """
    n_img, _, m = scores.shape
    keep = torch.zeros(n_img, m, dtype=torch.float32, device=scores.device)
    for n in range(n_img):
        cls_idx, box_idx = torch.nonzero(scores[n] > score_threshold, as_tuple=True)
        if box_idx.numel() == 0:
            continue
        kept = batched_nms(boxes[n, box_idx].float(), scores[n, cls_idx, box_idx].float(), cls_idx, iou_threshold)
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
