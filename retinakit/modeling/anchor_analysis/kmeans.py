"""Aspect ratios by k-means of the box shapes with distance 1 - IoU."""
from __future__ import annotations

import torch

__all__ = ["kmeans_aspect_ratios"]


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
