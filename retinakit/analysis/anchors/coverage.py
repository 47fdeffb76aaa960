"""Anchor coverage of a dataset: :func:`anchor_coverage` and the trainer's one-call check
:func:`check_anchor_coverage`."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from .anchor_setup import AnchorSetup, _fg_threshold, _grid_tensors, _is_grid_generator
from .best_iou import _one_thread, best_iou_bruteforce, best_iou_grid
from .ground_truth import GroundTruth, collect_ground_truth
from .report import AnchorCoverageReport

__all__ = ["anchor_coverage", "check_anchor_coverage"]

# The package's logger (``retinakit.modeling.anchor_analysis``), as before the split into modules.
logger = logging.getLogger(__package__)


def _coverage_of(setup: AnchorSetup, gt: GroundTruth, threshold: float, generator: Any,
                 method: str, label: str) -> AnchorCoverageReport:
    if method not in ("auto", "grid", "bruteforce"):
        raise ValueError(f"method must be 'auto', 'grid' or 'bruteforce', got {method!r}.")
    use_grid = method == "grid" or (method == "auto" and _is_grid_generator(generator))
    if use_grid:
        if not _is_grid_generator(generator):
            raise ValueError(f"method 'grid' needs a DefaultAnchorGenerator, got {type(generator).__name__}.")
        grid, stride = _grid_tensors(setup, gt, generator.strides_from_image)
        cells = [generator.cell_anchors(i) for i in range(len(setup.strides))]
        with _one_thread():
            best = best_iou_grid(gt.boxes, grid, stride, cells, generator.offset)
    else:
        best = torch.zeros(len(gt))
        sizes, inverse = torch.unique(gt.padded_hw, dim=0, return_inverse=True)
        for i, hw in enumerate(sizes.tolist()):
            m = inverse == i
            best[m] = best_iou_bruteforce(gt.boxes[m], setup.anchors(tuple(hw), generator))
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
