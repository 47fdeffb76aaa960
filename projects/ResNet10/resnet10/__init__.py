"""ResNet-10: a ResNet with one BasicBlock per stage, for edge devices, registered from outside retinakit.

Importing this module (name it in ``CUSTOM_IMPORTS``) does two things:

* adds the config node ``MODEL.RESNET10`` (:func:`add_resnet10_config`);
* registers ``build_resnet10_backbone`` in ``BACKBONE_REGISTRY`` (the bottom-up network).

RetinaNet uses it through the library's FPN: ``MODEL.BACKBONE.NAME:
build_retinanet_fpn_backbone`` with ``MODEL.FPN.BOTTOM_UP: build_resnet10_backbone``.
Parameter names follow torchvision's ResNets (``conv1``, ``bn1``, ``layer1.0.conv1``, ...),
so the first block of each stage of an ImageNet ResNet-18 checkpoint has the same keys.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from retinakit.config import CfgNode, ConfigError, configurable, register_config_extension
from retinakit.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from retinakit.modeling.backbone.norm import freeze_batchnorm, get_norm
from retinakit.modeling.backbone.resnet import BasicBlock

__all__ = ["ResNet10", "add_resnet10_config", "build_resnet10_backbone"]

_STAGES = ("res2", "res3", "res4", "res5")


@register_config_extension
def add_resnet10_config(cfg: CfgNode) -> None:
    """``MODEL.RESNET10.*`` (added only when missing, so it can run more than once)."""
    if "RESNET10" in cfg.MODEL:
        return
    cfg.MODEL.RESNET10 = CfgNode()
    # Output channels of res2..res5 (ResNet-18 widths by default; halve them for a lighter net).
    cfg.MODEL.RESNET10.STAGE_CHANNELS = [64, 128, 256, 512]
    # BasicBlocks per stage: [1, 1, 1, 1] is ResNet-10 (1 stem conv + 4 x 2 convs + 1 fc in the classifier).
    cfg.MODEL.RESNET10.BLOCKS_PER_STAGE = [1, 1, 1, 1]
    # Channels of the 7x7 stride-2 stem convolution.
    cfg.MODEL.RESNET10.STEM_CHANNELS = 64
    # "BN" (train from scratch), "FrozenBN" (fine-tune pretrained weights), "GN", "SyncBN" or "".
    cfg.MODEL.RESNET10.NORM = "BN"
    # Feature maps returned (strides 4, 8, 16, 32).
    cfg.MODEL.RESNET10.OUT_FEATURES = ["res3", "res4", "res5"]


def _norm(norm: str, channels: int) -> nn.Module:
    layer = get_norm(norm, channels)
    return layer if layer is not None else nn.Identity()


class ResNet10(Backbone):
    """Stem (7x7/2 conv + 3x3/2 max-pool) and four stages of BasicBlocks.

    ``forward(x [N, C, H, W]) -> {"res2": [N, c2, H/4, W/4], ..., "res5": [N, c5, H/32, W/32]}``
    (only ``out_features``; spatial sizes rounded up).
    """

    out_features_key = "MODEL.RESNET10.OUT_FEATURES"

    @configurable
    def __init__(
        self,
        *,
        stage_channels: Sequence[int] = (64, 128, 256, 512),
        blocks_per_stage: Sequence[int] = (1, 1, 1, 1),
        stem_channels: int = 64,
        norm: str = "BN",
        out_features: Sequence[str] = ("res3", "res4", "res5"),
        in_channels: int = 3,
        freeze_at: int = 0,
    ) -> None:
        super().__init__()
        if len(stage_channels) != 4 or len(blocks_per_stage) != 4 or min(blocks_per_stage) < 1:
            raise ValueError(
                "MODEL.RESNET10.STAGE_CHANNELS and BLOCKS_PER_STAGE need 4 entries each (res2..res5), blocks >= 1; "
                f"got {list(stage_channels)} and {list(blocks_per_stage)}."
            )
        unknown = [f for f in out_features if f not in _STAGES]
        if unknown or not out_features:
            raise ConfigError(f"MODEL.RESNET10.OUT_FEATURES must be a non-empty subset of {list(_STAGES)}, got {list(out_features)}.")
        self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(norm, stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._out_features = list(out_features)
        self._out_feature_channels: dict[str, int] = {}
        self._out_feature_strides: dict[str, int] = {}
        self._num_stages = 1 + max(_STAGES.index(f) for f in out_features)
        ch = stem_channels
        for i in range(self._num_stages):
            planes = int(stage_channels[i])
            blocks: list[nn.Module] = []
            for j in range(int(blocks_per_stage[i])):
                blocks.append(BasicBlock(ch, planes, 2 if (i > 0 and j == 0) else 1, norm))
                ch = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self._out_feature_channels[_STAGES[i]] = planes
            self._out_feature_strides[_STAGES[i]] = 4 * 2**i
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self._freeze(freeze_at)

    @classmethod
    def from_config(cls, cfg: Any, input_shape: ShapeSpec | None = None) -> dict[str, Any]:
        r = cfg.MODEL.RESNET10
        return {
            "stage_channels": r.STAGE_CHANNELS,
            "blocks_per_stage": r.BLOCKS_PER_STAGE,
            "stem_channels": r.STEM_CHANNELS,
            "norm": r.NORM,
            "out_features": r.OUT_FEATURES,
            "in_channels": (input_shape.channels if input_shape and input_shape.channels else len(cfg.MODEL.PIXEL_MEAN)),
            "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
        }

    def _freeze(self, freeze_at: int) -> None:
        """Freeze the stem (``freeze_at >= 1``) and the first ``freeze_at - 1`` stages (as ResNet does)."""
        units: list[nn.Module] = [nn.ModuleList([self.conv1, self.bn1])]
        units += [getattr(self, f"layer{i + 1}") for i in range(self._num_stages)]
        for idx, unit in enumerate(units[:freeze_at]):
            for p in unit.parameters():
                p.requires_grad_(False)
            if idx == 0:
                self.bn1 = freeze_batchnorm(self.bn1)
            else:
                freeze_batchnorm(unit)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for i in range(self._num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            if _STAGES[i] in self._out_features:
                out[_STAGES[i]] = x
        return out


@BACKBONE_REGISTRY.register()
def build_resnet10_backbone(cfg: Any, input_shape: ShapeSpec | None = None) -> ResNet10:
    """The ResNet-10 bottom-up network from ``MODEL.RESNET10.*`` (and ``MODEL.BACKBONE.FREEZE_AT``)."""
    return ResNet10(cfg, input_shape)
