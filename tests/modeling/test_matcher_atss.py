"""ATSSMatcher (Adaptive Training Sample Selection) against a plain-Python reference.

The reference below is written from the paper's description with lists and loops only
(``statistics.mean`` / ``statistics.stdev``: exact rational sums, the sample standard
deviation); the matcher is the vectorised torch implementation. Hand-made cases use integer
coordinates, so that distances, intersections and areas are exact and ties are real ties;
random cases (float64 boxes, and float32 integer boxes full of exact ties) check that no
decision of the reference lies within rounding of its threshold. The matcher computes its
geometry in float64, so on the real trainer's float32 anchors (shapes rescaled by 4/3: box
centres exactly between two anchor centres) it breaks ties as the reference does.
"""
from __future__ import annotations

import math
import os
import statistics
import sys
from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor

from retinakit.config import ConfigError, get_cfg
from retinakit.data.datasets import ShapesSpec, generate_shapes
from retinakit.engine import DefaultTrainer
from retinakit.modeling import MATCHER_REGISTRY, MatchInputs, build_model
from retinakit.modeling.matcher import ATSSMatcher, min_train_anchor_counts

Box = Sequence[float]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # the quickstart config's CUSTOM_IMPORTS names projects.ResNet10.resnet10
    sys.path.insert(0, REPO)


# ------------------------------------------------------------------ the reference
def _centre(b: Box) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def _iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _sq_dist(p: tuple[float, float], q: tuple[float, float]) -> float:
    return (p[0] - q[0]) * (p[0] - q[0]) + (p[1] - q[1]) * (p[1] - q[1])


class Reference:
    """ATSS for one image, one ground-truth box at a time.

    ``levels``: per level a list of anchors ``[x1, y1, x2, y2]``; ``gts``: the boxes.
    ``std``: ``statistics.stdev`` (sample, the default) or ``statistics.pstdev``.
    """

    def __init__(self, levels: list[list[Box]], gts: list[Box], k: int, std: Callable = statistics.stdev) -> None:
        self.anchors = [a for level in levels for a in level]
        self.candidates: list[list[int]] = []
        self.thresholds: list[float] = []
        self.positives: list[list[int]] = []
        for g in gts:
            cands = self._candidates(levels, g, k)
            ious = [_iou(g, self.anchors[i]) for i in cands]
            thr = statistics.mean(ious) + (std(ious) if len(ious) > 1 else 0.0)
            self.candidates.append(cands)
            self.thresholds.append(thr)
            self.positives.append([i for i, v in zip(cands, ious) if v >= thr and self._inside(self.anchors[i], g)])
        self.gts = gts

    @staticmethod
    def _candidates(levels: list[list[Box]], g: Box, k: int) -> list[int]:
        out, start = [], 0
        for level in levels:
            order = sorted(range(len(level)), key=lambda i: (_sq_dist(_centre(g), _centre(level[i])), i))
            out += [start + i for i in order[:k]]
            start += len(level)
        return out

    @staticmethod
    def _inside(anchor: Box, g: Box) -> bool:
        cx, cy = _centre(anchor)
        return g[0] < cx < g[2] and g[1] < cy < g[3]

    def assignment(self) -> tuple[list[int], list[int]]:
        """``matches``, ``labels`` per anchor: the highest IoU wins, the first box on exact ties."""
        best: dict[int, tuple[float, int]] = {}
        for j, pos in enumerate(self.positives):
            for i in pos:
                v = _iou(self.gts[j], self.anchors[i])
                if i not in best or v > best[i][0]:
                    best[i] = (v, j)
        matches = [best[i][1] if i in best else 0 for i in range(len(self.anchors))]
        return matches, [1 if i in best else 0 for i in range(len(self.anchors))]

    def margin(self) -> float:
        """Smallest relative distance of a candidate IoU to its threshold (IoUs equal to a
        threshold of zero spread, i.e. all candidates equal, are exact and not counted)."""
        out = math.inf
        for j, (cands, thr) in enumerate(zip(self.candidates, self.thresholds)):
            ious = [_iou(self.gts[j], self.anchors[i]) for i in cands]
            if len(set(ious)) > 1:
                out = min(out, min(abs(v - thr) for v in ious) / max(thr, 1e-12))
        return out


