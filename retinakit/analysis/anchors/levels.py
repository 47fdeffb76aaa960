"""Pyramid-level advice: the configured head levels against the neighbouring options (add a
stride-4 level P2; drop top levels that no box needs), each measured with the anchor generator
that ``build_model`` assembles for it: coverage overall and per box size, anchors per image, and
the cost in GFLOPs at the test size (``torch.utils.flop_counter`` on the real head and backbone,
run on the "meta" device). :func:`advise_levels` -> :class:`LevelAdvice`.

Recommendation rule (:func:`_recommend`; ``min_gain`` = 0.05, ``min_gain_per_gflop`` = 0 by default):

1. *lossless* options are the configured levels and the drops that leave every box covered
   that the configured levels cover; the cheapest of them (model GFLOPs) is the fallback;
2. an option that adds a level qualifies when it raises the coverage of small boxes (sqrt(area)
   < 32 px after resizing) by at least ``min_gain`` over the configured levels, lowers no
   overall coverage, and gains at least ``min_gain_per_gflop`` per extra model GFLOP. So a
   finer level is never recommended when the configured levels already cover (all but
   ``min_gain`` of) the small boxes, nor on a dataset without small boxes;
3. among qualifying options, the one with the largest small-box gain per extra GFLOP wins
   (no extra cost counts as infinitely efficient); without any, the fallback of step 1.
"""
from __future__ import annotations

import copy
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ...config.config import ConfigError
from ...modeling import build_backbone
from .coverage import AnchorCoverageReport, _coverage_of
from .inputs import (
    AnchorSetup,
    GroundTruth,
    _fg_threshold,
    _grid_tensors,
    _is_grid_generator,
    _resized_hw,
    build_cpu_model,
    collect_ground_truth,
)
from .iou import _one_thread, best_iou_grid
from .search import _local_search, _Objective, _round

__all__ = ["LevelAdvice", "LevelOption", "advise_levels"]

_SMALL = 32.0  # COCO "small": sqrt(area) < 32 px (after resizing)
_BUILD_ERRORS = (ValueError, KeyError, TypeError, AttributeError)  # what a registered builder raises for a bad setting


@dataclass
class LevelOption:
    """One set of head levels, measured.

    ``overrides``: dotted config key -> value (what makes this option from the config);
    ``report``: coverage of every GT box; ``best_level_boxes``: boxes whose best anchor lies on each
    level; ``lost_boxes``: boxes its parent option covers and this one does not; GFLOPs per image
    at the test size.
    """

    name: str
    head_in_features: list[str]
    strides: list[int]
    sizes: list[list[float]]
    ratios: list[list[float]]
    overrides: dict[str, Any]
    report: AnchorCoverageReport
    anchors_per_image: int
    head_gflops: float
    model_gflops: float
    best_level_boxes: dict[str, int]
    lost_boxes: int = 0
    adds_level: bool = False
    extra_head_gflops: float = 0.0
    extra_model_gflops: float = 0.0

    def small_coverage(self) -> float:
        """Coverage of the boxes under 32 px (nan without such boxes)."""
        return {r[0]: r[2] for r in self.report.rows()}["small"]

    def to_json(self) -> dict[str, Any]:
        r = self.report
        return {
            "name": self.name, "head_in_features": self.head_in_features, "strides": self.strides, "sizes": self.sizes,
            "coverage": r.coverage, "small_coverage": self.small_coverage(), "boxes": r.num_boxes,
            "buckets": [{"bucket": n, "boxes": c, "coverage": cov, "mean_best_iou": m} for n, c, cov, m in r.rows()],
            "anchors_per_image": self.anchors_per_image, "head_gflops": self.head_gflops,
            "extra_head_gflops": self.extra_head_gflops, "model_gflops": self.model_gflops,
            "extra_model_gflops": self.extra_model_gflops, "best_level_boxes": self.best_level_boxes,
            "lost_boxes": self.lost_boxes, "adds_level": self.adds_level, "overrides": self.overrides,
        }


