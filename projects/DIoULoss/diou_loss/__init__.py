"""Distance-IoU loss (Zheng et al., AAAI 2020) for RetinaNet's box branch, registered from outside retinakit.

``1 - IoU + d^2 / c^2`` per foreground anchor, with ``d`` the distance between the centres of
the decoded prediction and its ground-truth box and ``c`` the diagonal of the smallest box
enclosing both; unlike GIoU it keeps pulling centres together when one box contains the other.

Importing this module (``CUSTOM_IMPORTS``) registers ``"diou"`` in ``LOSS_REGISTRY`` and
adds ``MODEL.DIOU_LOSS.{WEIGHT, EPS}``; select it with ``MODEL.RETINANET.BBOX_REG_LOSS_TYPE: diou``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from retinakit.config import CfgNode, ConfigError, configurable, register_config_extension
from retinakit.modeling import LOSS_REGISTRY

__all__ = ["DIoULoss", "add_diou_loss_config", "diou_loss"]


@register_config_extension
def add_diou_loss_config(cfg: CfgNode) -> None:
    """``MODEL.DIOU_LOSS.*`` (added only when missing)."""
    if "DIOU_LOSS" in cfg.MODEL:
        return
    cfg.MODEL.DIOU_LOSS = CfgNode()
    # Multiplies the summed loss (RetinaNet then divides by the number of foreground anchors).
    cfg.MODEL.DIOU_LOSS.WEIGHT = 1.0
    # Added to the union and to the squared enclosing diagonal (degenerate boxes).
    cfg.MODEL.DIOU_LOSS.EPS = 1e-7


def diou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Elementwise DIoU loss of matching XYXY rows: ``pred [P, 4]``, ``target [P, 4]`` -> ``[P]``."""
    pred, target = pred.float(), target.float()
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_p = (pred[:, 2:] - pred[:, :2]).clamp(min=0).prod(dim=1)
    area_t = (target[:, 2:] - target[:, :2]).clamp(min=0).prod(dim=1)
    iou = inter / (area_p + area_t - inter + eps)
    hull = torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])
    diag2 = (hull**2).sum(dim=1) + eps
    centre2 = (((pred[:, :2] + pred[:, 2:]) - (target[:, :2] + target[:, 2:])) / 2).pow(2).sum(dim=1)
    return 1 - iou + centre2 / diag2


@LOSS_REGISTRY.register(name="diou")
class DIoULoss(nn.Module):
    """Box-regression loss: ``weight * sum(diou_loss(decode(pred_deltas, anchors), gt_boxes))``.

    Call: ``forward(pred_deltas [P, 4], anchors [P, 4], gt_boxes [P, 4], box_coder) -> scalar``.
    """

    @configurable
    def __init__(self, *, weight: float = 1.0, eps: float = 1e-7) -> None:
        super().__init__()
        if weight <= 0:
            raise ConfigError(f"MODEL.DIOU_LOSS.WEIGHT must be > 0, got {weight}.")
        self.weight, self.eps = float(weight), float(eps)

    @classmethod
    def from_config(cls, cfg: Any) -> dict[str, Any]:
        return {"weight": cfg.MODEL.DIOU_LOSS.WEIGHT, "eps": cfg.MODEL.DIOU_LOSS.EPS}

    def forward(self, pred_deltas: torch.Tensor, anchors: torch.Tensor, gt_boxes: torch.Tensor, box_coder: Any) -> torch.Tensor:
        pred = box_coder.decode(pred_deltas.float(), anchors.float())
        return self.weight * diou_loss(pred, gt_boxes, self.eps).sum()
