"""Anchor coverage of a dataset: the per-box report (:class:`AnchorCoverageReport`, tables by
box size), :func:`anchor_coverage` and the trainer's one-call check :func:`check_anchor_coverage`."""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .inputs import AnchorSetup, GroundTruth, _fg_threshold, _grid_tensors, _is_grid_generator, collect_ground_truth
from .iou import _one_thread, best_iou_bruteforce, best_iou_grid

__all__ = ["COCO_BUCKETS", "FINE_EDGES", "AnchorCoverageReport", "anchor_coverage", "check_anchor_coverage"]

# The package's logger (``retinakit.analysis.anchors``).
logger = logging.getLogger(__package__)

# Box size = sqrt(area) in pixels of the resized image the anchors see.
COCO_BUCKETS: tuple[tuple[str, float, float], ...] = (("small", 0.0, 32.0), ("medium", 32.0, 96.0), ("large", 96.0, math.inf))
FINE_EDGES: tuple[float, ...] = (0, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, math.inf)


@dataclass
class AnchorCoverageReport:
    """Per-box best anchor IoU and box size; coverage tables derived from them.

    ``best_iou [G]``, ``box_size [G]`` (sqrt(area) after resizing), ``threshold``: the
    matcher's foreground IoU; ``anchors_per_location``: per level.
    """

    best_iou: torch.Tensor
    box_size: torch.Tensor
    threshold: float
    anchors_per_location: list[int]
    label: str = ""

    @property
    def num_boxes(self) -> int:
        return int(self.best_iou.numel())

    @property
    def coverage(self) -> float:
        """Fraction of boxes with an anchor at IoU >= threshold (nan without boxes)."""
        return float((self.best_iou >= self.threshold).float().mean()) if self.num_boxes else float("nan")

    @property
    def mean_best_iou(self) -> float:
        return float(self.best_iou.mean()) if self.num_boxes else float("nan")

    def rows(self) -> list[tuple[str, int, float, float]]:
        """``(bucket, boxes, coverage, mean best IoU)``: all, COCO small/medium/large, finer bins."""
        buckets = [("all", 0.0, math.inf), *COCO_BUCKETS]
        buckets += [(f"[{lo:g}, {hi:g})" if hi != math.inf else f">= {lo:g}", lo, hi) for lo, hi in zip(FINE_EDGES[:-1], FINE_EDGES[1:])]
        out = []
        for name, lo, hi in buckets:
            m = (self.box_size >= lo) & (self.box_size < hi)
            n = int(m.sum())
            cov = float((self.best_iou[m] >= self.threshold).float().mean()) if n else float("nan")
            miou = float(self.best_iou[m].mean()) if n else float("nan")
            out.append((name, n, cov, miou))
        return out

    def table(self, other: AnchorCoverageReport | None = None) -> str:
        """A text table (tabulate); with ``other``, its columns side by side."""
        from tabulate import tabulate

        a = self.label or "anchors"
        headers = ["box size (px)", "boxes", f"coverage ({a})", f"mean best IoU ({a})"]
        rows = [list(r) for r in self.rows()]
        if other is not None:
            b = other.label or "other"
            headers += [f"coverage ({b})", f"mean best IoU ({b})"]
            for r, o in zip(rows, other.rows()):
                r += [o[2], o[3]]
        return tabulate(rows, headers=headers, floatfmt=".3f", missingval="-")

    def summary(self) -> str:
        return (
            f"{self.coverage:.1%} of {self.num_boxes} GT boxes have an anchor with IoU >= {self.threshold:g} "
            f"(mean best IoU {self.mean_best_iou:.3f})"
        )



def _best_ious(setup: AnchorSetup, gt: GroundTruth, generator: Any, method: str) -> torch.Tensor:
    """Best anchor IoU ``[G]`` of each GT box: closed form ("grid") or over every anchor ("bruteforce")."""
    if method not in ("auto", "grid", "bruteforce"):
        raise ValueError(f"method must be 'auto', 'grid' or 'bruteforce', got {method!r}.")
    if method == "grid" or (method == "auto" and _is_grid_generator(generator)):
        if not _is_grid_generator(generator):
            raise ValueError(f"method 'grid' needs a DefaultAnchorGenerator, got {type(generator).__name__}.")
        grid, stride = _grid_tensors(setup, gt, generator.strides_from_image)
        cells = [generator.cell_anchors(i) for i in range(len(setup.strides))]
        with _one_thread():
            return best_iou_grid(gt.boxes, grid, stride, cells, generator.offset)
    best = torch.zeros(len(gt))
    sizes, inverse = torch.unique(gt.padded_hw, dim=0, return_inverse=True)
    for i, hw in enumerate(sizes.tolist()):
        m = inverse == i
        best[m] = best_iou_bruteforce(gt.boxes[m], setup.anchors(tuple(hw), generator))
    return best


def _coverage_of(setup: AnchorSetup, gt: GroundTruth, threshold: float, generator: Any,
                 method: str, label: str) -> AnchorCoverageReport:
    """The coverage report of ``generator``'s anchors for the boxes of ``gt``."""
    best = _best_ious(setup, gt, generator, method)
    size = ((gt.boxes[:, 2] - gt.boxes[:, 0]) * (gt.boxes[:, 3] - gt.boxes[:, 1])).clamp(min=0).sqrt()
    return AnchorCoverageReport(best, size, threshold, list(generator.num_anchors), label)


def anchor_coverage(
    cfg: Any, dataset_dicts: Sequence[dict[str, Any]], *, mode: str = "train", max_images: int | None = None,
    method: str = "auto", setup: AnchorSetup | None = None, label: str = "",
) -> AnchorCoverageReport:
    """Coverage of the GT boxes of ``dataset_dicts`` by the anchors ``cfg`` builds.

    ``method``: "bruteforce" (IoU with every anchor of the image; any generator), "grid"
    (closed form, ``DefaultAnchorGenerator``) or "auto" (grid when possible). Both are exact.
    """
    setup = setup or AnchorSetup.from_config(cfg)
    gt = collect_ground_truth(cfg, dataset_dicts, setup.size_divisibility, mode=mode, max_images=max_images)
    return _coverage_of(setup, gt, _fg_threshold(cfg), setup.generator, method, label)


def check_anchor_coverage(
    cfg: Any, dataset_dicts: Sequence[dict[str, Any]], *, min_coverage: float = 0.9, max_images: int = 500,
    log: logging.Logger | None = None,
) -> AnchorCoverageReport:
    """Compute coverage on up to ``max_images`` images; log a warning with the table when it is
    below ``min_coverage``. Returns the report (for trainers: call once before training)."""
    report = anchor_coverage(cfg, dataset_dicts, max_images=max_images, label="config")
    log = log or logger
    if report.num_boxes and report.coverage < min_coverage:
        log.warning(
            "Poor anchor coverage: %s, below %.0f%%. Boxes without a good anchor are only learned through "
            "low-quality matches. Run `python tools/analyze_anchors.py --config-file <cfg> --suggest` for "
            "better MODEL.ANCHOR_GENERATOR settings.\n%s", report.summary(), 100 * min_coverage, report.table(),
        )
    return report