@dataclass
class LevelAdvice:
    """The measured options, the recommended one and why; ``p2_note`` says why there is no P2 option ("" if there is)."""

    options: list[LevelOption]
    recommended: LevelOption
    reason: str
    p2_note: str
    test_size: tuple[int, int]
    rule: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """One row per option: coverage overall / small / per fine size bin, anchors, GFLOPs."""
        from tabulate import tabulate

        bins = [n for n, c, _, _ in self.options[0].report.rows()[4:] if c]
        headers = ["levels", "coverage", "small", *bins, "anchors/img", "head GFLOPs (+)", "model GFLOPs (+)", "lost boxes"]
        rows = []
        for o in self.options:
            cov = {n: c for n, _, c, _ in o.report.rows()}
            mark = " *" if o is self.recommended else ""
            rows.append([o.name + mark, o.report.coverage, o.small_coverage(), *[cov[b] for b in bins], o.anchors_per_image,
                         f"{o.head_gflops:.2f} ({o.extra_head_gflops:+.2f})", f"{o.model_gflops:.2f} ({o.extra_model_gflops:+.2f})",
                         o.lost_boxes])
        return tabulate(rows, headers=headers, floatfmt=".3f", missingval="-")

    def overrides(self) -> list[str]:
        """The recommended option as ``KEY VALUE`` command-line overrides."""
        out: list[str] = []
        for k, v in self.recommended.overrides.items():
            out += [k, json.dumps(v).replace(" ", "")]
        return out

    def yaml(self) -> str:
        """The recommended option as YAML lines to paste into a config file."""
        lines: list[str] = []
        prev: list[str] = []
        for key, value in self.recommended.overrides.items():
            parts = key.split(".")
            common = 0
            while common < min(len(prev), len(parts) - 1) and prev[common] == parts[common]:
                common += 1
            lines += ["  " * i + f"{p}:" for i, p in enumerate(parts[:-1]) if i >= common]
            lines.append("  " * (len(parts) - 1) + f"{parts[-1]}: {json.dumps(value)}")
            prev = parts[:-1]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "test_size": list(self.test_size), "rule": self.rule, "p2_available": not self.p2_note, "p2_note": self.p2_note,
            "options": [o.to_json() for o in self.options], "recommended": self.recommended.name, "reason": self.reason,
            "overrides": self.recommended.overrides, "yaml": self.yaml(),
        }


# ----------------------------------------------------------------------------- the option's model
@dataclass
class _Built:
    """A built option: its config, model, anchor setup and GT boxes (at its size divisibility)."""

    cfg: Any
    model: Any
    setup: AnchorSetup
    gt: GroundTruth


def _build(cfg: Any, dicts: Sequence[dict[str, Any]], mode: str, max_images: int | None,
           gt_cache: dict[int, GroundTruth]) -> _Built:
    model: Any = build_cpu_model(cfg)
    setup = AnchorSetup.from_model(model, cfg)
    if setup.size_divisibility not in gt_cache:
        gt_cache[setup.size_divisibility] = collect_ground_truth(cfg, dicts, setup.size_divisibility, mode=mode, max_images=max_images)
    return _Built(cfg, model, setup, gt_cache[setup.size_divisibility])


def _with(cfg: Any, overrides: dict[str, Any]) -> Any:
    out = cfg.clone()
    out.defrost()
    out.merge_from_list([x for k, v in overrides.items() for x in (k, v)])
    return out


def _per_level_ratios(cfg: Any) -> bool:
    """Whether ``ASPECT_RATIOS`` gives one list per level (then options must rewrite it)."""
    r = list(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS)
    return bool(r) and isinstance(r[0], (list, tuple)) and len(r) > 1


def _level_overrides(cfg: Any, features: Sequence[str], sizes: list[list[float]], ratios: list[list[float]]) -> dict[str, Any]:
    """Head features and one size list per level (aspect ratios too when the config gives them per level)."""
    out: dict[str, Any] = {"MODEL.RETINANET.IN_FEATURES": list(features), "MODEL.ANCHOR_GENERATOR.SIZES": sizes}
    if _per_level_ratios(cfg):
        out["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"] = ratios
    return out


