"""MobileNetV3-Large and -Small bottom-up networks (Howard et al., "Searching for MobileNetV3", 2019).

Building blocks: a 3x3/2 stem, inverted residual blocks (1x1 expansion, depthwise kxk,
optional squeeze-excite, 1x1 linear projection, identity shortcut when shape allows),
ReLU or hard-swish activations, and a final 1x1 expansion conv. BatchNorms use eps 1e-3
(and momentum 0.01 when trained), as the ImageNet weights were trained with.

Outputs are named by stride like ResNet's (``res2`` .. ``res5`` = strides 4, 8, 16, 32), each
the output of the *last* layer that runs at that stride (block index ``blocks.i``, 0-based,
= torchvision's ``features.{i+1}``):

=========  ======  =========================================  ==========================================
output     stride  Large: ends at (channels)                  Small: ends at (channels)
=========  ======  =========================================  ==========================================
``res2``   4       ``blocks.2`` (24)                          ``blocks.0`` (16)
``res3``   8       ``blocks.5`` (40)                          ``blocks.2`` (24)
``res4``   16      ``blocks.11`` (112)                        ``blocks.7`` (48)
``res5``   32      ``last`` 1x1 conv (960), or ``blocks.14``  ``last`` 1x1 conv (576), or ``blocks.10``
                   (160) with ``last_conv=False``             (96) with ``last_conv=False``
=========  ======  =========================================  ==========================================

The stem unit that ``freeze_at=1`` freezes is everything at stride 2 (Large: ``stem`` and
``blocks.0``; Small: ``stem``); stage ``k`` (``freeze_at=k+1``) is every block of the stride of
``res{k+1}`` (``res5`` includes ``last``), exactly as ResNet counts its stem and stages.

Parameter names are retinakit's own (``stem.conv``, ``blocks.3.expand.norm``,
``blocks.3.se.fc1``, ``blocks.3.project.conv``, ``last.conv``); torchvision's ImageNet
``mobilenet_v3_large`` / ``mobilenet_v3_small`` state dicts are mapped onto them by
:func:`retinakit.checkpoint.converters.torchvision.convert_imagenet_mobilenet_v3`, which
``MODEL.WEIGHTS`` applies automatically.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...config import CfgNode, ConfigError, configurable
from .backbone import Backbone, ShapeSpec
from .build import BACKBONE_REGISTRY
from .fpn import FPN
from .norm import freeze_batchnorm, get_norm

__all__ = [
    "MOBILENET_V3_SPECS",
    "BlockSpec",
    "InvertedResidual",
    "MobileNetV3",
    "SqueezeExcite",
    "build_mobilenet_v3_backbone",
    "build_retinanet_mobilenet_v3_fpn_backbone",
]

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01
_NAMES = ("res2", "res3", "res4", "res5")


class BlockSpec(NamedTuple):
    """One inverted residual block: depthwise kernel, expanded and output channels,
    squeeze-excite, activation (``"relu"`` or ``"hswish"``) and stride."""

    kernel: int
    expanded: int
    out: int
    se: bool
    act: str
    stride: int


def _b(kernel: int, expanded: int, out: int, se: int, act: str, stride: int) -> BlockSpec:
    return BlockSpec(kernel, expanded, out, bool(se), act, stride)


# (stem channels, blocks, channels of the last 1x1 conv): Tables 1 and 2 of the paper.
MOBILENET_V3_SPECS: dict[str, tuple[int, tuple[BlockSpec, ...], int]] = {
    "large": (16, (
        _b(3, 16, 16, 0, "relu", 1),
        _b(3, 64, 24, 0, "relu", 2), _b(3, 72, 24, 0, "relu", 1),
        _b(5, 72, 40, 1, "relu", 2), _b(5, 120, 40, 1, "relu", 1), _b(5, 120, 40, 1, "relu", 1),
        _b(3, 240, 80, 0, "hswish", 2), _b(3, 200, 80, 0, "hswish", 1), _b(3, 184, 80, 0, "hswish", 1),
        _b(3, 184, 80, 0, "hswish", 1), _b(3, 480, 112, 1, "hswish", 1), _b(3, 672, 112, 1, "hswish", 1),
        _b(5, 672, 160, 1, "hswish", 2), _b(5, 960, 160, 1, "hswish", 1), _b(5, 960, 160, 1, "hswish", 1),
    ), 960),
    "small": (16, (
        _b(3, 16, 16, 1, "relu", 2),
        _b(3, 72, 24, 0, "relu", 2), _b(3, 88, 24, 0, "relu", 1),
        _b(5, 96, 40, 1, "hswish", 2), _b(5, 240, 40, 1, "hswish", 1), _b(5, 240, 40, 1, "hswish", 1),
        _b(5, 120, 48, 1, "hswish", 1), _b(5, 144, 48, 1, "hswish", 1),
        _b(5, 288, 96, 1, "hswish", 2), _b(5, 576, 96, 1, "hswish", 1), _b(5, 576, 96, 1, "hswish", 1),
    ), 576),
}


def _round_to_8(value: float) -> int:
    """``value`` rounded to the nearest multiple of 8, never below 90% of it (nor below 8)."""
    rounded = max(8, int(value + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * value else rounded


def _activation(name: str) -> nn.Module:
    return nn.Hardswish() if name == "hswish" else nn.ReLU(inplace=True)


def _conv_norm(in_ch: int, out_ch: int, kernel: int, norm: str, stride: int = 1, groups: int = 1, act: str = "") -> nn.Sequential:
    """``conv -> norm [-> act]`` as a Sequential with children ``conv``, ``norm``, ``act``
    (so ``modeling/fuse.py`` folds a frozen norm into the conv)."""
    norm_layer = get_norm(norm, out_ch)
    if norm_layer is not None:
        norm_layer.eps = _BN_EPS  # type: ignore[assignment]
        if isinstance(norm_layer, nn.modules.batchnorm._BatchNorm):
            norm_layer.momentum = _BN_MOMENTUM
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv"] = nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=norm_layer is None)
    layers["norm"] = norm_layer if norm_layer is not None else nn.Identity()
    if act:
        layers["act"] = _activation(act)
    return nn.Sequential(layers)


class SqueezeExcite(nn.Module):
    """Channel gating: ``x * hardsigmoid(fc2(relu(fc1(mean_hw(x)))))``, ``fc`` = 1x1 convs with bias."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, C, H, W]`` -> same shape."""
        gate = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * F.hardsigmoid(gate)


