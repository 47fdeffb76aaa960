"""Anchor-to-ground-truth matchers: ``MATCHER_REGISTRY``, ``IoUMatcher`` and ``ATSSMatcher``."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..config import CfgNode, ConfigError, configurable
from ..utils.registry import Registry
from .protocols import Matcher, MatchInputs

__all__ = ["MATCHER_REGISTRY", "ATSSMatcher", "IoUMatcher", "build_matcher", "check_matcher_anchor_counts", "min_train_anchor_counts"]

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
            raise ConfigError(
                "MODEL.RETINANET.IOU_LABELS needs one more entry than MODEL.RETINANET.IOU_THRESHOLDS: "
                f"got {list(labels)} and {list(thresholds)}."
            )
        if list(thresholds) != sorted(thresholds):
            raise ConfigError(f"MODEL.RETINANET.IOU_THRESHOLDS must be increasing, got {list(thresholds)}.")
        if any(lbl not in (-1, 0, 1) for lbl in labels):
            raise ConfigError(f"MODEL.RETINANET.IOU_LABELS entries must be -1, 0 or 1, got {list(labels)}.")
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


class ATSSMatcher:
    """Adaptive Training Sample Selection (Zhang et al., CVPR 2020).

    For each ground-truth box (``G`` of them):

    1. candidates: on every level, the ``topk`` anchors whose centres are nearest (L2) to the
       box centre (all anchors of a level that has fewer); equal distances are broken by the
       lower anchor index;
    2. IoU threshold = mean + standard deviation of the candidates' IoUs with the box. The
       standard deviation is the *unbiased* (sample, ``N - 1``) one, as ``torch.std`` in the
       authors' code; a box with a single candidate gets 0;
    3. positives: candidates with IoU >= threshold whose centre lies strictly inside the box.

    An anchor positive for several boxes goes to the one with the higher IoU (exact IoU ties:
    the lower box index). Every other anchor is background (label 0): as in the paper there is
    no ignore band. Crowd regions are handled by the meta-architecture, not here.

    Distances, IoUs and thresholds are computed in float64 whatever the input dtype (``G x R``
    values, small next to the network), so the decisions do not depend on float32 rounding.
    """

    @configurable
    def __init__(self, *, topk: int = 9) -> None:
        """
        Args:
            topk: candidates per level and ground-truth box (``MODEL.RETINANET.ATSS_TOPK``);
                with ``A`` anchors per location, ``topk = 9 * A`` takes the paper's 9 locations.
        """
        if isinstance(topk, bool) or not isinstance(topk, int) or topk <= 0:
            raise ConfigError(f"MODEL.RETINANET.ATSS_TOPK must be a positive integer (the paper uses 9), got {topk!r}.")
        self.topk = topk

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return dict(topk=cfg.MODEL.RETINANET.ATSS_TOPK)

    def check_num_anchors(self, num_anchors_per_level: Sequence[int], where: str = "") -> None:
        """Raise a ``ConfigError`` if a level has fewer than ``topk`` anchors.

        The meta-architecture calls it when it is built, with the anchors per level of the
        smallest training input (``where`` describes that input), so that a ``topk`` the
        model can never fill fails before training; smaller inputs at run time use all
        anchors of such a level.
        """
        short = [(i, n) for i, n in enumerate(num_anchors_per_level) if n < self.topk]
        if short:
            i, n = min(short, key=lambda x: x[1])
            raise ConfigError(
                f"MODEL.RETINANET.ATSS_TOPK = {self.topk} is larger than the {n} anchors of level {i}{where}: "
                f"set MODEL.RETINANET.ATSS_TOPK <= {n}, raise INPUT.MIN_SIZE_TRAIN, or drop that level "
                "(MODEL.RETINANET.IN_FEATURES and MODEL.ANCHOR_GENERATOR.SIZES)."
            )

    def match(self, inputs: MatchInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The :class:`Matcher` protocol: anchors per level ``[R_l, 4]`` and ``gt_boxes [G, 4]``
        -> ``matches [R]`` int64 (0 for background), ``labels [R]`` int8 (1 foreground, 0 background).

        Works on the ``C = sum_l min(topk, R_l)`` candidates of each box (``[G, C]``), not on
        the full ``[G, R]`` IoU matrix; only the centre distances are computed for every anchor.
        """
        anchors, gt = inputs.all_anchors(), inputs.gt_boxes
        num = anchors.shape[0]
        if gt.shape[0] == 0 or num == 0:
            return anchors.new_zeros(num, dtype=torch.int64), anchors.new_zeros(num, dtype=torch.int8)
        # float64 geometry: centres and squared distances of float32 boxes are then exact, so
        # anchors that are equidistant on paper tie exactly and the lower index wins.
        anchors, gt = anchors.double(), gt.double()
        idx = self._candidates(anchors, gt, inputs.num_anchors_per_level())  # [G, C]
        cand = anchors[idx]  # [G, C, 4]
        iou = _paired_iou(gt[:, None, :].expand_as(cand), cand)  # [G, C]
        centres = (cand[..., :2] + cand[..., 2:]) / 2
        inside = ((centres > gt[:, None, :2]) & (centres < gt[:, None, 2:])).all(dim=-1)
        positive = inside & (iou >= self._thresholds(iou)[:, None])
        return _assign(idx, iou, positive, num)

    def _candidates(self, anchors: torch.Tensor, gt: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """``anchors [R, 4]``, ``gt [G, 4]`` -> ``[G, C]`` indices into ``anchors``: per level the
        ``min(topk, R_l)`` anchors whose centres are nearest the box centre."""
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        gt_centres = (gt[:, :2] + gt[:, 2:]) / 2
        out, start = [], 0
        for n in counts:
            if n > 0:
                d = gt_centres[:, None, :] - centres[None, start:start + n, :]  # [G, n, 2]
                dist = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]  # squared L2: same order, exact ties
                out.append(_nearest_k(dist, min(self.topk, n)) + start)
            start += n
        return torch.cat(out, dim=1)

    @staticmethod
    def _thresholds(iou: torch.Tensor) -> torch.Tensor:
        """``iou [G, C]`` -> ``[G]`` mean + sample std (``N - 1``; 0 when ``C == 1``) of each row.
        Computed about the row's largest IoU, so that equal IoUs give exactly that IoU."""
        pivot = iou.max(dim=1, keepdim=True).values
        shifted = iou - pivot
        mean = shifted.mean(dim=1, keepdim=True)
        var = ((shifted - mean) ** 2).sum(dim=1) / max(iou.shape[1] - 1, 1)
        return (pivot + mean)[:, 0] + var.sqrt()