# ----------------------------------------------------------------------------- measurements
def _flops(module: torch.nn.Module, *args: Any) -> float:
    """GFLOPs of ``module(*args)`` counted by ``torch.utils.flop_counter`` (a multiply-add is 2 FLOPs)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*args)
    return counter.get_total_flops() / 1e9


def _cost(b: _Built, test_hw: tuple[int, int]) -> tuple[int, float, float]:
    """Anchors per image, head GFLOPs and model (backbone + FPN + head) GFLOPs at ``test_hw`` (meta device)."""
    backbone = copy.deepcopy(b.model.backbone).to("meta")
    x = torch.empty(1, len(b.cfg.MODEL.PIXEL_MEAN), *test_hw, device="meta")
    with torch.no_grad():
        feats = backbone(x)
    levels = [feats[f] for f in b.setup.in_features]
    head = copy.deepcopy(b.model.head).to("meta")
    head_gf = _flops(head, levels)
    model_gf = _flops(backbone, x) + head_gf
    anchors = sum(int(f.shape[-2]) * int(f.shape[-1]) * int(a) for f, a in zip(levels, b.setup.generator.num_anchors))
    return anchors, head_gf, model_gf


def _best_level_boxes(b: _Built) -> dict[str, int]:
    """How many boxes have their best anchor (closed form, per level) on each head level."""
    gen: Any = b.setup.generator
    grid, stride = _grid_tensors(b.setup, b.gt, gen.strides_from_image)
    with _one_thread():
        per = [best_iou_grid(b.gt.boxes, grid[:, i:i + 1], stride[:, i:i + 1], [gen.cell_anchors(i)], gen.offset)
               for i in range(len(b.setup.strides))]
    if not len(b.gt):
        return dict.fromkeys(b.setup.in_features, 0)
    best = torch.stack(per, 1).argmax(1)
    return {f: int((best == i).sum()) for i, f in enumerate(b.setup.in_features)}


def _measure(name: str, b: _Built, overrides: dict[str, Any], threshold: float, test_hw: tuple[int, int]) -> LevelOption:
    gen: Any = b.setup.generator
    report = _coverage_of(b.setup, b.gt, threshold, gen, "auto", name)
    anchors, head_gf, model_gf = _cost(b, test_hw)
    return LevelOption(name, list(b.setup.in_features), list(b.setup.strides), [list(s) for s in gen.sizes],
                       [list(r) for r in gen.aspect_ratios], overrides, report, anchors, head_gf, model_gf, _best_level_boxes(b))


def _lost(parent: LevelOption, child: LevelOption) -> int:
    """Boxes that ``parent`` covers and ``child`` does not (same GT boxes in the same order)."""
    p, c = parent.report, child.report
    return int(((p.best_iou >= p.threshold) & (c.best_iou < c.threshold)).sum())


def _test_size(cfg: Any, dicts: Sequence[dict[str, Any]], divisibility: int) -> tuple[int, int]:
    """Padded input size, at the test resize, of the most common image size of the dataset."""
    counts = Counter((int(d["height"]), int(d["width"])) for d in dicts if d.get("height") and d.get("width"))
    if not counts:
        raise ValueError("The dataset dicts have no height/width; load them with retinakit.data.")
    (h, w), _ = counts.most_common(1)[0]
    oh, ow = _resized_hw(h, w, int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST), bool(cfg.INPUT.RESIZE_IN_MODEL))
    d = max(int(divisibility), 1)
    return -(-oh // d) * d, -(-ow // d) * d


# ----------------------------------------------------------------------------- where a stride-4 level comes from
def _stride4_name_guess(shapes: dict[str, Any]) -> str | None:
    """The name a stride-4 output would have when the outputs are ``<prefix><n>`` with ``n - log2(stride)`` constant."""
    parsed = [(re.fullmatch(r"(.*?)(\d+)", n), s.stride) for n, s in shapes.items()]
    if not parsed or any(m is None or not s for m, s in parsed):
        return None
    prefixes = {m.group(1) for m, _ in parsed if m}
    offsets = {int(m.group(2)) - int(math.log2(s)) for m, s in parsed if m and s}
    if len(prefixes) != 1 or len(offsets) != 1:
        return None
    return f"{prefixes.pop()}{2 + offsets.pop()}"


def _out_feature_keys(cfg: Any, current: Sequence[str]) -> list[str]:
    """Config keys ``MODEL.<NODE>.<...>OUT_FEATURES`` that hold the bottom-up network's current outputs."""
    keys = []
    for node, sub in cfg.MODEL.items():
        if node in ("FPN", "RETINANET") or not hasattr(sub, "items"):
            continue
        for k, v in sub.items():
            if k.endswith("OUT_FEATURES") and isinstance(v, (list, tuple)) and set(v) == set(current):
                keys.append(f"MODEL.{node}.{k}")
    return keys


