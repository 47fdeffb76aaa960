"""The model parts the analysis needs: anchor generator, backbone feature-map sizes, the
matcher's foreground threshold."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from ...config.config import ConfigError, import_custom_modules
from .ground_truth import GroundTruth

__all__ = ["AnchorSetup"]


@dataclass
class AnchorSetup:
    """The model's anchor generator and how to get feature-map sizes for an input size."""

    generator: torch.nn.Module
    backbone: torch.nn.Module
    in_features: list[str]
    strides: list[int]
    size_divisibility: int
    _grids: dict[tuple[int, int], list[tuple[int, int]]] = field(default_factory=dict)
    _meta: torch.nn.Module | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> AnchorSetup:
        from ..anchor_generator import build_anchor_generator
        from ..backbone import build_backbone

        import_custom_modules(cfg.CUSTOM_IMPORTS)
        backbone = build_backbone(cfg).eval()
        shapes = backbone.output_shape()
        in_features = list(cfg.MODEL.RETINANET.IN_FEATURES)
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ConfigError(f"MODEL.RETINANET.IN_FEATURES names {missing}; the backbone produces {list(shapes)}.")
        feature_shapes = [shapes[f] for f in in_features]
        generator = build_anchor_generator(cfg, feature_shapes)
        return cls(generator, backbone, in_features, [int(s.stride or 0) for s in feature_shapes], int(backbone.size_divisibility))

    def grid_sizes(self, padded_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Feature-map ``(h, w)`` per level for an input of ``padded_hw`` (shape-only forward on "meta")."""
        key = (int(padded_hw[0]), int(padded_hw[1]))
        if key not in self._grids:
            try:
                if self._meta is None:
                    self._meta = copy.deepcopy(self.backbone).to("meta")
                with torch.no_grad():
                    out = self._meta(torch.empty(1, 3, *key, device="meta"))
            except Exception:  # noqa: BLE001 - a backbone whose ops have no meta kernel: run it for real once
                with torch.no_grad():
                    out = self.backbone(torch.zeros(1, 3, *key))
            self._grids[key] = [tuple(int(v) for v in out[f].shape[-2:]) for f in self.in_features]  # type: ignore[misc]
        return self._grids[key]

    def anchors(self, padded_hw: tuple[int, int], generator: Any = None) -> torch.Tensor:
        """All anchors ``[A, 4]`` (XYXY) of an input of ``padded_hw``, from the anchor generator."""
        feats = [torch.empty(1, 0, h, w) for h, w in self.grid_sizes(padded_hw)]
        return torch.cat((generator or self.generator)(feats, tuple(padded_hw)))


def _grid_tensors(setup: AnchorSetup, gt: GroundTruth, strides_from_image: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per box and level: grid ``[G, L, 2]`` (h, w) and stride ``[G, L, 2]`` (y, x)."""
    n_lvl = len(setup.strides)
    grid = torch.zeros(len(gt), n_lvl, 2)
    stride = torch.zeros(len(gt), n_lvl, 2)
    if len(gt) == 0:
        return grid, stride
    sizes, inverse = torch.unique(gt.padded_hw, dim=0, return_inverse=True)
    for i, (ph, pw) in enumerate(sizes.tolist()):
        g = torch.tensor(setup.grid_sizes((ph, pw)), dtype=torch.float32)
        s = g.new_tensor([[ph, pw]]) // g if strides_from_image else g.new_tensor(setup.strides)[:, None].expand(-1, 2)
        grid[inverse == i] = g
        stride[inverse == i] = s
    return grid, stride


def _fg_threshold(cfg: Any) -> float:
    th = list(cfg.MODEL.RETINANET.IOU_THRESHOLDS)
    if not th:
        raise ConfigError("MODEL.RETINANET.IOU_THRESHOLDS is empty; anchor coverage needs the foreground threshold.")
    return float(th[-1])


def _is_grid_generator(gen: Any) -> bool:
    from ..anchor_generator import DefaultAnchorGenerator

    return isinstance(gen, DefaultAnchorGenerator)