def _nearest_k(dist: torch.Tensor, k: int) -> torch.Tensor:
    """``dist [G, n]``, ``1 <= k <= n`` -> ``[G, k]`` column indices of each row's ``k`` smallest
    entries, equal distances taken in increasing column (anchor) order (deterministic)."""
    kth = dist.topk(k, dim=1, largest=False).values[:, -1:]  # [G, 1]
    closer = dist < kth
    tied = dist == kth
    room = k - closer.sum(dim=1, keepdim=True)
    chosen = closer | (tied & (tied.cumsum(dim=1) <= room))  # exactly k per row
    return chosen.to(torch.uint8).topk(k, dim=1).indices


def _paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of corresponding boxes ``a [..., 4]``, ``b [..., 4]`` (XYXY) -> ``[...]``; 0 for an empty union."""
    wh = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))


def _assign(idx: torch.Tensor, iou: torch.Tensor, positive: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor winner among the boxes it is positive for: the highest IoU, then the lowest box.

    ``idx``, ``iou``, ``positive``: ``[G, C]`` candidate anchor indices, IoUs and decisions ->
    ``matches [num]`` int64 (0 where no box), ``labels [num]`` int8.
    """
    g = idx.shape[0]
    flat, vals = idx.reshape(-1), torch.where(positive, iou, -1.0).reshape(-1)
    best = vals.new_full((num,), -1.0).scatter_reduce(0, flat, vals, "amax")
    box = torch.arange(g, device=idx.device)[:, None].expand_as(idx).reshape(-1)
    wins = positive.reshape(-1) & (vals == best[flat])
    matches = idx.new_full((num,), g).scatter_reduce(0, flat, torch.where(wins, box, g), "amin")
    labels = matches < g
    return torch.where(labels, matches, 0), labels.to(torch.int8)


MATCHER_REGISTRY.register(ATSSMatcher)


def build_matcher(cfg: CfgNode) -> Matcher:
    """Build ``cfg.MODEL.RETINANET.MATCHER_NAME`` (checked against the :class:`Matcher` protocol).

    A matcher that needs a minimum number of anchors per level may offer
    ``check_num_anchors(num_anchors_per_level, where)`` (``ATSSMatcher`` does); the
    meta-architecture calls it with the smallest training input's counts when it is built.
    """
    return MATCHER_REGISTRY.build(cfg.MODEL.RETINANET.MATCHER_NAME, cfg)


def min_train_anchor_counts(
    cfg: CfgNode, strides: Sequence[int], anchors_per_location: Sequence[int], size_divisibility: int
) -> tuple[list[int], int] | None:
    """Anchors per level of the smallest training input, and that input's side.

    The smallest input is a square of side ``min(INPUT.MIN_SIZE_TRAIN)`` (capped by
    ``INPUT.MAX_SIZE_TRAIN``), padded to ``size_divisibility``; level ``l`` then has
    ``ceil(padded / stride_l) ** 2`` locations of ``anchors_per_location[l]`` anchors.
    ``None`` when the config does not fix a training size (non-positive sizes).
    """
    sizes = [int(s) for s in cfg.INPUT.MIN_SIZE_TRAIN]
    if not sizes or min(sizes) <= 0:
        return None
    side = min(min(sizes), int(cfg.INPUT.MAX_SIZE_TRAIN)) if cfg.INPUT.MAX_SIZE_TRAIN > 0 else min(sizes)
    padded = math.ceil(side / size_divisibility) * size_divisibility if size_divisibility > 1 else side
    return [int(a) * math.ceil(padded / int(s)) ** 2 for s, a in zip(strides, anchors_per_location)], side


def check_matcher_anchor_counts(
    matcher: Any, cfg: CfgNode, strides: Sequence[int], anchors_per_location: Sequence[int], size_divisibility: int
) -> None:
    """Let a matcher that offers ``check_num_anchors`` (``ATSSMatcher``) reject, when the model
    is built, a config whose smallest training input has too few anchors on some level."""
    check = getattr(matcher, "check_num_anchors", None)
    if not callable(check) or not strides or not all(strides):
        return
    smallest = min_train_anchor_counts(cfg, strides, anchors_per_location, size_divisibility)
    if smallest is not None:
        counts, side = smallest
        check(counts, where=f" (stride {strides[counts.index(min(counts))]}) for the smallest training input, {side}x{side} px")
