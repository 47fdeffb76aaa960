"""Anchor coverage of a dataset and a search for anchors that cover it better.

A ground-truth box is *covered* when at least one anchor reaches IoU >= the matcher's
foreground threshold (``MODEL.RETINANET.IOU_THRESHOLDS[-1]``) with it. Boxes are taken
after the resize the data pipeline applies (``INPUT.MIN_SIZE_*`` / ``MAX_SIZE_*``) and
anchors come from the model's own anchor generator for the padded image size, with the
feature-map sizes the backbone produces (``output_shape()`` strides).

* :func:`anchor_coverage` -> :class:`AnchorCoverageReport` (overall and per box size).
* :func:`suggest_anchors` searches ``SIZES`` / ``OCTAVE_SCALES`` / ``ASPECT_RATIOS`` of
  :class:`~retinakit.modeling.DefaultAnchorGenerator` with the same number of anchors per
  location: k-means (1 - IoU distance) for the aspect ratios, a grid search over the scale
  family ``size_l = a * stride_l``, ``octave_j = 2^(j * d)``, then a local search.
* :func:`check_anchor_coverage` is the one-call check a trainer can run at start.

Best IoUs are computed exactly in two ways: by brute force over every anchor of the
image (any anchor generator), or, for grid generators (``DefaultAnchorGenerator``), in
closed form: for a fixed anchor shape the overlap with a box is separable in x and y and
non-increasing in the distance from the aligned position, so the nearest grid centre in
each axis is the best one.

Modules: ``ground_truth`` (boxes as the anchors see them), ``anchor_setup`` (generator,
feature-map sizes), ``best_iou``, ``report``, ``coverage``, ``kmeans`` and ``search``.
"""
from __future__ import annotations

# AnchorSetup and best_iou_grid were importable from here before the split (not in __all__).
from .anchor_setup import AnchorSetup as AnchorSetup
from .best_iou import best_iou_bruteforce
from .best_iou import best_iou_grid as best_iou_grid
from .coverage import anchor_coverage, check_anchor_coverage
from .ground_truth import GroundTruth, collect_ground_truth
from .kmeans import kmeans_aspect_ratios
from .report import COCO_BUCKETS, FINE_EDGES, AnchorCoverageReport
from .search import AnchorSuggestion, suggest_anchors

__all__ = [
    "COCO_BUCKETS",
    "FINE_EDGES",
    "AnchorCoverageReport",
    "AnchorSuggestion",
    "GroundTruth",
    "anchor_coverage",
    "best_iou_bruteforce",
    "check_anchor_coverage",
    "collect_ground_truth",
    "kmeans_aspect_ratios",
    "suggest_anchors",
]