class InvertedResidual(nn.Module):
    """``[expand 1x1 ->] depthwise kxk/s -> [SE ->] project 1x1 (linear)`` + identity when shapes match."""

    def __init__(self, in_ch: int, spec: BlockSpec, norm: str) -> None:
        super().__init__()
        self.expand = _conv_norm(in_ch, spec.expanded, 1, norm, act=spec.act) if spec.expanded != in_ch else None
        self.depthwise = _conv_norm(spec.expanded, spec.expanded, spec.kernel, norm, spec.stride, spec.expanded, spec.act)
        self.se = SqueezeExcite(spec.expanded, _round_to_8(spec.expanded / 4)) if spec.se else None
        self.project = _conv_norm(spec.expanded, spec.out, 1, norm)
        self.use_shortcut = spec.stride == 1 and in_ch == spec.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, C_in, H, W]`` -> ``[N, C_out, H/s, W/s]`` (sizes rounded up)."""
        out = self.expand(x) if self.expand is not None else x
        out = self.depthwise(out)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        return out + x if self.use_shortcut else out


class MobileNetV3(Backbone):
    """MobileNetV3 returning ``{"res2".."res5": Tensor[N, C, H/s, W/s]}`` (see the module docstring)."""

    out_features_key = "MODEL.MOBILENETV3.OUT_FEATURES"

    @configurable
    def __init__(
        self,
        *,
        variant: str = "large",
        out_features: Sequence[str] = ("res3", "res4", "res5"),
        norm: str = "FrozenBN",
        freeze_at: int = 0,
        in_channels: int = 3,
        last_conv: bool = True,
    ) -> None:
        """
        Args:
            variant: ``"large"`` or ``"small"``.
            out_features: outputs among ``"res2"`` .. ``"res5"``; ``res_k`` is
                ``[N, C_k, ceil(H/2^k), ceil(W/2^k)]`` for images ``[N, in_channels, H, W]``.
            norm: ``"FrozenBN"``, ``"BN"``, ``"SyncBN"``, ``"GN"`` or ``""`` (none).
            freeze_at: freeze the stem unit (``>= 1``) and the first ``freeze_at - 1`` stages (0: nothing).
            in_channels: channels of the input images.
            last_conv: ``res5`` is the final 1x1 expansion conv (960 / 576 channels) instead of
                the last inverted residual block (160 / 96 channels).
        """
        super().__init__()
        if variant not in MOBILENET_V3_SPECS:
            raise ConfigError(f"MODEL.MOBILENETV3.VARIANT='{variant}' is unknown; choose one of {sorted(MOBILENET_V3_SPECS)}.")
        unknown = [f for f in out_features if f not in _NAMES]
        if unknown or not out_features:
            raise ConfigError(f"MODEL.MOBILENETV3.OUT_FEATURES={list(out_features)}: choose a non-empty subset of {list(_NAMES)}.")
        stem_ch, specs, last_ch = MOBILENET_V3_SPECS[variant]
        self.variant = variant
        # Stages built: up to the deepest requested output (as ResNet; no unused parameters).
        self._num_stages = 1 + max(_NAMES.index(f) for f in out_features)
        self.stem = _conv_norm(in_channels, stem_ch, 3, norm, stride=2, act="hswish")
        blocks, stage_of, in_ch, stride = [], [], stem_ch, 2
        for spec in specs:
            stage = (stride * spec.stride).bit_length() - 2  # stride 2 -> 0 (stem unit), 4 -> 1 (res2), ... 32 -> 4
            if stage > self._num_stages:
                break
            blocks.append(InvertedResidual(in_ch, spec, norm))
            in_ch, stride = spec.out, stride * spec.stride
            stage_of.append(stage)
        self.blocks = nn.ModuleList(blocks)
        self._stage_of = stage_of
        self.last = _conv_norm(in_ch, last_ch, 1, norm, act="hswish") if last_conv and self._num_stages == 4 else None
        self._out_features = list(out_features)
        self._out_feature_strides = {name: 4 * 2**k for k, name in enumerate(_NAMES[: self._num_stages])}
        self._out_feature_channels = {name: self._stage_channels(k + 1) for k, name in enumerate(_NAMES[: self._num_stages])}
        self._init_weights()
        self.freeze(freeze_at)

    def _stage_channels(self, stage: int) -> int:
        if stage == 4 and self.last is not None:
            return int(self.last.conv.out_channels)  # type: ignore[union-attr, arg-type]
        return int([b.project.conv.out_channels for b, k in zip(self.blocks, self._stage_of) if k == stage][-1])  # type: ignore[union-attr, arg-type]

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec | None = None) -> dict:
        m = cfg.MODEL.MOBILENETV3
        return dict(
            variant=m.VARIANT.lower(),
            out_features=m.OUT_FEATURES,
            norm=m.NORM,
            freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
            in_channels=(input_shape.channels if input_shape and input_shape.channels else len(cfg.MODEL.PIXEL_MEAN)),
            last_conv=m.LAST_CONV,
        )

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.ModuleList]:
        """``[stem unit, res2 blocks, res3 blocks, res4 blocks, res5 blocks (+ last)]``: the units ``freeze_at`` counts."""
        units = [nn.ModuleList([self.stem])] + [nn.ModuleList() for _ in _NAMES]
        for block, stage in zip(self.blocks, self._stage_of):
            units[stage].append(block)
        if self.last is not None:
            units[-1].append(self.last)
        return units

    def freeze(self, freeze_at: int) -> MobileNetV3:
        """Freeze the stem unit (``freeze_at >= 1``) and the first ``freeze_at - 1`` stages:
        their parameters stop requiring gradients and their BatchNorms become frozen."""
        for stage in self.stages()[: max(freeze_at, 0)]:
            for p in stage.parameters():
                p.requires_grad_(False)
            freeze_batchnorm(stage)
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [N, C, H, W]`` -> ``{name: [N, C_f, ceil(H/s_f), ceil(W/s_f)]}`` for ``out_features``."""
        x = self.stem(x)
        out: dict[str, torch.Tensor] = {}
        last_index = len(self._stage_of) - 1
        for i, (block, stage) in enumerate(zip(self.blocks, self._stage_of)):
            x = block(x)
            if i == last_index or self._stage_of[i + 1] != stage:  # the last block at this stride
                if stage == 4 and self.last is not None:
                    x = self.last(x)
                name = _NAMES[stage - 1] if stage >= 1 else ""
                if name in self._out_features:
                    out[name] = x
        return out

    def load_torchvision_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a torchvision ImageNet ``mobilenet_v3_large/small`` state dict, strictly.

        Raises ValueError naming the missing and unexpected keys when the file is another
        architecture (a ResNet, the other MobileNetV3 variant) or ``last_conv`` is off.
        """
        from ...checkpoint.converters.torchvision import convert_imagenet_mobilenet_v3

        mapped = convert_imagenet_mobilenet_v3(dict(state_dict), prefix="")
        own = {k: v for k, v in self.state_dict().items() if not k.endswith("num_batches_tracked")}
        missing = sorted(set(own) - set(mapped))
        unexpected = sorted(set(mapped) - set(own))
        wrong = [f"{k}: {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in mapped and mapped[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            raise ValueError(
                f"The state dict is not a torchvision mobilenet_v3_{self.variant} (with last_conv={self.last is not None}): "
                f"{len(missing)} missing keys {missing[:6]}, {len(unexpected)} unexpected keys {unexpected[:6]}, "
                f"{len(wrong)} shape mismatches {wrong[:3]}. Use the weights of the MODEL.MOBILENETV3.VARIANT you configured."
            )
        self.load_state_dict(mapped, strict=False)


@BACKBONE_REGISTRY.register()
def build_mobilenet_v3_backbone(cfg: CfgNode, input_shape: ShapeSpec | None = None) -> MobileNetV3:
    """The MobileNetV3 bottom-up network alone, from ``MODEL.MOBILENETV3.*``."""
    return MobileNetV3(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_retinanet_mobilenet_v3_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec | None = None) -> FPN:
    """MobileNetV3 (``MODEL.MOBILENETV3.*``) + FPN (``MODEL.FPN.*``) with P6/P7."""
    return FPN(cfg, bottom_up=MobileNetV3(cfg, input_shape))