def run(levels: list[list[Box]], gts: list[Box], k: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> tuple[Tensor, Tensor]:
    anchors = [torch.tensor(level, dtype=dtype, device=device).reshape(-1, 4) for level in levels]
    return ATSSMatcher(topk=k).match(MatchInputs(anchors, torch.tensor(gts, dtype=dtype, device=device).reshape(-1, 4)))


def assert_matches_reference(
    levels: list[list[Box]], gts: list[Box], k: int, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> Reference:
    ref = Reference(levels, gts, k)
    matches, labels = run(levels, gts, k, dtype, device)
    ref_matches, ref_labels = ref.assignment()
    assert labels.dtype == torch.int8 and matches.dtype == torch.int64
    assert labels.device.type == matches.device.type == device
    assert labels.tolist() == ref_labels
    assert [m if lbl else 0 for m, lbl in zip(matches.tolist(), ref_labels)] == ref_matches
    return ref


def grid(stride: int, cells: tuple[int, int], sizes: Sequence[int]) -> list[list[float]]:
    """Square anchors of ``sizes`` centred at ``(i + 0.5) * stride``, location-major."""
    out = []
    for y in range(cells[0]):
        for x in range(cells[1]):
            cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
            out += [[cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2] for s in sizes]
    return out


# ------------------------------------------------------------------ hand-made cases
def test_box_smaller_than_every_anchor() -> None:
    levels = [grid(8, (6, 6), [16]), grid(16, (3, 3), [32])]
    # Centre (14, 14): no anchor centre (4, 12, 20, ... / 8, 24, ...) lies strictly inside the 2x2 box.
    ref = assert_matches_reference(levels, [[13, 13, 15, 15]], k=4)
    assert ref.positives == [[]]
    # Around an anchor centre, a 4x4 box (smaller than every anchor) gets that anchor.
    ref = assert_matches_reference(levels, [[10, 10, 14, 14]], k=4)
    assert ref.positives == [[levels[0].index([4.0, 4.0, 20.0, 20.0])]]


def test_level_with_fewer_anchors_than_k_and_an_empty_level() -> None:
    levels = [grid(8, (4, 4), [8, 16]), [], grid(32, (1, 2), [48])]
    ref = assert_matches_reference(levels, [[6, 4, 30, 28], [20, 2, 62, 30]], k=5)
    assert all(len(c) == 5 + 2 for c in ref.candidates)  # 5 on level 0, none on level 1, both of level 2
    assert any(i >= 32 for i in ref.candidates[0]) and ref.positives[0] and ref.positives[1]


def test_image_without_boxes() -> None:
    levels = [grid(8, (3, 3), [16, 24])]
    matches, labels = run(levels, [], k=9)
    assert labels.tolist() == [0] * 18 and matches.tolist() == [0] * 18
    assert run([[]], [], k=9)[1].shape == (0,)


def test_equal_candidate_ious_all_pass_the_threshold() -> None:
    # Centre (16, 16) is equidistant from four anchor centres with the same IoU: mean + 0 std.
    levels = [grid(8, (4, 4), [16])]
    ref = assert_matches_reference(levels, [[6, 6, 26, 26]], k=4)
    assert ref.thresholds[0] == _iou([6, 6, 26, 26], levels[0][5]) and len(ref.positives[0]) == 4


def test_equal_candidate_ious_that_a_plain_mean_would_round() -> None:
    # Three identical anchors with IoU v = 4/39: summed then divided, their mean plus spread
    # comes out one ulp above v in float64, which would exclude all three; the threshold must
    # be exactly v, as the reference's exact mean and stdev give.
    levels = [grid(16, (2, 2), [16, 16, 16])]
    v = torch.tensor([4 / 39] * 3, dtype=torch.float64)
    assert float(v.sum() / 3 + v.std()) > 4 / 39  # the rounding this case is about
    ref = assert_matches_reference(levels, [[7, -14, 9, 30]], k=3)
    assert ref.positives == [[0, 1, 2]] and ref.thresholds[0] == 4 / 39
    assert run(levels, [[7, -14, 9, 30]], k=3, dtype=torch.float64)[1].tolist() == [1, 1, 1] + [0] * 9


def test_equidistant_anchors_beyond_k_taken_in_index_order() -> None:
    levels = [grid(8, (4, 4), [16])]  # four anchors tie for the nearest; k = 2 keeps the first two
    ref = assert_matches_reference(levels, [[6, 6, 26, 26]], k=2)
    assert ref.candidates == [[5, 6]]


def test_anchor_positive_for_two_boxes_goes_to_the_higher_iou() -> None:
    levels = [grid(16, (2, 2), [16])]
    anchor = levels[0][0]  # [0, 0, 16, 16]
    far, near = [-3, -3, 15, 15], [1, 1, 17, 17]
    ref = assert_matches_reference(levels, [far, near], k=1)
    assert 0 in ref.positives[0] and 0 in ref.positives[1] and _iou(near, anchor) > _iou(far, anchor)
    assert run(levels, [far, near], k=1)[0][0] == 1


def test_exact_iou_tie_goes_to_the_lower_box_index() -> None:
    levels = [grid(16, (2, 2), [16])]
    a, b = [2, 2, 18, 18], [-2, -2, 14, 14]  # mirror images about the anchor centre (8, 8)
    assert _iou(a, levels[0][0]) == _iou(b, levels[0][0])
    for gts in ([a, b], [b, a], [a, a]):
        ref = assert_matches_reference(gts=gts, levels=levels, k=1)
        assert ref.positives[0] == ref.positives[1] == [0]
        assert run(levels, gts, k=1)[0][0] == 0


def test_box_that_is_the_best_match_for_no_anchor() -> None:
    # Box 1 selects a positive anchor of its own, but that anchor overlaps box 0 more: box 1
    # ends up with no anchor at all (ATSS has no low-quality rescue).
    levels = [grid(16, (3, 3), [16]), grid(32, (2, 2), [32])]
    gts = [[14, 15, 31, 29], [18, 18, 32, 29]]
    ref = assert_matches_reference(levels, gts, k=2)
    assert ref.positives[1] and set(ref.positives[1]) <= set(ref.positives[0])
    matches, labels = run(levels, gts, k=2)
    assert not bool(((matches == 1) & (labels == 1)).any()) and bool(labels.any())


def test_several_levels_candidates_per_level() -> None:
    levels = [grid(8, (8, 8), [16, 24]), grid(16, (4, 4), [32, 48]), grid(32, (2, 2), [64, 96])]
    gts = [[4, 6, 40, 30], [30, 20, 62, 60], [0, 0, 64, 64], [50, 3, 58, 13]]
    ref = assert_matches_reference(levels, gts, k=3)
    starts = [0, 128, 160]
    for cands in ref.candidates:  # 3 per level
        assert [sum(s <= i < s + n for i in cands) for s, n in zip(starts, (128, 32, 8))] == [3, 3, 3]
    assert sum(bool(p) for p in ref.positives) >= 3 and ref.margin() > 1e-6


def test_unbiased_standard_deviation() -> None:
    """The threshold uses the sample standard deviation (N - 1, as ``torch.std``), which admits
    fewer positives here than the population one would."""
    levels = [grid(8, (6, 6), [16])]
    gts = [[15, 4, 39, 22]]
    sample, population = Reference(levels, gts, 9), Reference(levels, gts, 9, std=statistics.pstdev)
    assert sample.positives == [[9]] and population.positives == [[9, 8]]
    assert_matches_reference(levels, gts, k=9)
    ious = torch.tensor([_iou(gts[0], levels[0][i]) for i in sample.candidates[0]], dtype=torch.float64)
    assert math.isclose(sample.thresholds[0], float(ious.mean() + ious.std()), rel_tol=1e-12)


def test_single_candidate_has_zero_spread() -> None:
    levels = [grid(16, (2, 2), [16])]
    ref = assert_matches_reference(levels, [[1, 2, 15, 13]], k=1)
    assert ref.positives == [[0]]


# ------------------------------------------------------------------ random cases
def random_case(seed: int, integer: bool) -> tuple[list[list[Box]], list[Box], int]:
    g = torch.Generator().manual_seed(seed)
    levels = []
    for stride, cells in ((8, (8, 10)), (16, (4, 5)), (32, (2, 3)), (64, (1, 2))):
        sizes = [int(s) for s in torch.randint(stride, 4 * stride, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g)]
        levels.append(grid(stride, cells, sizes))
    num = int(torch.randint(0, 9, (1,), generator=g))
    xy = torch.rand(num, 2, generator=g) * torch.tensor([80.0, 64.0])
    wh = 4 + torch.rand(num, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + wh], dim=1).double()
    if integer:
        boxes = boxes.round()
    k = int(torch.randint(1, 13, (1,), generator=g))
    return levels, boxes.tolist(), k


@pytest.mark.parametrize("seed", range(40))
def test_random_float64(seed: int) -> None:
    levels, gts, k = random_case(seed, integer=False)
    ref = Reference(levels, gts, k)
    assert ref.margin() > 1e-9, "a reference decision within rounding of its threshold: not comparable"
    assert_matches_reference(levels, gts, k, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(40))
def test_random_integer_boxes_float32(seed: int) -> None:
    levels, gts, k = random_case(100 + seed, integer=True)
    ref = Reference(levels, gts, k)
    assert ref.margin() > 1e-9, "a reference decision within rounding of its threshold: not comparable"
    assert_matches_reference(levels, gts, k, dtype=torch.float32)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("seed", range(10))
def test_random_on_cuda(seed: int) -> None:
    for s, integer, dtype in ((seed, False, torch.float64), (100 + seed, True, torch.float32)):
        levels, gts, k = random_case(s, integer=integer)
        assert_matches_reference(levels, gts, k, dtype=dtype, device="cuda")


def test_random_cases_have_positives_and_ties() -> None:
    """The random cases are not vacuous: they assign anchors and contain shared candidates."""
    total, shared = 0, 0
    for seed in range(40):
        levels, gts, k = random_case(seed, integer=False)
        ref = Reference(levels, gts, k)
        total += sum(ref.assignment()[1])
        flat = [i for p in ref.positives for i in p]
        shared += len(flat) - len(set(flat))
    assert total > 100 and shared > 0


# ------------------------------------------------------------------ config and build
def small_cfg(*overrides: object):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RETINANET.NUM_CLASSES", 3,
                         "MODEL.FPN.OUT_CHANNELS", 16, "MODEL.RETINANET.MATCHER_NAME", "ATSSMatcher",
                         "INPUT.MIN_SIZE_TRAIN", (128,), "INPUT.MAX_SIZE_TRAIN", 160, *overrides])
    return cfg


