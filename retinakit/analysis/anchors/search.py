"""Search for ``SIZES`` / ``OCTAVE_SCALES`` / ``ASPECT_RATIOS`` of
:class:`~retinakit.modeling.DefaultAnchorGenerator` that cover a dataset better:
:func:`suggest_anchors` -> :class:`AnchorSuggestion`."""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...config.config import ConfigError
from ...data.errors import DatasetError
from ...modeling import DefaultAnchorGenerator
from .coverage import AnchorCoverageReport, _coverage_of
from .inputs import AnchorSetup, GroundTruth, _fg_threshold, _grid_tensors, _is_grid_generator, collect_ground_truth
from .iou import _one_thread, best_iou_grid, kmeans_aspect_ratios

__all__ = ["AnchorSuggestion", "suggest_anchors"]

# The package's logger (``retinakit.analysis.anchors``).
logger = logging.getLogger(__package__)


@dataclass
class AnchorSuggestion:
    """Suggested anchor parameters with the coverage before and after."""

    sizes: list[list[float]]
    octave_scales: list[float]
    aspect_ratios: list[list[float]]
    before: AnchorCoverageReport
    after: AnchorCoverageReport

    def yaml(self) -> str:
        """The lines to paste into a config file."""
        return "\n".join([
            "MODEL:",
            "  ANCHOR_GENERATOR:",
            f"    SIZES: {self.sizes}",
            f"    OCTAVE_SCALES: {self.octave_scales}",
            f"    ASPECT_RATIOS: {self.aspect_ratios}",
        ])

    def overrides(self) -> list[str]:
        """The same as ``KEY VALUE`` command-line overrides."""
        return [
            "MODEL.ANCHOR_GENERATOR.SIZES", str(self.sizes).replace(" ", ""),
            "MODEL.ANCHOR_GENERATOR.OCTAVE_SCALES", str(self.octave_scales).replace(" ", ""),
            "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", str(self.aspect_ratios).replace(" ", ""),
        ]


class _Objective:
    """coverage + ``iou_weight`` * mean best IoU of the GT boxes for candidate parameters (grid path)."""

    def __init__(self, setup: AnchorSetup, gt: GroundTruth, threshold: float, iou_weight: float) -> None:
        gen: Any = setup.generator
        self.setup, self.gt, self.threshold, self.iou_weight = setup, gt, threshold, iou_weight
        self.grid, self.stride = _grid_tensors(setup, gt, gen.strides_from_image)
        self.evals = 0

    def generator(self, sizes: Sequence[Sequence[float]], octaves: Sequence[float],
                  ratios: Sequence[Sequence[float]]) -> DefaultAnchorGenerator:
        """The model's generator with other sizes, octave scales and aspect ratios."""
        g: Any = self.setup.generator
        return DefaultAnchorGenerator(
            strides=self.setup.strides, sizes=[list(s) for s in sizes], octave_scales=list(octaves),
            aspect_ratios=[list(r) for r in ratios], offset=g.offset, round_anchors=g.round_anchors,
            strides_from_image=g.strides_from_image,
        )

    def __call__(self, sizes: Sequence[Sequence[float]], octaves: Sequence[float], ratios: Sequence[Sequence[float]]) -> float:
        self.evals += 1
        gen = self.generator(sizes, octaves, ratios)
        cells = [gen.cell_anchors(i) for i in range(len(self.setup.strides))]
        best = best_iou_grid(self.gt.boxes, self.grid, self.stride, cells, gen.offset)
        return float((best >= self.threshold).float().mean()) + self.iou_weight * float(best.mean())


_Params = tuple[list[list[float]], list[float], list[list[float]]]  # sizes per level, octave scales, [aspect ratios]


@dataclass(frozen=True)
class _Space:
    """The searched values as one vector in log space: ``n_lvl * n_s`` sizes (level-major), the
    ``n_o - 1`` octave scales after the first (which stays 1), then ``n_r`` aspect ratios."""

    n_lvl: int
    n_s: int
    n_o: int
    n_r: int

    def unpack(self, v: Sequence[float]) -> _Params:
        """Log-space vector -> ``(sizes, octave_scales, [aspect_ratios])``."""
        e = [math.exp(t) for t in v]
        k = self.n_lvl * self.n_s
        sizes = [e[i * self.n_s:(i + 1) * self.n_s] for i in range(self.n_lvl)]
        return sizes, [1.0, *e[k:k + self.n_o - 1]], [e[k + self.n_o - 1:]]

    def allowed(self, v: Sequence[float]) -> bool:
        """Sizes grow with the level (coarser levels keep the larger objects); ratios in [1/10, 10]."""
        k = self.n_lvl * self.n_s
        return all(v[i] <= v[i + 1] for i in range(k - 1)) and all(abs(r) <= math.log(10) for r in v[k + self.n_o - 1:])

    def family(self, strides: Sequence[int], a: float, d: float, ratios: Sequence[float]) -> list[float]:
        """``size_l,k = a * stride_l * 2^(k / n_s)``, ``octave_j = 2^(j * d)`` and ``ratios``, in log space."""
        v = [math.log(a * s) + math.log(2) * k / self.n_s for s in strides for k in range(self.n_s)]
        return v + [math.log(2) * j * d for j in range(1, self.n_o)] + [math.log(r) for r in ratios]


