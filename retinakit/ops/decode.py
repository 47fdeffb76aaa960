"""Fused RetinaNet decode: ``torch.ops.retinakit.decode_detections``."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import reference
from ._ext import use_compiled

__all__ = ["decode_detections"]


def decode_detections(
    cls_logits: Sequence[Tensor],
    box_deltas: Sequence[Tensor],
    anchors: Sequence[Tensor],
    image_sizes: Tensor,
    score_thresh: float = 0.05,
    topk: int = 1000,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    scale_clamp: float = 4.135166556742356,
    *,
    allow_reference: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Threshold, per-level top-k, delta decode and clip for a batch of images, in one call.

    Per image and level ``l``: scores ``sigmoid(cls_logits)`` flattened in ``(h, w, a, k)``
    order; those ``> score_thresh`` (NaN never) are kept, the ``topk`` best (ties: lower index)
    are decoded against their anchor with ``(dx, dy, dw, dh) / weights``, ``dw, dh`` clamped
    to ``scale_clamp``, and clipped to the image. Computed in float32 for any input dtype.

    Args:
        cls_logits: per level ``[N, A*K, H_l, W_l]`` (channel ``a*K + k``), float32/16/bf16.
        box_deltas: per level ``[N, A*4, H_l, W_l]`` (channel ``a*4 + j``).
        anchors: per level ``[H_l*W_l*A, 4]`` XYXY, location-major, anchor-minor.
        image_sizes: ``[N, 2]`` int64 ``(height, width)`` on the same device.

    Returns:
        ``boxes [N, M, 4]`` float32, ``scores [N, M]`` float32, ``classes [N, M]`` int64 and
        ``num_valid [N]`` int64, with ``M = sum_l min(topk, A*K*H_l*W_l)``. Image ``n``'s
        candidates fill rows ``[0, num_valid[n])`` level after level, each level by decreasing
        score; padding rows have score 0 and class -1.
    """
    if not (len(cls_logits) == len(box_deltas) == len(anchors)) or not cls_logits:
        raise ValueError("decode_detections needs one cls_logits, box_deltas and anchors tensor per level (>= 1 level).")
    w = [float(x) for x in weights]
    if use_compiled("decode_detections", allow_reference):
        return torch.ops.retinakit.decode_detections(
            list(cls_logits), list(box_deltas), list(anchors), image_sizes, float(score_thresh), int(topk), w, float(scale_clamp)
        )
    return reference.decode_detections(cls_logits, box_deltas, anchors, image_sizes, score_thresh, topk, w, scale_clamp)
