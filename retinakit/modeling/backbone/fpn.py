"""Feature Pyramid Network with P6/P7 for RetinaNet (outputs ``p3`` .. ``p7``)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...config import CfgNode, ConfigError, configurable
from .backbone import Backbone, ShapeSpec, describe_features, out_features_key
from .build import BACKBONE_REGISTRY
from .norm import get_norm

__all__ = ["FPN", "ConvNorm", "LastLevelP6P7", "build_retinanet_fpn_backbone", "build_retinanet_resnet_fpn_backbone"]


def _known(value: int | None, what: str) -> int:
    if value is None:
        raise ValueError(f"The bottom-up network does not declare the {what} of its features (ShapeSpec).")
    return int(value)


def _uniform_init(conv: nn.Conv2d) -> None:
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ConvNorm(nn.Module):
    """A conv followed by an optional norm (keys ``conv.*``, ``norm.*``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, norm: str = "", stride: int = 1) -> None:
        super().__init__()
        norm_layer = get_norm(norm, out_ch)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=norm_layer is None)
        self.norm = norm_layer
        _uniform_init(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.norm(x) if self.norm is not None else x


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/s2(input), P7 = conv3x3/s2(relu(P6)); input is P5 or C5."""

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "p5") -> None:
        super().__init__()
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for conv in (self.p6, self.p7):
            _uniform_init(conv)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(x)
        return [p6, self.p7(F.relu(p6))]


class FPN(Backbone):
    """Top-down pyramid over a bottom-up backbone's ``in_features`` plus P6/P7.

    Output names are ``p{log2(stride)}``: for res3..res5 inputs, ``p3``..``p7``.
    """

    @configurable
    def __init__(
        self,
        *,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int = 256,
        norm: str = "",
        fuse_type: str = "sum",
        top_block_in: str = "p5",
    ) -> None:
        """
        Args:
            bottom_up: backbone whose outputs ``in_features`` (``[N, C_i, H/s_i, W/s_i]``, strides
                doubling) feed the pyramid.
            in_features: names of those outputs, finest first (e.g. ``["res3", "res4", "res5"]``).
            out_channels: channels of every output level ``p{log2(s)}`` ``[N, out_channels, H/s, W/s]``.
            norm: normalisation after the lateral and output convs (``""``: none).
            fuse_type: ``"sum"`` or ``"avg"`` of the lateral and the upsampled coarser level.
            top_block_in: input of P6 (``"p5"``, or ``"c5"`` the last bottom-up output);
                P6 and P7 have strides ``2 s_last`` and ``4 s_last``.
        """
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ConfigError(f"MODEL.FPN.FUSE_TYPE must be 'sum' or 'avg', got '{fuse_type}'.")
        if top_block_in not in ("p5", "c5"):
            raise ConfigError(f"MODEL.FPN.TOP_BLOCK_IN must be 'p5' or 'c5', got '{top_block_in}'.")
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ConfigError(
                f"MODEL.FPN.IN_FEATURES names {missing}, which the bottom-up network ({type(bottom_up).__name__}) does not output "
                f"(it outputs {describe_features(shapes)}): add them to {out_features_key(bottom_up)} "
                "or remove them from MODEL.FPN.IN_FEATURES."
            )
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        self._fuse_type = fuse_type
        channels = {f: _known(shapes[f].channels, "channels") for f in in_features}
        self.lateral_convs = nn.ModuleList([ConvNorm(channels[f], out_channels, 1, norm) for f in in_features])
        self.output_convs = nn.ModuleList([ConvNorm(out_channels, out_channels, 3, norm) for _ in in_features])
        top_in = out_channels if top_block_in == "p5" else channels[in_features[-1]]
        self.top_block = LastLevelP6P7(top_in, out_channels, top_block_in)
        strides = [_known(shapes[f].stride, "stride") for f in in_features]
        strides += [strides[-1] * 2, strides[-1] * 4]
        self._out_features = [f"p{int(math.log2(s))}" for s in strides]
        self._out_feature_strides = dict(zip(self._out_features, strides))
        self._out_feature_channels = dict.fromkeys(self._out_features, out_channels)
        self._size_divisibility = strides[len(in_features) - 1]

    @classmethod
    def from_config(cls, cfg: CfgNode, bottom_up: Backbone) -> dict:
        return dict(
            bottom_up=bottom_up,
            in_features=cfg.MODEL.FPN.IN_FEATURES,
            out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
            norm=cfg.MODEL.FPN.NORM,
            fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
            top_block_in=cfg.MODEL.FPN.TOP_BLOCK_IN.lower(),
        )

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [N, C, H, W]`` -> ``{"p3": [N, C_out, H/8, W/8], ..., "p7": [N, C_out, H/128, W/128]}``."""
        bottom = self.bottom_up(x)
        feats = [bottom[f] for f in self.in_features]
        prev = self.lateral_convs[-1](feats[-1])
        outs = [self.output_convs[-1](prev)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.lateral_convs[i](feats[i])
            top_down = F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            prev = lateral + top_down
            if self._fuse_type == "avg":
                prev = prev / 2
            outs.insert(0, self.output_convs[i](prev))
        top_input = outs[-1] if self.top_block.in_feature == "p5" else feats[-1]
        outs.extend(self.top_block(top_input))
        return dict(zip(self._out_features, outs))


@BACKBONE_REGISTRY.register()
def build_retinanet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec | None = None) -> FPN:
    """FPN (P3-P7) over the bottom-up backbone named by ``MODEL.FPN.BOTTOM_UP``."""
    name = cfg.MODEL.FPN.BOTTOM_UP
    if name in ("build_retinanet_fpn_backbone", "build_retinanet_resnet_fpn_backbone"):
        raise ConfigError(f"MODEL.FPN.BOTTOM_UP must name a bottom-up network, not an FPN ('{name}').")
    bottom_up = BACKBONE_REGISTRY.get(name)(cfg, input_shape)
    return FPN(cfg, bottom_up=bottom_up)


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec | None = None) -> FPN:
    """ResNet (``MODEL.RESNETS.*``) + FPN (``MODEL.FPN.*``) with P6/P7."""
    from .resnet import ResNet

    return FPN(cfg, bottom_up=ResNet(cfg, input_shape))