def _p2_source(cfg: Any, model: Any) -> tuple[dict[str, Any], str]:
    """The backbone/FPN overrides that give the FPN a stride-4 output, or ``({}, why not)``.

    Reads only ``output_shape()`` strides: the bottom-up network's stride-4 output if it has one,
    else the network rebuilt with one more output (the key listing its outputs is found by value,
    the name from its naming pattern) and kept only when that output reports stride 4.
    """
    backbone = model.backbone
    name = cfg.MODEL.BACKBONE.NAME
    if not hasattr(backbone, "bottom_up") or not hasattr(backbone, "in_features"):
        return {}, f"MODEL.BACKBONE.NAME {name!r} is not an FPN over a bottom-up network: its levels cannot be extended"
    if any(s.stride == 4 for s in backbone.output_shape().values()):
        return {}, ""  # the FPN already has a stride-4 output: the head only has to use it
    shapes = backbone.bottom_up.output_shape()
    fpn_in = list(backbone.in_features)
    four = [n for n, s in shapes.items() if s.stride == 4]
    if four:
        return {"MODEL.FPN.IN_FEATURES": [four[0], *fpn_in]}, ""
    strides = ", ".join(f"{n}: {s.stride}" for n, s in shapes.items())
    bottom = cfg.MODEL.FPN.BOTTOM_UP if name == "build_retinanet_fpn_backbone" else name
    guess = _stride4_name_guess(shapes)
    declared = getattr(backbone.bottom_up, "out_features_key", None)  # a backbone may name its key
    keys = list(dict.fromkeys([*([declared] if declared else []), *_out_feature_keys(cfg, list(shapes))]))
    tried = []
    for key in keys if guess else []:
        over = {key: [guess, *shapes], "MODEL.FPN.IN_FEATURES": [guess, *fpn_in]}
        try:
            probe = build_backbone(_with(cfg, over))
            ok = probe.bottom_up.output_shape()[guess].stride == 4  # type: ignore[union-attr,operator,index]
        except (*_BUILD_ERRORS, ConfigError) as e:
            tried.append(f"{key} with {guess!r}: {str(e).splitlines()[0]}")
            continue
        if ok:
            return over, ""
        tried.append(f"{key} with {guess!r}: not stride 4")
    detail = "; ".join(tried) if tried else (
        "no config key lists its outputs" if guess else "its output names do not show which one would be stride 4")
    kind = type(backbone.bottom_up).__name__
    return {}, f"backbone {bottom!r} ({kind}) has no stride-4 output (its outputs: {strides}; {detail}), so no P2 level can be added"


# ----------------------------------------------------------------------------- sizes of the new level
class _NewLevelSpace:
    """The search space of the sizes of level 0 only (log space), the other levels fixed: the
    ``unpack``/``allowed`` interface that :func:`search._local_search` moves in."""

    def __init__(self, fixed: list[list[float]], octaves: list[float], ratios: list[list[float]]) -> None:
        self.fixed, self.octaves, self.ratios = fixed, octaves, ratios

    def unpack(self, v: Sequence[float]) -> tuple[list[list[float]], list[float], list[list[float]]]:
        return [[math.exp(t) for t in v], *self.fixed], self.octaves, self.ratios

    def allowed(self, v: Sequence[float]) -> bool:
        """Sizes increasing within the level and not above the next level's smallest."""
        return all(a <= b for a, b in zip(v, v[1:])) and math.exp(v[-1]) <= min(self.fixed[0]) + 1e-6


