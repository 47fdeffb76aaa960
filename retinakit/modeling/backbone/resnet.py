"""ResNet-18/34/50/101/152 bottom-up networks.

Parameter names follow torchvision's ImageNet checkpoints (``conv1``, ``bn1``,
``layer1.0.conv1`` ..., ``downsample.0/1``) so that such a ``.pth`` state dict loads
directly (``fc.*`` is not part of the backbone) without torchvision installed.
Features are named ``res2`` .. ``res5`` (strides 4, 8, 16, 32).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...config import CfgNode, ConfigError, configurable
from .backbone import Backbone, ShapeSpec
from .build import BACKBONE_REGISTRY
from .norm import freeze_batchnorm, get_norm

__all__ = ["RESNET_SPECS", "BasicBlock", "Bottleneck", "ResNet", "build_resnet_backbone"]

# depth -> (block type, blocks per stage)
RESNET_SPECS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _norm(norm: str, channels: int) -> nn.Module:
    layer = get_norm(norm, channels)
    return layer if layer is not None else nn.Identity()


def _downsample(in_ch: int, out_ch: int, stride: int, norm: str) -> nn.Module | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), _norm(norm, out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1
    # forward applies bnK directly to convK's output (see modeling/fuse.py)
    conv_norm_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, in_ch: int, planes: int, stride: int, norm: str, **_: object) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = _norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, planes, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place: no new feature map to allocate (the norms keep no output for backward)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (grouped) -> 1x1 convs with a residual connection (ResNet-50+)."""

    expansion = 4
    # forward applies bnK directly to convK's output (see modeling/fuse.py)
    conv_norm_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(
        self, in_ch: int, planes: int, stride: int, norm: str, groups: int = 1, width_per_group: int = 64,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_ch, width, 1, stride=s1, bias=False)
        self.bn1 = _norm(norm, width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=s3, padding=1, groups=groups, bias=False)
        self.bn2 = _norm(norm, width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = _norm(norm, planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, planes * 4, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place: no new feature map to allocate (the norms keep no output for backward)
        return self.relu(out)


class ResNet(Backbone):
    """ResNet bottom-up network returning ``{"res2".."res5": Tensor[N, C, H/s, W/s]}``."""

    conv_norm_pairs = (("conv1", "bn1"),)  # the stem: bn1(conv1(x)) (see modeling/fuse.py)
    out_features_key = "MODEL.RESNETS.OUT_FEATURES"

    @configurable
    def __init__(
        self,
        *,
        depth: int = 50,
        out_features: Sequence[str] = ("res3", "res4", "res5"),
        norm: str = "FrozenBN",
        freeze_at: int = 0,
        in_channels: int = 3,
        num_groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
    ) -> None:
        """
        Args:
            depth: 18, 34 (basic blocks), 50, 101 or 152 (bottlenecks).
            out_features: stages to return among ``"res2"`` .. ``"res5"``; ``res_k`` is
                ``[N, C_k, H/2^k, W/2^k]`` for input images ``[N, in_channels, H, W]``.
            norm: ``"FrozenBN"``, ``"BN"``, ``"SyncBN"``, ``"GN"`` or ``""`` (none).
            freeze_at: freeze the stem (``>= 1``) and the first ``freeze_at - 1`` stages (0: nothing).
            in_channels: channels of the input images.
            num_groups: groups of the 3x3 convs (ResNeXt; bottleneck depths only).
            width_per_group: bottleneck width per group (64 for ResNet).
            stride_in_1x1: put a bottleneck's downsampling stride in its first 1x1 conv (MSRA/Caffe
                weights) instead of its 3x3 conv (torchvision).
        """
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ConfigError(f"MODEL.RESNETS.DEPTH={depth} is not supported; choose one of {sorted(RESNET_SPECS)}.")
        kind, blocks = RESNET_SPECS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        names = ["res2", "res3", "res4", "res5"]
        unknown = [f for f in out_features if f not in names]
        if unknown:
            raise ValueError(f"Unknown ResNet output features {unknown}; available: {names}.")
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._out_features = list(out_features)
        self._out_feature_channels: dict[str, int] = {}
        self._out_feature_strides: dict[str, int] = {}
        in_ch = 64
        block_kwargs: dict[str, Any] = dict(groups=num_groups, width_per_group=width_per_group, stride_in_1x1=stride_in_1x1)
        self._num_stages = 1 + max(names.index(f) for f in out_features)
        for i, n in enumerate(blocks[: self._num_stages]):
            planes, stride = 64 * 2**i, 1 if i == 0 else 2
            layers: list[nn.Module] = []
            for j in range(n):
                layers.append(block(in_ch, planes, stride if j == 0 else 1, norm, **block_kwargs))
                in_ch = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            self._out_feature_channels[names[i]] = in_ch
            self._out_feature_strides[names[i]] = 4 * 2**i
        self._init_weights()
        self.freeze(freeze_at)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec | None = None) -> dict:
        r = cfg.MODEL.RESNETS
        return dict(
            depth=r.DEPTH,
            out_features=r.OUT_FEATURES,
            norm=r.NORM,
            freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
            in_channels=(input_shape.channels if input_shape and input_shape.channels else len(cfg.MODEL.PIXEL_MEAN)),
            num_groups=r.NUM_GROUPS,
            width_per_group=r.WIDTH_PER_GROUP,
            stride_in_1x1=r.STRIDE_IN_1X1,
        )

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Module]:
        """``[stem, layer1, ...]``: the units that ``freeze_at`` counts."""
        stem = nn.ModuleList([self.conv1, self.bn1])
        return [stem] + [getattr(self, f"layer{i + 1}") for i in range(self._num_stages)]

    def freeze(self, freeze_at: int) -> ResNet:
        """Freeze the stem (``freeze_at >= 1``) and the first ``freeze_at - 1`` stages.

        Frozen parameters stop requiring gradients and their BatchNorms become frozen.
        """
        for idx, stage in enumerate(self.stages()):
            if idx >= freeze_at:
                break
            for p in stage.parameters():
                p.requires_grad_(False)
            if idx == 0:
                self.bn1 = freeze_batchnorm(self.bn1)
            else:
                freeze_batchnorm(stage)
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [N, C, H, W]`` -> ``{name: [N, C_f, H/s_f, W/s_f]}`` for ``out_features``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for i in range(self._num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            name = f"res{i + 2}"
            if name in self._out_features:
                out[name] = x
        return out


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec | None = None) -> ResNet:
    """The ResNet bottom-up network alone, from ``MODEL.RESNETS.*``."""
    return ResNet(cfg, input_shape)
