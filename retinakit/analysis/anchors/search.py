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
from .anchor_setup import AnchorSetup, _fg_threshold, _grid_tensors, _is_grid_generator
from .best_iou import _one_thread, best_iou_grid
from .coverage import _coverage_of
from .ground_truth import GroundTruth, collect_ground_truth
from .kmeans import kmeans_aspect_ratios
from .report import AnchorCoverageReport

__all__ = ["AnchorSuggestion", "suggest_anchors"]

# The package's logger (``retinakit.modeling.anchor_analysis``), as before the split into modules.
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

    def generator(self, sizes: Sequence[Sequence[float]], octaves: Sequence[float], ratios: Sequence[Sequence[float]]):
        from ..anchor_generator import DefaultAnchorGenerator

        g = self.setup.generator
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


def _round(v: float) -> float:
    return round(v, 1) if v >= 10 else round(v, 2)


def suggest_anchors(
    cfg: Any, dataset_dicts: Sequence[dict[str, Any]], *, mode: str = "train", max_images: int | None = 2000,
    iou_weight: float = 0.25, max_evals: int = 3000,
) -> AnchorSuggestion:
    """Search ``SIZES`` (per level), ``OCTAVE_SCALES`` and one ``ASPECT_RATIOS`` list with the
    config's number of anchors per location, maximising coverage + ``iou_weight`` * mean best IoU.

    1. ratios: the config's, or k-means (1 - IoU) of the box shapes, whichever scores higher;
    2. grid search over ``size_l = a * stride_l * 2^(k / n_sizes)``, ``octave_j = 2^(j * d)``;
    3. local search: each size, octave scale and ratio multiplied by ``exp(+-step)``, the step
       halving when no move improves, until ``step < 1%`` or ``max_evals``.
    The result is rounded and re-evaluated with the model's anchor generator.
    """
    setup = AnchorSetup.from_config(cfg)
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
    n_r, n_s, n_o, n_lvl = ratio_counts.pop(), size_counts.pop(), len(gen.octave_scales), len(setup.strides)
    gt = collect_ground_truth(cfg, dataset_dicts, setup.size_divisibility, mode=mode, max_images=max_images)
    if len(gt) == 0:
        raise ValueError("The dataset has no (non-crowd) ground-truth boxes: nothing to fit anchors to.")
    threshold = _fg_threshold(cfg)
    before = _coverage_of(setup, gt, threshold, gen, "auto", "config")
    f = _Objective(setup, gt, threshold, iou_weight)

    def unpack(v: list[float]) -> tuple[list[list[float]], list[float], list[list[float]]]:
        e = [math.exp(t) for t in v]
        sizes = [e[i * n_s:(i + 1) * n_s] for i in range(n_lvl)]
        k = n_lvl * n_s
        return sizes, [1.0, *e[k:k + n_o - 1]], [e[k + n_o - 1:]]

    def allowed(v: list[float]) -> bool:
        """Sizes grow with the level (coarser levels keep the larger objects); ratios in [1/10, 10]."""
        k = n_lvl * n_s
        return all(v[i] <= v[i + 1] for i in range(k - 1)) and all(abs(r) <= math.log(10) for r in v[k + n_o - 1:])

    with _one_thread():
        ratio_candidates = [sorted(gen.aspect_ratios[0]), kmeans_aspect_ratios(gt.boxes, n_r)]
        best_score, x = -1.0, []
        for ratios in ratio_candidates:
            for a in [2 ** (e / 4) for e in range(-8, 17)]:  # 0.25 .. 16 x stride
                for d in ([0.0] if n_o == 1 else [i / (8 * (n_o - 1)) for i in range(1, 9)]):
                    v = [math.log(a * s) + math.log(2) * k / n_s for s in setup.strides for k in range(n_s)]
                    v += [math.log(2) * j * d for j in range(1, n_o)] + [math.log(r) for r in ratios]
                    score = f(*unpack(v))
                    if score > best_score:
                        best_score, x = score, v
        # local search in log space over every free value (the first octave scale stays 1)
        step = math.log(1.25)
        while step > math.log(1.01) and f.evals < max_evals:
            improved = False
            for i in range(len(x)):
                for sign in (1.0, -1.0):
                    y = list(x)
                    y[i] += sign * step
                    if not allowed(y):
                        continue
                    score = f(*unpack(y))
                    if score > best_score + 1e-9:
                        best_score, x, improved = score, y, True
                        break
            if not improved:
                step /= 2
    sizes, octaves, ratios = unpack(x)
    sizes = [sorted(_round(v) for v in s) for s in sizes]
    octaves = sorted(round(o, 3) for o in octaves)
    ratios = [sorted(round(r, 3) for r in ratios[0])]
    after = _coverage_of(setup, gt, threshold, f.generator(sizes, octaves, ratios), "auto", "suggested")
    logger.info("Anchor search: %d evaluations, objective %.4f", f.evals, best_score)
    return AnchorSuggestion(sizes, octaves, ratios, before, after)
