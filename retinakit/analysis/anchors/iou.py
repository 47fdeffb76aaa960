"""IoU geometry of the analysis: best IoU of each ground-truth box over the anchors, by brute
force (any anchor generator) or in closed form for grid anchors (``DefaultAnchorGenerator``),
and aspect ratios by k-means of the box shapes with distance 1 - IoU.

For a fixed anchor shape the overlap with a box is separable in x and y and non-increasing
in the distance from the aligned position, so the nearest grid centre in each axis is the
best one.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from ...structures import pairwise_iou

__all__ = ["best_iou_bruteforce", "best_iou_grid", "kmeans_aspect_ratios"]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run many tiny tensor ops on one intra-op thread (much faster than waking a pool), then restore."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def best_iou_bruteforce(boxes: torch.Tensor, anchors: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
    """Best IoU of each box ``[G, 4]`` over all ``anchors [A, 4]`` -> ``[G]`` (0 without anchors)."""
    best = torch.zeros(boxes.shape[0])
    if boxes.shape[0] == 0 or anchors.shape[0] == 0:
        return best
    step = max(chunk // boxes.shape[0], 1)
    for a in anchors.split(step):
        best = torch.maximum(best, pairwise_iou(boxes.float(), a.float()).max(dim=1).values)
    return best


def _axis_overlap(lo: torch.Tensor, hi: torch.Tensor, a_lo: torch.Tensor, a_hi: torch.Tensor, n: torch.Tensor,
                  stride: torch.Tensor, offset: float) -> torch.Tensor:
    """Largest overlap along one axis between ``[lo, hi]`` (``[G, 1]``) and the anchors
    ``[p + a_lo, p + a_hi]`` (``[1, A]``) over grid centres ``p = (i + offset) * stride``, ``0 <= i < n``."""
    ideal = (lo + hi - a_lo - a_hi) / 2  # centre position that aligns both intervals
    i = torch.round(ideal / stride - offset).clamp(min=0)
    i = torch.minimum(i, n - 1)
    p = (i + offset) * stride
    return (torch.minimum(hi, p + a_hi) - torch.maximum(lo, p + a_lo)).clamp(min=0)


def best_iou_grid(boxes: torch.Tensor, grid: torch.Tensor, stride: torch.Tensor, cells: Sequence[torch.Tensor],
                  offset: float) -> torch.Tensor:
    """Exact best IoU of each box with grid anchors, in closed form.

    ``boxes [G, 4]``; per box and level ``grid [G, L, 2]`` (h, w) and ``stride [G, L, 2]``
    (y, x); ``cells[l] [A_l, 4]``: anchors of level ``l`` relative to their centre.
    Returns ``[G]``.
    """
    best = torch.zeros(boxes.shape[0])
    if boxes.shape[0] == 0:
        return best
    b = boxes.float()
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[:, None]
    for lvl, cell in enumerate(cells):
        c = cell.float()[None]
        ix = _axis_overlap(b[:, 0:1], b[:, 2:3], c[..., 0], c[..., 2], grid[:, lvl, 1:2], stride[:, lvl, 1:2], offset)
        iy = _axis_overlap(b[:, 1:2], b[:, 3:4], c[..., 1], c[..., 3], grid[:, lvl, 0:1], stride[:, lvl, 0:1], offset)
        inter = ix * iy
        area_a = (c[..., 2] - c[..., 0]) * (c[..., 3] - c[..., 1])
        iou = inter / (area_b + area_a - inter).clamp(min=1e-12)
        best = torch.maximum(best, iou.max(dim=1).values)
    return best


def _unit_shape_iou(log_r: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """IoU of centred unit-area boxes with log aspect ratios ``log_r [G]`` and ``centres [K]`` -> ``[G, K]``."""
    h1, w1 = torch.exp(log_r / 2)[:, None], torch.exp(-log_r / 2)[:, None]
    h2, w2 = torch.exp(centres / 2)[None], torch.exp(-centres / 2)[None]
    inter = torch.minimum(h1, h2) * torch.minimum(w1, w2)
    return inter / (2 - inter)


def kmeans_aspect_ratios(boxes: torch.Tensor, k: int, iters: int = 30) -> list[float]:
    """``k`` aspect ratios (h/w, sorted) by k-means of the box shapes with distance 1 - IoU.

    Boxes are normalised to unit area and centred, so the IoU depends on the shape only.
    Deterministic: centres start at the quantiles of log(h/w).
    """
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6).double()
    log_r = torch.log(wh[:, 1] / wh[:, 0])
    if log_r.numel() == 0:
        return [1.0] * k
    centres = torch.quantile(log_r, (torch.arange(k, dtype=torch.float64) + 0.5) / k)
    for _ in range(iters):
        assign = _unit_shape_iou(log_r, centres).argmax(dim=1)
        new = torch.stack([log_r[assign == j].median() if (assign == j).any() else centres[j] for j in range(k)])
        if torch.allclose(new, centres):
            break
        centres = new
    return sorted(float(v) for v in torch.exp(centres))
