"""Fake (meta) kernels of ``torch.ops.retinakit.*`` for torch.compile / torch.export.

Imported by :mod:`retinakit.ops._ext` once the compiled library is loaded. NMS outputs
have a data-dependent length (an unbacked symbolic size); decode / multiclass outputs have
static shapes.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _num_kept(n: int | torch.SymInt) -> torch.SymInt:
    """An unbacked size in ``[0, n]`` for the data-dependent number of kept boxes."""
    ctx = torch.library.get_ctx()
    return ctx.new_dynamic_size(max=n) if isinstance(n, int) else ctx.new_dynamic_size()


@torch.library.register_fake("retinakit::nms")
def _nms_fake(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "nms: boxes must be [N, 4]")
    torch._check(scores.dim() == 1 and scores.shape[0] == boxes.shape[0], lambda: "nms: scores must be [N]")
    return boxes.new_empty((_num_kept(boxes.shape[0]),), dtype=torch.int64)


@torch.library.register_fake("retinakit::batched_nms")
def _batched_nms_fake(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "batched_nms: boxes must be [N, 4]")
    return boxes.new_empty((_num_kept(boxes.shape[0]),), dtype=torch.int64)


@torch.library.register_fake("retinakit::soft_nms")
def _soft_nms_fake(
    boxes: Tensor, scores: Tensor, idxs: Tensor, method: str, sigma: float, iou_threshold: float, score_threshold: float
) -> tuple[Tensor, Tensor]:
    k = _num_kept(boxes.shape[0])
    out_dtype = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    return boxes.new_empty((k,), dtype=torch.int64), boxes.new_empty((k,), dtype=out_dtype)


@torch.library.register_fake("retinakit::decode_detections")
def _decode_fake(
    cls_logits: list[Tensor],
    box_deltas: list[Tensor],
    anchors: list[Tensor],
    image_sizes: Tensor,
    score_thresh: float,
    topk: int,
    weights: Sequence[float],
    scale_clamp: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n = cls_logits[0].shape[0]
    m = 0
    for t in cls_logits:
        m = m + torch.sym_min(topk, t.shape[1] * t.shape[2] * t.shape[3])
    x = cls_logits[0]
    return (
        x.new_empty((n, m, 4), dtype=torch.float32),
        x.new_empty((n, m), dtype=torch.float32),
        x.new_empty((n, m), dtype=torch.int64),
        x.new_empty((n,), dtype=torch.int64),
    )


@torch.library.register_fake("retinakit::multiclass_nms")
def _multiclass_fake(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    num_valid: Tensor,
    nms_type: str,
    iou_threshold: float,
    max_detections: int,
    soft_method: str,
    soft_sigma: float,
    soft_score_threshold: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n = boxes.shape[0]
    return (
        boxes.new_empty((n, max_detections, 4), dtype=torch.float32),
        boxes.new_empty((n, max_detections), dtype=torch.float32),
        boxes.new_empty((n, max_detections), dtype=torch.int64),
        boxes.new_empty((n,), dtype=torch.int64),
    )