def _search_new_level(b: _Built, threshold: float, fixed: list[list[float]], max_evals: int = 400) -> list[float]:
    """Sizes of the new finest level with the search of ``--suggest`` (coverage + 0.25 x mean best
    IoU): the family ``a * stride * 2^(k / n)`` over ``a`` in 1/4 .. 16, then its local search."""
    gen: Any = b.setup.generator
    n, stride = len(gen.sizes[0]), b.setup.strides[0]
    ratios = [list(r) for r in gen.aspect_ratios]
    space = _NewLevelSpace(fixed, list(gen.octave_scales), ratios)
    f = _Objective(b.setup, b.gt, threshold, 0.25)
    best, x = -1.0, [math.log(min(fixed[0]))] * n
    with _one_thread():
        for e in range(-8, 17):
            v = [math.log(2 ** (e / 4) * stride) + math.log(2) * k / n for k in range(n)]
            if space.allowed(v):
                score = f(*space.unpack(v))
                if score > best:
                    best, x = score, v
        if best < 0:
            best = f(*space.unpack(x))
        _, x = _local_search(f, space, x, best, max_evals)  # type: ignore[arg-type]
    return sorted(_round(math.exp(t)) for t in x)


# ----------------------------------------------------------------------------- options and the rule
def _drops(cfg: Any, parent: LevelOption, parent_over: dict[str, Any], make: Any) -> list[LevelOption]:
    """Drop 1, 2, ... top levels (at least 2 kept) while no box covered by ``parent`` is lost; the
    first lossy drop is measured too, to show what it costs."""
    out = []
    feats = parent.head_in_features
    for k in range(1, len(feats) - 1):
        n = len(feats) - k
        over = {**parent_over, **_level_overrides(cfg, feats[:n], parent.sizes[:n], parent.ratios[:n])}
        dropped = feats[-k:]
        opt = make(f"{parent.name}, drop {'-'.join(dropped)}", over)
        opt.lost_boxes = _lost(parent, opt)
        out.append(opt)
        if opt.lost_boxes:
            break
    return out


def _recommend(configured: LevelOption, options: list[LevelOption], min_gain: float,
               min_gain_per_gflop: float) -> tuple[LevelOption, str]:
    """The rule of the module docstring: ``(recommended option, reason)``."""
    lossless = [o for o in options if not o.adds_level and _lost(configured, o) == 0]
    base = min(lossless, key=lambda o: (o.model_gflops, -len(o.head_in_features)))
    small0 = configured.small_coverage()
    qualifying = []
    for o in options:
        if not o.adds_level or math.isnan(small0):
            continue
        gain, extra = o.small_coverage() - small0, o.model_gflops - configured.model_gflops
        per = math.inf if extra <= 0 else gain / extra
        if gain >= min_gain and o.report.coverage >= configured.report.coverage and per >= min_gain_per_gflop:
            qualifying.append((per, -o.model_gflops, o, gain, extra))
    if qualifying:
        per, _, best, gain, extra = max(qualifying, key=lambda t: (t[0], t[1]))
        return best, (f"small-box coverage {small0:.1%} -> {best.small_coverage():.1%} (+{gain:.1%}) for "
                      f"{extra:+.2f} model GFLOPs: the largest gain per GFLOP among options gaining >= {min_gain:.0%}")
    why = ("no small boxes" if math.isnan(small0) else
           f"no finer-level option raises small-box coverage ({small0:.1%}) by >= {min_gain:.0%}")
    if base is configured:
        return base, f"{why}; no top level can be dropped without losing a covered box: keep the configured levels"
    return base, f"{why}; the dropped levels cover no box that the others miss, saving {-base.extra_model_gflops:.2f} model GFLOPs"


