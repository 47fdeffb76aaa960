"""Anchor coverage of a dataset and a search for anchors that cover it better.

A ground-truth box is *covered* when at least one anchor reaches IoU >= the matcher's
foreground threshold (``MODEL.RETINANET.IOU_THRESHOLDS[-1]``) with it. Boxes are taken
after the resize the data pipeline (or, with ``INPUT.RESIZE_IN_MODEL``, the model's
preprocessor) applies (``INPUT.MIN_SIZE_*`` / ``MAX_SIZE_*``), and anchors come from the
anchor generator of the model that ``build_model`` assembles, for the padded image size,
with the feature-map sizes its backbone produces (``output_shape()`` strides).

* :func:`anchor_coverage` -> :class:`AnchorCoverageReport` (overall and per box size).
* :func:`suggest_anchors` searches ``SIZES`` / ``OCTAVE_SCALES`` / ``ASPECT_RATIOS`` of
  :class:`~retinakit.modeling.DefaultAnchorGenerator` with the same number of anchors per
  location: k-means (1 - IoU distance) for the aspect ratios, a grid search over the scale
  family ``size_l = a * stride_l``, ``octave_j = 2^(j * d)``, then a local search.
* :func:`check_anchor_coverage` is the one-call check a trainer can run at start.
* :func:`advise_levels` -> :class:`LevelAdvice`: the configured pyramid levels against adding P2
  and dropping top levels no box needs (coverage, anchors per image, GFLOPs), with a documented
  recommendation rule and the config overrides of the recommended levels.

Best IoUs are computed exactly in two ways: by brute force over every anchor of the
image (any anchor generator), or, for grid generators (``DefaultAnchorGenerator``), in
closed form (see :mod:`.iou`).

Modules: ``inputs`` (boxes as the anchors see them; the model's anchor generator and
feature-map sizes), ``iou`` (best IoU, k-means of box shapes), ``coverage`` (report and
coverage), ``search`` (anchor search) and ``levels`` (level advice).
"""
from __future__ import annotations

from .coverage import COCO_BUCKETS, FINE_EDGES, AnchorCoverageReport, anchor_coverage, check_anchor_coverage
from .inputs import AnchorSetup, GroundTruth, collect_ground_truth
from .iou import best_iou_bruteforce, best_iou_grid, kmeans_aspect_ratios
from .levels import LevelAdvice, LevelOption, advise_levels
from .search import AnchorSuggestion, suggest_anchors

__all__ = [
    "COCO_BUCKETS",
    "FINE_EDGES",
    "AnchorCoverageReport",
    "AnchorSetup",
    "AnchorSuggestion",
    "GroundTruth",
    "LevelAdvice",
    "LevelOption",
    "advise_levels",
    "anchor_coverage",
    "best_iou_bruteforce",
    "best_iou_grid",
    "check_anchor_coverage",
    "collect_ground_truth",
    "kmeans_aspect_ratios",
    "suggest_anchors",
]
