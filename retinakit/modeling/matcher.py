"""Anchor-to-ground-truth matchers: ``MATCHER_REGISTRY`` and ``IoUMatcher``."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..config import CfgNode, configurable
from ..utils.registry import Registry
from .protocols import Matcher, MatchInputs

__all__ = ["MATCHER_REGISTRY", "IoUMatcher", "build_matcher"]

MATCHER_REGISTRY = Registry(
    "MATCHER",
    doc="""Matchers. Entries are called as ``cls(cfg)`` (or with keyword arguments) and return an
    object meeting :class:`retinakit.modeling.protocols.Matcher` (checked when built), the one
    call the meta-architecture makes:

    ``match(inputs: MatchInputs) -> (matches [R] int64, labels [R] int8)``

    ``inputs.anchors`` are the image's anchors per level (``[R_l, 4]`` XYXY), ``inputs.gt_boxes``
    its ``[G, 4]`` ground-truth boxes (crowd boxes excluded); ``inputs.iou()`` gives the ``[G, R]``
    IoU matrix. ``matches`` indexes ``gt_boxes`` (any value when ``G == 0``); ``labels``:
    1 foreground, 0 background, -1 ignore. An IoU-threshold matcher reads ``inputs.iou()``; an
    ATSS-style matcher reads the levels and anchor centres.
    """,
    protocol=Matcher,
)


class IoUMatcher:
    """Threshold-based matching with an ignore band and optional low-quality matches.

    With thresholds ``[t0, t1]`` and labels ``[l0, l1, l2]``: IoU < t0 -> l0,
    t0 <= IoU < t1 -> l1, IoU >= t1 -> l2. With ``allow_low_quality_matches`` every
    anchor whose IoU with some ground truth equals that ground truth's best (positive)
    IoU becomes foreground, so that no box is left without an anchor.
    """

    @configurable
    def __init__(
        self,
        *,
        thresholds: Sequence[float] = (0.4, 0.5),
        labels: Sequence[int] = (0, -1, 1),
        allow_low_quality_matches: bool = True,
    ) -> None:
        """
        Args:
            thresholds: increasing IoU band edges ``[t0, ..., t_{B-1}]`` applied to each anchor's
                best quality over the ``G`` boxes (a column max of ``quality [G, R]``).
            labels: ``B + 1`` labels, one per band, each 1 (foreground), 0 (background) or -1 (ignore).
            allow_low_quality_matches: also make foreground, for every box, the anchors whose
                quality equals that box's best (positive) quality.
        """
        if len(labels) != len(thresholds) + 1:
            raise ValueError(f"IOU_LABELS needs one more entry than IOU_THRESHOLDS: got {list(labels)} and {list(thresholds)}.")
        if list(thresholds) != sorted(thresholds):
            raise ValueError(f"IOU_THRESHOLDS must be increasing, got {list(thresholds)}.")
        if any(lbl not in (-1, 0, 1) for lbl in labels):
            raise ValueError(f"IOU_LABELS entries must be -1, 0 or 1, got {list(labels)}.")
        self.thresholds: list[float] = [float("-inf"), *map(float, thresholds), float("inf")]
        self.labels = list(labels)
        self.allow_low_quality_matches = allow_low_quality_matches

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        r = cfg.MODEL.RETINANET
        return dict(thresholds=r.IOU_THRESHOLDS, labels=r.IOU_LABELS, allow_low_quality_matches=r.ALLOW_LOW_QUALITY_MATCHES)

    def match(self, inputs: MatchInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The :class:`Matcher` protocol: thresholds ``inputs.iou() [G, R]`` -> ``matches [R]``, ``labels [R]``."""
        return self(inputs.iou())

    def __call__(self, quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``quality [G, A]`` (any match quality, e.g. IoU) -> ``matches [A]`` (int64), ``labels [A]`` (int8)."""
        num_anchors = quality.shape[1]
        if quality.shape[0] == 0:
            matches = quality.new_zeros(num_anchors, dtype=torch.int64)
            return matches, quality.new_full((num_anchors,), self.labels[0], dtype=torch.int8)
        best, matches = quality.max(dim=0)
        labels = matches.new_full((num_anchors,), 1, dtype=torch.int8)
        for lbl, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            labels[(best >= low) & (best < high)] = lbl
        if self.allow_low_quality_matches:
            best_per_gt = quality.max(dim=1).values
            hit = (quality == best_per_gt[:, None]) & (best_per_gt[:, None] > 0)
            labels[hit.any(dim=0)] = 1
        return matches, labels


MATCHER_REGISTRY.register(IoUMatcher)


def build_matcher(cfg: CfgNode) -> Matcher:
    """Build ``cfg.MODEL.RETINANET.MATCHER_NAME`` (checked against the :class:`Matcher` protocol)."""
    return MATCHER_REGISTRY.build(cfg.MODEL.RETINANET.MATCHER_NAME, cfg)
