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
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config.config import ConfigError, import_custom_modules
from ..structures import pairwise_iou

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

logger = logging.getLogger(__name__)

# Box size = sqrt(area) in pixels of the resized image the anchors see.
COCO_BUCKETS: tuple[tuple[str, float, float], ...] = (("small", 0.0, 32.0), ("medium", 32.0, 96.0), ("large", 96.0, math.inf))
FINE_EDGES: tuple[float, ...] = (0, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, math.inf)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run many tiny tensor ops on one intra-op thread (much faster than waking a pool), then restore."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------- data
@dataclass
class GroundTruth:
    """Non-crowd GT boxes after resizing, with the padded input size of their image.

    ``boxes [G, 4]`` XYXY float32 in resized-image pixels; ``padded_hw [G, 2]`` int64.
    """

    boxes: torch.Tensor
    padded_hw: torch.Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def _short_sizes(cfg: Any, mode: str) -> tuple[list[int], int]:
    if mode == "test":
        return [int(cfg.INPUT.MIN_SIZE_TEST)], int(cfg.INPUT.MAX_SIZE_TEST)
    if mode != "train":
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}.")
    sizes = [int(s) for s in cfg.INPUT.MIN_SIZE_TRAIN]
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range" and len(sizes) == 2:
        sizes = sorted({sizes[0], (sizes[0] + sizes[1]) // 2, sizes[1]})
    return sizes, int(cfg.INPUT.MAX_SIZE_TRAIN)


def _resized_hw(h: int, w: int, short: int, max_size: int, in_model: bool) -> tuple[int, int]:
    """Output size of the data pipeline's resize, or of the model's (``INPUT.RESIZE_IN_MODEL``)."""
    if short <= 0:
        return h, w
    if not in_model:
        from ..data.transforms import resized_shape

        return resized_shape(h, w, short, max_size)
    scale = min(short / min(h, w), max_size / max(h, w))
    if math.isclose(scale, 1.0):
        return h, w
    return math.floor(h * scale), math.floor(w * scale)


def collect_ground_truth(
    cfg: Any, dataset_dicts: Sequence[dict[str, Any]], size_divisibility: int, *, mode: str = "train",
    max_images: int | None = None, seed: int = 0,
) -> GroundTruth:
    """GT boxes of ``dataset_dicts`` (XYXY, ``iscrowd`` left out) at every input size of ``mode``.

    ``mode="train"``: each image once per ``INPUT.MIN_SIZE_TRAIN`` choice (low/middle/high
    for "range" sampling); ``"test"``: at ``MIN_SIZE_TEST``. Flips are ignored. With
    ``max_images`` a fixed random subset (``seed``) of the images is used.
    """
    dicts = list(dataset_dicts)
    if max_images is not None and 0 < max_images < len(dicts):
        idx = torch.randperm(len(dicts), generator=torch.Generator().manual_seed(seed))[:max_images]
        dicts = [dicts[i] for i in sorted(idx.tolist())]
    shorts, max_size = _short_sizes(cfg, mode)
    d = max(int(size_divisibility), 1)
    boxes, padded = [], []
    for rec in dicts:
        h, w = rec.get("height"), rec.get("width")
        if not h or not w:
            raise ValueError(f"Dataset dict of image {rec.get('image_id', '?')} has no height/width; load it with retinakit.data.")
        annos = [a for a in rec.get("annotations", []) if not a.get("iscrowd", 0)]
        if not annos:
            continue
        b = torch.tensor([a["bbox"] for a in annos], dtype=torch.float64).reshape(-1, 4)
        for short in shorts:
            oh, ow = _resized_hw(int(h), int(w), short, max_size, bool(cfg.INPUT.RESIZE_IN_MODEL))
            r = b * torch.tensor([ow / w, oh / h, ow / w, oh / h], dtype=torch.float64)
            r[:, 0::2] = r[:, 0::2].clamp(0, ow)
            r[:, 1::2] = r[:, 1::2].clamp(0, oh)
            r = r[(r[:, 2] > r[:, 0]) & (r[:, 3] > r[:, 1])]
            boxes.append(r.float())
            padded.append(torch.tensor([[-(-oh // d) * d, -(-ow // d) * d]], dtype=torch.int64).expand(len(r), 2))
    if not boxes:
        return GroundTruth(torch.zeros(0, 4), torch.zeros(0, 2, dtype=torch.int64))
    return GroundTruth(torch.cat(boxes), torch.cat(padded))


# ----------------------------------------------------------------------------- model parts
@dataclass
class AnchorSetup:
    """The model's anchor generator and how to get feature-map sizes for an input size."""

    generator: torch.nn.Module
    backbone: torch.nn.Module
    in_features: list[str]
    strides: list[int]
    size_divisibility: int
    _grids: dict[tuple[int, int], list[tuple[int, int]]] = field(default_factory=dict)
    _meta: torch.nn.Module | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> AnchorSetup:
        from .anchor_generator import build_anchor_generator
        from .backbone import build_backbone

        import_custom_modules(cfg.CUSTOM_IMPORTS)
        backbone = build_backbone(cfg).eval()
        shapes = backbone.output_shape()
        in_features = list(cfg.MODEL.RETINANET.IN_FEATURES)
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ConfigError(f"MODEL.RETINANET.IN_FEATURES names {missing}; the backbone produces {list(shapes)}.")
        feature_shapes = [shapes[f] for f in in_features]
        generator = build_anchor_generator(cfg, feature_shapes)
        return cls(generator, backbone, in_features, [int(s.stride or 0) for s in feature_shapes], int(backbone.size_divisibility))

    def grid_sizes(self, padded_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Feature-map ``(h, w)`` per level for an input of ``padded_hw`` (shape-only forward on "meta")."""
        key = (int(padded_hw[0]), int(padded_hw[1]))
        if key not in self._grids:
            try:
                if self._meta is None:
                    self._meta = copy.deepcopy(self.backbone).to("meta")
                with torch.no_grad():
                    out = self._meta(torch.empty(1, 3, *key, device="meta"))
            except Exception:  # noqa: BLE001 - a backbone whose ops have no meta kernel: run it for real once
                with torch.no_grad():
                    out = self.backbone(torch.zeros(1, 3, *key))
            self._grids[key] = [tuple(int(v) for v in out[f].shape[-2:]) for f in self.in_features]  # type: ignore[misc]
        return self._grids[key]

    def anchors(self, padded_hw: tuple[int, int], generator: Any = None) -> torch.Tensor:
        """All anchors ``[A, 4]`` (XYXY) of an input of ``padded_hw``, from the anchor generator."""
        feats = [torch.empty(1, 0, h, w) for h, w in self.grid_sizes(padded_hw)]
        return torch.cat((generator or self.generator)(feats, tuple(padded_hw)))


def _grid_tensors(setup: AnchorSetup, gt: GroundTruth, strides_from_image: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per box and level: grid ``[G, L, 2]`` (h, w) and stride ``[G, L, 2]`` (y, x)."""
    n_lvl = len(setup.strides)
    grid = torch.zeros(len(gt), n_lvl, 2)
    stride = torch.zeros(len(gt), n_lvl, 2)
    if len(gt) == 0:
        return grid, stride
    sizes, inverse = torch.unique(gt.padded_hw, dim=0, return_inverse=True)
    for i, (ph, pw) in enumerate(sizes.tolist()):
        g = torch.tensor(setup.grid_sizes((ph, pw)), dtype=torch.float32)
        s = g.new_tensor([[ph, pw]]) // g if strides_from_image else g.new_tensor(setup.strides)[:, None].expand(-1, 2)
        grid[inverse == i] = g
        stride[inverse == i] = s
    return grid, stride


# ----------------------------------------------------------------------------- best IoU
def best_iou_bruteforce(boxes: torch.Tensor, anchors: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
    """Best IoU of each box ``[G, 4]`` over all ``anchors [A, 4]`` -> ``[G]`` (0 without anchors)."""
    best = torch.zeros(boxes.shape[0])
    if boxes.shape[0] == 0 or anchors.shape[0] == 0:
        return best
    step = max(chunk // boxes.shape[0], 1)
    for a in anchors.split(step):
        best = torch.maximum(best, pairwise_iou(boxes.float(), a.float()).max(dim=1).values)
    return best


def _axis_overlap(lo: torch.Tensor, hi: torch.Tensor, a_lo: torch.Tensor, a_hi: torch.Tensor, n: torch.Tensor,
                  stride: torch.Tensor, offset: float) -> torch.Tensor:
    """Largest overlap along one axis between ``[lo, hi]`` (``[G, 1]``) and the anchors
    ``[p + a_lo, p + a_hi]`` (``[1, A]``) over grid centres ``p = (i + offset) * stride``, ``0 <= i < n``."""
    ideal = (lo + hi - a_lo - a_hi) / 2  # centre position that aligns both intervals
    i = torch.round(ideal / stride - offset).clamp(min=0)
    i = torch.minimum(i, n - 1)
    p = (i + offset) * stride
    return (torch.minimum(hi, p + a_hi) - torch.maximum(lo, p + a_lo)).clamp(min=0)


def best_iou_grid(boxes: torch.Tensor, grid: torch.Tensor, stride: torch.Tensor, cells: Sequence[torch.Tensor],
                  offset: float) -> torch.Tensor:
    """Exact best IoU of each box with grid anchors, in closed form.

    ``boxes [G, 4]``; per box and level ``grid [G, L, 2]`` (h, w) and ``stride [G, L, 2]``
    (y, x); ``cells[l] [A_l, 4]``: anchors of level ``l`` relative to their centre.
    Returns ``[G]``.
    """
    best = torch.zeros(boxes.shape[0])
    if boxes.shape[0] == 0:
        return best
    b = boxes.float()
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[:, None]
    for lvl, cell in enumerate(cells):
        c = cell.float()[None]
        ix = _axis_overlap(b[:, 0:1], b[:, 2:3], c[..., 0], c[..., 2], grid[:, lvl, 1:2], stride[:, lvl, 1:2], offset)
        iy = _axis_overlap(b[:, 1:2], b[:, 3:4], c[..., 1], c[..., 3], grid[:, lvl, 0:1], stride[:, lvl, 0:1], offset)
        inter = ix * iy
        area_a = (c[..., 2] - c[..., 0]) * (c[..., 3] - c[..., 1])
        iou = inter / (area_b + area_a - inter).clamp(min=1e-12)
        best = torch.maximum(best, iou.max(dim=1).values)
    return best


# ----------------------------------------------------------------------------- report
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
        buckets = [("all", 0.0, math.inf)] + list(COCO_BUCKETS)
        buckets += [(f"[{lo:g}, {hi:g})" if hi != math.inf else f">= {lo:g}", lo, hi) for lo, hi in zip(FINE_EDGES[:-1], FINE_EDGES[1:])]  # noqa: RUF007 - Python 3.9
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


def _fg_threshold(cfg: Any) -> float:
    th = list(cfg.MODEL.RETINANET.IOU_THRESHOLDS)
    if not th:
        raise ConfigError("MODEL.RETINANET.IOU_THRESHOLDS is empty; anchor coverage needs the foreground threshold.")
    return float(th[-1])


def _is_grid_generator(gen: Any) -> bool:
    from .anchor_generator import DefaultAnchorGenerator

    return isinstance(gen, DefaultAnchorGenerator)


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


# ----------------------------------------------------------------------------- search
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


def _unit_shape_iou(log_r: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """IoU of centred unit-area boxes with log aspect ratios ``log_r [G]`` and ``centres [K]`` -> ``[G, K]``."""
    h1, w1 = torch.exp(log_r / 2)[:, None], torch.exp(-log_r / 2)[:, None]
    h2, w2 = torch.exp(centres / 2)[None], torch.exp(-centres / 2)[None]
    inter = torch.minimum(h1, h2) * torch.minimum(w1, w2)
    return inter / (2 - inter)


def kmeans_aspect_ratios(boxes: torch.Tensor, k: int, iters: int = 30) -> list[float]:
    """``k`` aspect ratios (h/w, sorted) by k-means of the box shapes with distance 1 - IoU.

    Boxes are normalised to unit area and centred, so the IoU depends on the shape only.
    Deterministic: centres start at the quantiles of log(h/w).
    """
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6).double()
    log_r = torch.log(wh[:, 1] / wh[:, 0])
    if log_r.numel() == 0:
        return [1.0] * k
    centres = torch.quantile(log_r, (torch.arange(k, dtype=torch.float64) + 0.5) / k)
    for _ in range(iters):
        assign = _unit_shape_iou(log_r, centres).argmax(dim=1)
        new = torch.stack([log_r[assign == j].median() if (assign == j).any() else centres[j] for j in range(k)])
        if torch.allclose(new, centres):
            break
        centres = new
    return sorted(float(v) for v in torch.exp(centres))


class _Objective:
    """coverage + ``iou_weight`` * mean best IoU of the GT boxes for candidate parameters (grid path)."""

    def __init__(self, setup: AnchorSetup, gt: GroundTruth, threshold: float, iou_weight: float) -> None:
        gen: Any = setup.generator
        self.setup, self.gt, self.threshold, self.iou_weight = setup, gt, threshold, iou_weight
        self.grid, self.stride = _grid_tensors(setup, gt, gen.strides_from_image)
        self.evals = 0

    def generator(self, sizes: Sequence[Sequence[float]], octaves: Sequence[float], ratios: Sequence[Sequence[float]]):
        from .anchor_generator import DefaultAnchorGenerator

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
        return sizes, [1.0] + e[k:k + n_o - 1], [e[k + n_o - 1:]]

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