def _search_space(cfg: Any, setup: AnchorSetup) -> _Space:
    """The search space of the config's generator: a ``DefaultAnchorGenerator`` with the same
    number of sizes and of aspect ratios on every level (else a ``ConfigError``)."""
    gen: Any = setup.generator
    if not _is_grid_generator(gen):
        raise ConfigError(
            f"--suggest searches the parameters of DefaultAnchorGenerator (SIZES, OCTAVE_SCALES, ASPECT_RATIOS); "
            f"MODEL.ANCHOR_GENERATOR.NAME is {cfg.MODEL.ANCHOR_GENERATOR.NAME!r}."
        )
    ratio_counts = {len(r) for r in gen.aspect_ratios}
    size_counts = {len(s) for s in gen.sizes}
    if len(ratio_counts) != 1 or len(size_counts) != 1:
        raise ConfigError("suggest_anchors needs the same number of SIZES and ASPECT_RATIOS on every level.")
    return _Space(len(setup.strides), size_counts.pop(), len(gen.octave_scales), ratio_counts.pop())


def _grid_search(f: _Objective, space: _Space, ratio_candidates: Sequence[Sequence[float]]) -> tuple[float, list[float]]:
    """Phase 2: the best ``(score, vector)`` of the scale family over ``a`` in 0.25 .. 16 (x stride,
    steps of 2^(1/4)), octave spacings ``d`` and each list of ratio candidates."""
    best_score, x = -1.0, []
    spacings = [0.0] if space.n_o == 1 else [i / (8 * (space.n_o - 1)) for i in range(1, 9)]
    for ratios in ratio_candidates:
        for a in [2 ** (e / 4) for e in range(-8, 17)]:
            for d in spacings:
                v = space.family(f.setup.strides, a, d, ratios)
                score = f(*space.unpack(v))
                if score > best_score:
                    best_score, x = score, v
    return best_score, x


def _local_search(f: _Objective, space: _Space, x: list[float], score: float, max_evals: int) -> tuple[float, list[float]]:
    """Phase 3: coordinate moves of ``+-step`` in log space (first improving move kept), the step
    halving from log(1.25) when a sweep improves nothing, until ``step < log(1.01)`` or ``max_evals``."""
    step = math.log(1.25)
    while step > math.log(1.01) and f.evals < max_evals:
        improved = False
        for i in range(len(x)):
            for sign in (1.0, -1.0):
                y = list(x)
                y[i] += sign * step
                if not space.allowed(y):
                    continue
                s = f(*space.unpack(y))
                if s > score + 1e-9:
                    score, x, improved = s, y, True
                    break
        if not improved:
            step /= 2
    return score, x


def _rounded(params: _Params) -> _Params:
    """Phase 4: values rounded for the config file (sizes 0.1 / 0.01 px, scales and ratios 0.001), sorted."""
    sizes, octaves, ratios = params
    return ([sorted(_round(v) for v in s) for s in sizes], sorted(round(o, 3) for o in octaves),
            [sorted(round(r, 3) for r in ratios[0])])


def _round(v: float) -> float:
    return round(v, 1) if v >= 10 else round(v, 2)


def suggest_anchors(
    cfg: Any, dataset_dicts: Sequence[dict[str, Any]], *, mode: str = "train", max_images: int | None = 2000,
    iou_weight: float = 0.25, max_evals: int = 3000,
) -> AnchorSuggestion:
    """Search ``SIZES`` (per level), ``OCTAVE_SCALES`` and one ``ASPECT_RATIOS`` list with the
    config's number of anchors per location, maximising coverage + ``iou_weight`` * mean best IoU.

    1. ratios: the config's and the k-means (1 - IoU) ones of the box shapes are both tried;
    2. grid search over ``size_l = a * stride_l * 2^(k / n_sizes)``, ``octave_j = 2^(j * d)``
       (:func:`_grid_search`);
    3. local search: each size, octave scale and ratio multiplied by ``exp(+-step)``, the step
       halving when no move improves, until ``step < 1%`` or ``max_evals`` (:func:`_local_search`).
    The result is rounded and re-evaluated with the model's anchor generator.
    """
    setup = AnchorSetup.from_config(cfg)
    space = _search_space(cfg, setup)
    gt = collect_ground_truth(cfg, dataset_dicts, setup.size_divisibility, mode=mode, max_images=max_images)
    if len(gt) == 0:
        raise DatasetError("The dataset has no (non-crowd) ground-truth boxes to fit anchors to; check DATASETS.TRAIN / --dataset.")
    threshold = _fg_threshold(cfg)
    gen: Any = setup.generator
    before = _coverage_of(setup, gt, threshold, gen, "auto", "config")
    f = _Objective(setup, gt, threshold, iou_weight)
    with _one_thread():
        ratio_candidates = [sorted(gen.aspect_ratios[0]), kmeans_aspect_ratios(gt.boxes, space.n_r)]
        score, x = _grid_search(f, space, ratio_candidates)
        score, x = _local_search(f, space, x, score, max_evals)
    sizes, octaves, ratios = _rounded(space.unpack(x))
    after = _coverage_of(setup, gt, threshold, f.generator(sizes, octaves, ratios), "auto", "suggested")
    logger.info("Anchor search: %d evaluations, objective %.4f", f.evals, score)
    return AnchorSuggestion(sizes, octaves, ratios, before, after)