def advise_levels(
    cfg: Any, dataset_dicts: Sequence[dict[str, Any]], *, mode: str = "train", max_images: int | None = 2000,
    min_gain: float = 0.05, min_gain_per_gflop: float = 0.0,
) -> LevelAdvice:
    """Measure the configured head levels, the drops of unneeded top levels, and P2 (with and
    without those drops); recommend one by the rule of this module (see its docstring).

    Every option is built as a model from ``cfg`` + its overrides, so its anchors are the real
    anchor generator's. The new P2 level gets its sizes from the ``--suggest`` search (the other
    levels keep the configured sizes). A ``ConfigError`` when the generator is not a
    ``DefaultAnchorGenerator`` (whose SIZES the options rewrite).
    """
    gt_cache: dict[int, GroundTruth] = {}
    base = _build(cfg, dataset_dicts, mode, max_images, gt_cache)
    gen: Any = base.setup.generator
    if not _is_grid_generator(gen):
        raise ConfigError(f"Level advice rewrites MODEL.ANCHOR_GENERATOR.SIZES of DefaultAnchorGenerator; "
                          f"MODEL.ANCHOR_GENERATOR.NAME is {cfg.MODEL.ANCHOR_GENERATOR.NAME!r}.")
    threshold = _fg_threshold(cfg)
    test_hw = _test_size(cfg, dataset_dicts, base.setup.size_divisibility)

    def make(name: str, over: dict[str, Any]) -> LevelOption:
        return _measure(name, _build(_with(cfg, over), dataset_dicts, mode, max_images, gt_cache), over, threshold, test_hw)

    feats = base.setup.in_features
    own = _level_overrides(cfg, feats, [list(s) for s in gen.sizes], [list(r) for r in gen.aspect_ratios])
    configured = _measure("configured", base, own, threshold, test_hw)
    options = [configured, *_drops(cfg, configured, {}, make)]
    p2_over, p2_note = _p2_source(cfg, base.model)
    if any(s == 4 for s in base.setup.strides):
        p2_note = "the configured levels already include stride 4"
    elif base.setup.strides[0] != 8 and not p2_note:
        p2_note = f"the finest configured level has stride {base.setup.strides[0]}, not 8: P2 is offered only next to P3"
    if not p2_note:
        options += _p2_options(cfg, base, p2_over, threshold, make, dataset_dicts, mode, max_images, gt_cache)
    for o in options:
        o.extra_head_gflops = o.head_gflops - configured.head_gflops
        o.extra_model_gflops = o.model_gflops - configured.model_gflops
    best, reason = _recommend(configured, options, min_gain, min_gain_per_gflop)
    rule = {"min_gain": min_gain, "min_gain_per_gflop": min_gain_per_gflop, "small_box_px": _SMALL}
    return LevelAdvice(options, best, reason, p2_note, test_hw, rule)


def _p2_options(cfg: Any, base: _Built, p2_over: dict[str, Any], threshold: float, make: Any,
                dicts: Sequence[dict[str, Any]], mode: str, max_images: int | None,
                gt_cache: dict[int, GroundTruth]) -> list[LevelOption]:
    """"add P2" (sizes of P2 searched, the rest as configured) and its lossless top-level drops."""
    gen: Any = base.setup.generator
    probe_bb = build_backbone(_with(cfg, p2_over))
    p2 = next(n for n, s in probe_bb.output_shape().items() if s.stride == 4)
    feats = [p2, *base.setup.in_features]
    sizes = [list(s) for s in gen.sizes]
    ratios = [list(gen.aspect_ratios[0])] + [list(r) for r in gen.aspect_ratios]  # P2 takes the finest level's ratios
    over = {**p2_over, **_level_overrides(cfg, feats, [[v / 2 for v in sizes[0]], *sizes], ratios)}
    draft = _build(_with(cfg, over), dicts, mode, max_images, gt_cache)
    over["MODEL.ANCHOR_GENERATOR.SIZES"] = [_search_new_level(draft, threshold, sizes), *sizes]
    added = make(f"add {p2}", over)
    drops = [d for d in _drops(cfg, added, p2_over, make) if not d.lost_boxes]
    for o in (added, *drops):
        o.adds_level = True
    return [added, *drops[-1:]]
