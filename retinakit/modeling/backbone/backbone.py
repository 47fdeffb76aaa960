"""``Backbone`` base class and ``ShapeSpec``."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Backbone", "ShapeSpec", "describe_features", "out_features_key"]


@dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride (relative to the input image) of a feature map."""

    channels: int | None = None
    stride: int | None = None


class Backbone(nn.Module):
    """A network mapping ``images [N, C, H, W]`` to named feature maps.

    Subclasses implement ``forward(x) -> dict[name, Tensor[N, C_f, H/stride_f, W/stride_f]]``
    and set ``_out_features``, ``_out_feature_channels`` and ``_out_feature_strides``.
    """

    # The config key that chooses the outputs (e.g. "MODEL.RESNETS.OUT_FEATURES"), named in
    # configuration errors (a missing stride-4 feature for P2); None: not configurable by one key.
    out_features_key: str | None = None
    _out_features: list
    _out_feature_channels: dict[str, int]
    _out_feature_strides: dict[str, int]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def size_divisibility(self) -> int:
        """Input height/width must be a multiple of this (0: no constraint)."""
        return 0

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


def describe_features(shapes: dict[str, ShapeSpec]) -> str:
    """``"res3 (stride 8), res4 (stride 16)"`` for a backbone's ``output_shape()``."""
    return ", ".join(f"{name} (stride {spec.stride})" for name, spec in shapes.items()) or "no features"


def out_features_key(network: nn.Module) -> str:
    """The config key choosing ``network``'s outputs (its ``out_features_key``), or a generic hint."""
    key = getattr(network, "out_features_key", None)
    return key or f"the output features of {type(network).__name__} (MODEL.<BACKBONE>.OUT_FEATURES)"