def test_built_from_config_and_kwargs() -> None:
    model = build_model(small_cfg("MODEL.RETINANET.ATSS_TOPK", 5))
    assert isinstance(model.matcher, ATSSMatcher) and model.matcher.topk == 5
    assert MATCHER_REGISTRY.get("ATSSMatcher") is ATSSMatcher and ATSSMatcher(topk=2).topk == 2
    assert ATSSMatcher(small_cfg()).topk == 9  # the default


@pytest.mark.parametrize("k", [0, -3])
def test_non_positive_k_is_a_config_error(k: int) -> None:
    with pytest.raises(ConfigError, match=r"MODEL\.RETINANET\.ATSS_TOPK must be a positive integer"):
        build_model(small_cfg("MODEL.RETINANET.ATSS_TOPK", k))


def test_k_larger_than_the_smallest_level_is_a_config_error() -> None:
    # 128 px (padded to 128) -> P7 (stride 128) has 1 location x 9 anchors.
    assert min_train_anchor_counts(small_cfg(), [8, 128], [9, 9], 32) == ([16 * 16 * 9, 9], 128)
    build_model(small_cfg("MODEL.RETINANET.ATSS_TOPK", 9))
    with pytest.raises(ConfigError) as e:
        build_model(small_cfg("MODEL.RETINANET.ATSS_TOPK", 10))
    msg = str(e.value)
    assert "MODEL.RETINANET.ATSS_TOPK = 10" in msg and "9 anchors of level 4 (stride 128)" in msg and "128x128" in msg
    assert "INPUT.MIN_SIZE_TRAIN" in msg and "\n" not in msg
    # One anchor per location: 4 locations on P7 at 129-256 px.
    one = ["MODEL.ANCHOR_GENERATOR.OCTAVE_SCALES", [1.0], "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [[1.0]]]
    with pytest.raises(ConfigError, match="larger than the 4 anchors"):
        build_model(small_cfg(*one, "INPUT.MIN_SIZE_TRAIN", (256, 200), "INPUT.MAX_SIZE_TRAIN", 400))
    build_model(small_cfg(*one, "MODEL.RETINANET.ATSS_TOPK", 4, "INPUT.MIN_SIZE_TRAIN", (200,), "INPUT.MAX_SIZE_TRAIN", 400))


def test_iou_matcher_config_is_not_checked_against_atss_topk() -> None:
    build_model(small_cfg("MODEL.RETINANET.MATCHER_NAME", "IoUMatcher", "MODEL.RETINANET.ATSS_TOPK", 1000))


def test_smaller_input_at_run_time_uses_every_anchor_of_a_short_level() -> None:
    levels = [grid(8, (4, 4), [16]), grid(128, (1, 1), [128, 160])]
    ref = assert_matches_reference(levels, [[2, 2, 30, 30]], k=9)
    assert [i for i in ref.candidates[0] if i >= 16] == [16, 17]


# ------------------------------------------------------------------ the real trainer
def test_real_trainer_with_atss_from_config(tmp_path) -> None:
    """A few iterations of the R10 quickstart RetinaNet with ATSS from the config: finite losses,
    foreground anchors in every batch, and the first batch's foreground anchors and classes (what
    the loss sees) equal the reference's on the anchors and boxes of that batch."""
    data = generate_shapes("atss", ShapesSpec(num_images=8, image_size=96, seed=11), root=str(tmp_path / "data"))
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "quickstart", "retinanet_R10_shapes.yaml"))
    cfg.merge_from_list([
        "MODEL.RETINANET.MATCHER_NAME", "ATSSMatcher", "MODEL.RETINANET.ATSS_TOPK", 9,
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "DATASETS.TRAIN_JSON", os.path.join(data, "annotations.json"),
        "DATASETS.TRAIN_IMAGES", os.path.join(data, "images"), "INPUT.MIN_SIZE_TRAIN", (128,), "INPUT.MAX_SIZE_TRAIN", 128,
        "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 3, "SOLVER.WARMUP_ITERS", 1,
        "SOLVER.CHECKPOINT_PERIOD", 100, "OUTPUT_DIR", str(tmp_path / "out"), "SEED", 3,
    ])
    trainer = DefaultTrainer(cfg)
    model = trainer.model
    assert isinstance(model.matcher, ATSSMatcher) and model.matcher.topk == 9
    seen, losses = [], []
    label_anchors, compute_losses = model.label_anchors, model.losses

    def recording_label_anchors(anchors, gt_instances):
        out = label_anchors(anchors, gt_instances)
        seen.append(([a.detach().clone() for a in anchors], gt_instances, out[0].clone()))
        return out

    def recording_losses(*args, **kwargs):
        out = compute_losses(*args, **kwargs)
        losses.append({k: float(v.detach()) for k, v in out.items()})
        return out

    model.label_anchors, model.losses = recording_label_anchors, recording_losses
    trainer.train()
    assert len(losses) == 3 and all(math.isfinite(v) for row in losses for v in row.values())
    assert all(row["loss_box_reg"] > 0 for row in losses)
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
    assert all(int(((labels >= 0) & (labels < num_classes)).sum()) > 0 for _, _, labels in seen)

    anchors, gt_instances, labels = seen[0]
    compared = 0
    for inst, got in zip(gt_instances, labels):
        assert not inst.has("gt_ignore") or not bool(inst.gt_ignore.any())
        boxes, classes = inst.gt_boxes.tensor.tolist(), inst.gt_classes.tolist()
        ref = Reference([a.tolist() for a in anchors], boxes, 9)
        assert ref.margin() > 1e-9, "a reference decision within rounding of its threshold: not comparable"
        matches, fg = ref.assignment()
        assert got.tolist() == [classes[m] if f else num_classes for m, f in zip(matches, fg)]
        compared += sum(fg)
    assert compared >= len(labels)
