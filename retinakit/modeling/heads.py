"""Detection heads: ``HEAD_REGISTRY`` and the RetinaNet head."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..config import CfgNode, ConfigError, configurable
from ..utils.registry import Registry
from .backbone import ShapeSpec
from .backbone.norm import get_norm

__all__ = ["HEAD_REGISTRY", "RetinaNetHead", "build_head"]

HEAD_REGISTRY = Registry(
    "HEAD",
    doc="""Dense detection heads. Entries are called as ``cls(cfg, input_shapes: list[ShapeSpec],
    num_anchors: list[int])`` (or with keyword arguments) and return an ``nn.Module`` with
    ``forward(features: list[Tensor[N, C, H_l, W_l]]) -> (cls_logits, box_deltas)``, two lists
    with ``[N, A*K, H_l, W_l]`` and ``[N, A*4, H_l, W_l]`` per level (channel ``a*K + k``).
    """,
)


class ConvNormAct(nn.Module):
    """conv3x3 -> optional norm -> ReLU (keys ``conv.*``, ``norm.*``)."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.norm = get_norm(norm, channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=self.norm is None)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x)


class RetinaNetHead(nn.Module):
    """Two conv towers (classification, box regression) shared across levels.

    The classification bias starts at ``-log((1 - prior_prob) / prior_prob)`` so that every
    anchor begins with foreground probability ``prior_prob`` (stable focal-loss training).
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 4,
        norm: str = "",
        prior_prob: float = 0.01,
    ) -> None:
        """
        Args:
            in_channels: ``C``, channels of every input level ``[N, C, H_l, W_l]``.
            num_anchors: ``A``, anchors per location (the same on every level).
            num_classes: ``K``; the classification output per level is ``[N, A*K, H_l, W_l]``
                (channel ``a*K + k``), the box output ``[N, A*4, H_l, W_l]`` (channel ``a*4 + j``).
            num_convs: 3x3 conv (+ norm) + ReLU layers in each tower before the output conv.
            norm: normalisation in the towers (``""`` none, ``"GN"``, ``"BN"``, ...), see ``get_norm``.
            prior_prob: initial foreground probability of every anchor and class.
        """
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"MODEL.RETINANET.NUM_CLASSES must be >= 1, got {num_classes}.")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.cls_subnet = nn.Sequential(*[ConvNormAct(in_channels, norm) for _ in range(num_convs)])
        self.bbox_subnet = nn.Sequential(*[ConvNormAct(in_channels, norm) for _ in range(num_convs)])
        self.cls_score = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        assert self.cls_score.bias is not None
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shapes: Sequence[ShapeSpec], num_anchors: Sequence[int]) -> dict:
        channels = {s.channels for s in input_shapes}
        if len(channels) != 1:
            raise ValueError(f"RetinaNetHead needs the same channel count on every level, got {sorted(map(str, channels))}.")
        if len(set(num_anchors)) != 1:
            raise ValueError(f"RetinaNetHead needs the same anchor count on every level, got {list(num_anchors)}.")
        r = cfg.MODEL.RETINANET
        return dict(
            in_channels=channels.pop(),
            num_anchors=num_anchors[0],
            num_classes=r.NUM_CLASSES,
            num_convs=r.NUM_CONVS,
            norm=r.NORM,
            prior_prob=r.PRIOR_PROB,
        )

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``features[l] [N, C, H_l, W_l]`` -> ``([N, A*K, H_l, W_l]...), ([N, A*4, H_l, W_l]...)``."""
        logits = [self.cls_score(self.cls_subnet(f)) for f in features]
        deltas = [self.bbox_pred(self.bbox_subnet(f)) for f in features]
        return logits, deltas


HEAD_REGISTRY.register(RetinaNetHead)


def build_head(cfg: CfgNode, input_shapes: Sequence[ShapeSpec], num_anchors: Sequence[int]) -> nn.Module:
    """Build ``cfg.MODEL.RETINANET.HEAD_NAME``."""
    return HEAD_REGISTRY.get(cfg.MODEL.RETINANET.HEAD_NAME)(cfg, input_shapes, num_anchors)
