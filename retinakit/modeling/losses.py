"""Losses: ``LOSS_REGISTRY`` with sigmoid focal, smooth L1, L1 and GIoU losses.

All losses return the *sum* over their inputs; RetinaNet divides by the (smoothed)
number of foreground anchors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CfgNode, configurable
from ..utils.registry import Registry

__all__ = ["LOSS_REGISTRY", "GIoULoss", "L1Loss", "SigmoidFocalLoss", "SmoothL1Loss", "build_loss", "giou"]

LOSS_REGISTRY = Registry(
    "LOSS",
    doc="""Losses. Entries are called as ``cls(cfg)`` (or with keyword arguments) and return an
    ``nn.Module``. Two kinds, chosen by ``MODEL.RETINANET.CLS_LOSS_TYPE`` / ``BBOX_REG_LOSS_TYPE``:

    * classification: ``forward(logits [M, K], targets [M, K] float in {0, 1}) -> scalar sum``;
    * box regression: ``forward(pred_deltas [P, 4], anchors [P, 4], gt_boxes [P, 4], box_coder) -> scalar sum``.
    """,
)


@LOSS_REGISTRY.register(name="sigmoid_focal")
class SigmoidFocalLoss(nn.Module):
    """Focal loss on per-class sigmoids: ``-alpha_t (1 - p_t)^gamma log(p_t)``, summed."""

    @configurable
    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0) -> None:
        """
        Args:
            alpha: weight of the positive targets (``1 - alpha`` for negatives); < 0 disables it.
            gamma: focusing exponent on ``(1 - p_t)``; 0 gives binary cross-entropy.

        ``forward(logits [P, K], targets [P, K]) -> []``: the sum over all elements.
        """
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return dict(alpha=cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA, gamma=cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        targets = targets.to(logits.dtype)
        p = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = ce * (1 - p_t) ** self.gamma
        if self.alpha >= 0:
            loss = loss * (self.alpha * targets + (1 - self.alpha) * (1 - targets))
        return loss.sum()


class _DeltaLoss(nn.Module):
    """Regression losses on (dx, dy, dw, dh) targets from the box coder."""

    def elementwise(self, diff: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, pred_deltas: torch.Tensor, anchors: torch.Tensor, gt_boxes: torch.Tensor, box_coder) -> torch.Tensor:
        target = box_coder.encode(anchors, gt_boxes)
        return self.elementwise(pred_deltas.float() - target).sum()


@LOSS_REGISTRY.register(name="smooth_l1")
class SmoothL1Loss(_DeltaLoss):
    """Smooth L1 (Huber with slope 1) with transition point ``beta``; ``beta=0`` is L1."""

    @configurable
    def __init__(self, *, beta: float = 0.1) -> None:
        """
        Args:
            beta: transition point between the quadratic and linear parts (``< 1e-5``: L1).

        ``forward(pred_deltas [F, 4], anchors [F, 4], gt_boxes [F, 4], box_coder) -> []``: the
        sum over the ``F`` foreground anchors of the loss on ``pred_deltas - encode(anchors, gt_boxes)``.
        """
        super().__init__()
        self.beta = beta

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return dict(beta=cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA)

    def elementwise(self, diff: torch.Tensor) -> torch.Tensor:
        a = diff.abs()
        if self.beta < 1e-5:
            return a
        return torch.where(a < self.beta, 0.5 * a * a / self.beta, a - 0.5 * self.beta)


@LOSS_REGISTRY.register(name="l1")
class L1Loss(_DeltaLoss):
    """L1 on the deltas."""

    def __init__(self, cfg: CfgNode | None = None) -> None:
        super().__init__()

    def elementwise(self, diff: torch.Tensor) -> torch.Tensor:
        return diff.abs()


def giou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Generalised IoU of matching rows: ``a [P, 4]``, ``b [P, 4]`` (XYXY) -> ``[P]``."""
    wh_a = (a[:, 2:] - a[:, :2]).clamp(min=0)
    wh_b = (b[:, 2:] - b[:, :2]).clamp(min=0)
    inter_wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = inter_wh[:, 0] * inter_wh[:, 1]
    union = wh_a[:, 0] * wh_a[:, 1] + wh_b[:, 0] * wh_b[:, 1] - inter
    iou = inter / (union + eps)
    hull_wh = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0)
    hull = hull_wh[:, 0] * hull_wh[:, 1]
    return iou - (hull - union) / (hull + eps)


@LOSS_REGISTRY.register(name="giou")
class GIoULoss(nn.Module):
    """``1 - GIoU`` between decoded predictions and ground-truth boxes."""

    def __init__(self, cfg: CfgNode | None = None) -> None:
        super().__init__()

    def forward(self, pred_deltas: torch.Tensor, anchors: torch.Tensor, gt_boxes: torch.Tensor, box_coder) -> torch.Tensor:
        pred = box_coder.decode(pred_deltas, anchors)
        return (1 - giou(pred, gt_boxes.float())).sum()


def build_loss(cfg: CfgNode, name: str) -> nn.Module:
    """Build the loss registered as ``name``."""
    return LOSS_REGISTRY.get(name)(cfg)
