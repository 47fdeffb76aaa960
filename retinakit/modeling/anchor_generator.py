"""Anchor generators: ``ANCHOR_GENERATOR_REGISTRY`` and ``DefaultAnchorGenerator``."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import CfgNode, ConfigError, configurable
from ..utils.registry import Registry
from .backbone import ShapeSpec

__all__ = ["ANCHOR_GENERATOR_REGISTRY", "DefaultAnchorGenerator", "build_anchor_generator", "grid_anchors"]

ANCHOR_GENERATOR_REGISTRY = Registry(
    "ANCHOR_GENERATOR",
    doc="""Anchor generators. Entries are called as ``cls(cfg, input_shapes: list[ShapeSpec])``
    (or with keyword arguments) and return an ``nn.Module`` with

    * ``num_anchors: list[int]`` - anchors per location for each level (the head reads it);
    * ``forward(features: list[Tensor[N, C, H_l, W_l]], image_size: (H, W)) -> list[Tensor[H_l*W_l*A_l, 4]]``
      - XYXY anchors of each level, ordered location-major (row, column), anchor-minor.
    """,
)


def grid_anchors(cell_anchors: torch.Tensor, grid: tuple, stride: tuple, offset: float) -> torch.Tensor:
    """Anchors of one level: ``cell_anchors [A, 4]`` (XYXY around 0) shifted to every location.

    ``grid = (H_l, W_l)`` and ``stride = (s_y, s_x)`` may be Python or symbolic ints (export).
    Location ``(i, j)`` has its centre at ``((j + offset) * s_x, (i + offset) * s_y)``.
    Returns ``[H_l*W_l*A, 4]``, location-major (row, column), anchor-minor.
    """
    gh, gw = grid
    sy, sx = stride
    device = cell_anchors.device
    ys = (torch.arange(gh, dtype=torch.float32, device=device) + offset) * sy
    xs = (torch.arange(gw, dtype=torch.float32, device=device) + offset) * sx
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
    return (shifts + cell_anchors.float().view(1, -1, 4)).reshape(-1, 4)


def _broadcast(values: Sequence, num_levels: int, key: str) -> list[list[float]]:
    """One list per level: a single list (or a list of one list) applies to every level."""
    values = list(values)
    if not values:
        raise ValueError(f"{key} is empty.")
    if not isinstance(values[0], (list, tuple)):
        values = [values]
    if len(values) == 1:
        values = values * num_levels
    if len(values) != num_levels:
        raise ValueError(
            f"{key} has {len(values)} lists but the head uses {num_levels} feature levels; give one list per level or a single list."
        )
    return [list(map(float, v)) for v in values]


class DefaultAnchorGenerator(nn.Module):
    """Anchors of ``sizes x octave_scales`` areas and ``aspect_ratios`` (h/w) at every location.

    For a level with base sizes ``S``, octave scales ``O`` and ratios ``R``, the anchors of
    one location are ordered ratio-major: ``for r in R: for s in S: for o in O`` (this is
    torchvision's order). Centres are at ``(i + offset) * stride``.
    """

    @configurable
    def __init__(
        self,
        *,
        strides: Sequence[int],
        sizes: Sequence = ((32,), (64,), (128,), (256,), (512,)),
        octave_scales: Sequence[float] = (1.0, 2 ** (1.0 / 3), 2 ** (2.0 / 3)),
        aspect_ratios: Sequence = ((0.5, 1.0, 2.0),),
        offset: float = 0.0,
        round_anchors: bool = False,
        strides_from_image: bool = False,
    ) -> None:
        """
        Args:
            strides: per level, the stride of its feature map ``[N, C, H_l, W_l]`` in input pixels.
            sizes: base anchor sizes (sqrt of the area, pixels): one list per level, or one list
                for every level.
            octave_scales: multipliers of each base size (``O`` values).
            aspect_ratios: height/width ratios: one list per level, or one list for every level.
            offset: anchor centres at ``(i + offset) * stride``, in ``[0, 1)``.
            round_anchors: round the cell anchors to integer coordinates (Detectron/ODTK style).
            strides_from_image: per level, use ``(H // H_l, W // W_l)`` of the padded image
                ``(H, W)`` as the strides instead of ``strides`` (torchvision's convention).

        ``forward(features, image_size (H, W))`` returns per level ``[H_l*W_l*A_l, 4]`` XYXY with
        ``A_l = len(sizes_l) * len(octave_scales) * len(aspect_ratios_l)``.
        """
        super().__init__()
        if not 0.0 <= offset < 1.0:
            raise ConfigError(f"MODEL.ANCHOR_GENERATOR.OFFSET must be in [0, 1), got {offset}.")
        self.strides = [int(s) for s in strides]
        n = len(self.strides)
        self.sizes = _broadcast(sizes, n, "MODEL.ANCHOR_GENERATOR.SIZES")
        self.aspect_ratios = _broadcast(aspect_ratios, n, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS")
        self.octave_scales = [float(o) for o in octave_scales]
        self.offset = offset
        self.round_anchors = round_anchors
        self.strides_from_image = strides_from_image
        cell = [self._cell_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios)]
        for i, c in enumerate(cell):
            self.register_buffer(f"cell_anchors_{i}", c, persistent=False)
        self._cache: dict[tuple, list[torch.Tensor]] = {}

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shapes: Sequence[ShapeSpec]) -> dict:
        a = cfg.MODEL.ANCHOR_GENERATOR
        return dict(
            strides=[s.stride for s in input_shapes],
            sizes=a.SIZES,
            octave_scales=a.OCTAVE_SCALES,
            aspect_ratios=a.ASPECT_RATIOS,
            offset=a.OFFSET,
            round_anchors=a.ROUND,
            strides_from_image=a.STRIDES_FROM_IMAGE,
        )

    def _cell_anchors(self, sizes: list[float], ratios: list[float]) -> torch.Tensor:
        """``[A, 4]`` anchors centred at 0 for one level."""
        scales = torch.tensor([s * o for s in sizes for o in self.octave_scales], dtype=torch.float32)
        h_ratio = torch.sqrt(torch.tensor(ratios, dtype=torch.float32))
        w_ratio = 1 / h_ratio
        ws = (w_ratio[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratio[:, None] * scales[None, :]).reshape(-1)
        base = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
        return base.round() if self.round_anchors else base

    @property
    def num_anchors(self) -> list[int]:
        return [len(r) * len(s) * len(self.octave_scales) for s, r in zip(self.sizes, self.aspect_ratios)]

    def cell_anchors(self, level: int) -> torch.Tensor:
        return getattr(self, f"cell_anchors_{level}")

    def _level_strides(self, grids: list[tuple], image_size: tuple) -> list[tuple]:
        """Per level ``(s_y, s_x)``: the configured strides, or the padded image over the grid."""
        if self.strides_from_image:
            return [(image_size[0] // g[0], image_size[1] // g[1]) for g in grids]
        return [(s, s) for s in self.strides]

    def forward(self, features: list[torch.Tensor], image_size: tuple[int, int]) -> list[torch.Tensor]:
        """``features[l] [N, C, H_l, W_l]``, padded ``image_size (H, W)`` -> ``[H_l*W_l*A_l, 4]`` per level.

        Eager calls cache the anchors per (grids, strides, device). Under ``torch.export`` /
        ``torch.compile`` the sizes stay symbolic (no cache, no ``int()``), so an exported
        graph computes its anchors from its input size.
        """
        if len(features) != len(self.strides):
            raise ValueError(f"Anchor generator configured for {len(self.strides)} levels got {len(features)} feature maps.")
        if torch.compiler.is_compiling():
            grids = [(f.shape[-2], f.shape[-1]) for f in features]
            strides = self._level_strides(grids, tuple(image_size))
            return [grid_anchors(self.cell_anchors(i), g, s, self.offset) for i, (g, s) in enumerate(zip(grids, strides))]
        grids = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        strides = self._level_strides(grids, (int(image_size[0]), int(image_size[1])))
        device = features[0].device
        key = (tuple(grids), tuple(strides), str(device))
        if key not in self._cache:
            if len(self._cache) > 32:
                self._cache.clear()
            self._cache[key] = [
                grid_anchors(self.cell_anchors(i).to(device), g, s, self.offset) for i, (g, s) in enumerate(zip(grids, strides))
            ]
        return self._cache[key]


def build_anchor_generator(cfg: CfgNode, input_shapes: Sequence[ShapeSpec]) -> nn.Module:
    """Build ``cfg.MODEL.ANCHOR_GENERATOR.NAME`` for feature maps of ``input_shapes``."""
    gen = ANCHOR_GENERATOR_REGISTRY.get(cfg.MODEL.ANCHOR_GENERATOR.NAME)(cfg, input_shapes)
    if not hasattr(gen, "num_anchors"):
        raise TypeError(f"Anchor generator '{cfg.MODEL.ANCHOR_GENERATOR.NAME}' must expose 'num_anchors'.")
    return gen


ANCHOR_GENERATOR_REGISTRY.register(DefaultAnchorGenerator)
