"""Deprecated location of :mod:`retinakit.analysis.anchors` (kept for one release).

Importing it warns (``DeprecationWarning``) and re-exports the same public names.
"""
from __future__ import annotations

import warnings

from ..analysis.anchors import (
    COCO_BUCKETS,
    FINE_EDGES,
    AnchorCoverageReport,
    AnchorSetup,
    AnchorSuggestion,
    GroundTruth,
    anchor_coverage,
    best_iou_bruteforce,
    best_iou_grid,
    check_anchor_coverage,
    collect_ground_truth,
    kmeans_aspect_ratios,
    suggest_anchors,
)

__all__ = [
    "COCO_BUCKETS",
    "FINE_EDGES",
    "AnchorCoverageReport",
    "AnchorSetup",
    "AnchorSuggestion",
    "GroundTruth",
    "anchor_coverage",
    "best_iou_bruteforce",
    "best_iou_grid",
    "check_anchor_coverage",
    "collect_ground_truth",
    "kmeans_aspect_ratios",
    "suggest_anchors",
]
warnings.warn(
    "retinakit.modeling.anchor_analysis moved to retinakit.analysis.anchors; the old path will be removed "
    "in the next release.", DeprecationWarning, stacklevel=2,
)
