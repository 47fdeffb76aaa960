"""Recall per box size at score thresholds (retinakit.evaluation.recall and COCOEvaluator's report):
hand-made cases with the expected numbers written out, an independent pure-Python reference on
random data, and pycocotools' own recall at IoU 0.5 where the two definitions coincide."""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
from typing import Any

import numpy as np
import pytest
from _coco_fixture import CAT_IDS, make_gt_and_dets, make_hard_gt_and_dets, model_outputs, write_gt
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from retinakit.config import ConfigError
from retinakit.evaluation import COCOEvaluator
from retinakit.evaluation.recall import found_scores, recall_by_size, size_bins

THRESHOLDS = (0.05, 0.3, 0.5)


# --------------------------------------------------------------------------- reference
def _ref_iou(a: list[float], b: list[float]) -> float:
    ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _ref_found_ids(gt: dict[str, Any], dets: list[dict[str, Any]], t: float, max_dets: int) -> set[int]:
    """Ids of the non-crowd boxes found at threshold ``t``: only detections with score >= t take
    part; per image and class they go by descending score (stable) and take the unmatched box of
    largest IoU >= 0.5 (the later box between equal IoUs)."""
    found: set[int] = set()
    images = {im["id"] for im in gt["images"]}
    for img in images:
        for cat in {a["category_id"] for a in gt["annotations"]}:
            boxes = [a for a in gt["annotations"] if a["image_id"] == img and a["category_id"] == cat and not a.get("iscrowd")]
            mine = [d for d in dets if d["image_id"] == img and d["category_id"] == cat]
            mine = sorted(mine, key=lambda d: -d["score"])[:max_dets]
            taken: set[int] = set()
            for d in mine:
                if d["score"] < t:
                    continue
                best, best_iou = None, 0.5
                for a in boxes:
                    if a["id"] in taken:
                        continue
                    iou = _ref_iou(d["bbox"], a["bbox"])
                    if iou >= best_iou:
                        best, best_iou = a["id"], iou
                if best is not None:
                    taken.add(best)
            found |= taken
    return found


def _ref_recall(gt: dict[str, Any], dets: list[dict[str, Any]], edges=(8, 16, 32), max_dets: int = 100) -> dict[str, Any]:
    boxes = [a for a in gt["annotations"] if not a.get("iscrowd")]

    def in_bin(a: dict[str, Any], name: str) -> bool:
        side = math.sqrt(a["area"])
        named = {"all": (0, math.inf), "small": (0, 32), "medium": (32, 96), "large": (96, math.inf)}
        if name in named:
            lo, hi = named[name]
        elif name.startswith("over"):
            lo, hi = float(name[4:-2]), math.inf
        else:
            lo, hi = (float(v) for v in name[:-2].split("-"))
        return lo <= side < hi

    names = [n for n, _, _ in size_bins(edges)]
    num = {n: sum(in_bin(a, n) for a in boxes) for n in names}
    recall = {}
    for t in THRESHOLDS:
        ids = _ref_found_ids(gt, dets, t, max_dets)
        recall[f"{t:g}"] = {n: (sum(in_bin(a, n) and a["id"] in ids for a in boxes) / num[n] if num[n] else -1.0) for n in names}
    return {"recall": recall, "num_gt": num}


def _ours(gt: dict[str, Any], dets: list[dict[str, Any]], edges=(8, 16, 32), max_dets: int = 100) -> dict[str, Any]:
    areas, scores = found_scores(gt["annotations"], dets, [im["id"] for im in gt["images"]], max_dets)
    return recall_by_size(areas, scores, THRESHOLDS, edges)


def _assert_same(ours: dict[str, Any], ref: dict[str, Any]) -> None:
    assert ours["num_gt"] == ref["num_gt"]
    assert ours["recall"].keys() == ref["recall"].keys()
    for t in ref["recall"]:
        for name, value in ref["recall"][t].items():
            assert ours["recall"][t][name] == pytest.approx(value, abs=1e-12), (t, name)


# --------------------------------------------------------------------------- hand-made cases
def _gt(*boxes: tuple[int, list[float]], crowd: tuple[int, ...] = ()) -> dict[str, Any]:
    anns = [{"id": i + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": int(i + 1 in crowd)}
            for i, (c, b) in enumerate(boxes)]
    return {"images": [{"id": 1, "width": 400, "height": 400}], "annotations": anns, "categories": [{"id": 1}, {"id": 2}]}


def _det(cat: int, box: list[float], score: float) -> dict[str, Any]:
    return {"image_id": 1, "category_id": cat, "bbox": box, "score": score}


def test_small_box_found_only_at_low_score():
    gt = _gt((1, [10, 10, 6, 6]), (1, [100, 100, 50, 50]), (1, [200, 200, 120, 120]))
    dets = [_det(1, [10, 10, 6, 6], 0.2), _det(1, [101, 100, 50, 50], 0.9), _det(1, [200, 200, 120, 110], 0.4)]
    r = _ours(gt, dets)
    assert r["num_gt"] == {"all": 3, "small": 1, "medium": 1, "large": 1, "0-8px": 1, "8-16px": 0, "16-32px": 0, "over32px": 2}
    assert r["recall"]["0.05"] == {"all": 1.0, "small": 1.0, "medium": 1.0, "large": 1.0, "0-8px": 1.0, "8-16px": -1.0,
                                   "16-32px": -1.0, "over32px": 1.0}
    assert r["recall"]["0.3"]["small"] == 0.0 and r["recall"]["0.3"]["large"] == 1.0
    assert r["recall"]["0.5"]["all"] == pytest.approx(1 / 3) and r["recall"]["0.5"]["large"] == 0.0
    _assert_same(r, _ref_recall(gt, dets))


def test_one_detection_finds_one_box_greedily_by_score():
    """A high-score detection takes the box it overlaps most; the lower-score one cannot take it
    again (one to one) and finds nothing else: greedy, not the best assignment."""
    a, b = [0, 0, 20, 20], [6, 0, 20, 20]  # IoU(a, b) = 0.54
    gt = _gt((1, a), (1, b))
    dets = [_det(1, [1, 0, 20, 20], 0.9), _det(1, [0, 0, 18, 20], 0.8)]  # IoU with a: 0.90, 0.90; with b: 0.60, 0.46
    r = _ours(gt, dets)
    assert r["recall"]["0.05"]["all"] == 0.5  # b is left, though det 2 -> a, det 1 -> b would find both
    assert r["recall"]["0.5"]["all"] == 0.5
    _assert_same(r, _ref_recall(gt, dets))


def test_class_crowd_iou_limit_and_ties():
    gt = _gt((1, [0, 0, 10, 10]), (2, [50, 50, 10, 10]), (1, [100, 100, 30, 40]), (1, [100, 100, 30, 22.5]),
             (1, [200, 200, 10, 10]), crowd=(5,))
    dets = [
        _det(1, [0, 0, 10, 5], 0.6),  # IoU exactly 0.5 with box 1: found
        _det(2, [0, 0, 10, 10], 0.9),  # box 1's place, but class 2: finds nothing
        _det(1, [50, 50, 10, 10], 0.9),  # box 2's place, but class 1: box 2 not found
        _det(1, [100, 100, 30, 30], 0.7),  # IoU 0.75 with boxes 3 (medium) and 4 (small): the later, 4, as pycocotools
        _det(1, [200, 200, 10, 10], 0.9),  # on the crowd box: neither counted nor counting
    ]
    r = _ours(gt, dets)
    assert r["num_gt"]["all"] == 4 and r["num_gt"]["8-16px"] == 2
    assert r["recall"]["0.05"]["all"] == 0.5 and r["recall"]["0.5"]["all"] == 0.5 and r["recall"]["0.3"]["all"] == 0.5
    assert r["recall"]["0.05"]["8-16px"] == 0.5  # boxes 1 and 2 (the crowd box is not counted)
    assert r["recall"]["0.05"]["16-32px"] == 1.0 and r["recall"]["0.05"]["medium"] == 0.0
    _assert_same(r, _ref_recall(gt, dets))
    just_below = [_det(1, [0, 0, 10, 4.999], 0.6)]
    assert _ours(gt, just_below)["recall"]["0.05"]["all"] == 0.0


def test_max_dets_per_image_and_class():
    gt = _gt((1, [0, 0, 10, 10]), (1, [50, 0, 10, 10]), (1, [100, 0, 10, 10]))
    dets = [_det(1, [x, 0, 10, 10], s) for x, s in ((0, 0.9), (50, 0.8), (100, 0.7))]
    assert _ours(gt, dets, max_dets=2)["recall"]["0.05"]["all"] == pytest.approx(2 / 3)
    assert _ours(gt, dets, max_dets=3)["recall"]["0.05"]["all"] == 1.0
    _assert_same(_ours(gt, dets, max_dets=2), _ref_recall(gt, dets, max_dets=2))


def test_empty_inputs():
    empty = {"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1}]}
    r = _ours(empty, [_det(1, [0, 0, 5, 5], 0.9)])
    assert r["num_gt"]["all"] == 0 and r["recall"]["0.3"]["all"] == -1.0
    gt = _gt((1, [0, 0, 10, 10]))
    assert _ours(gt, [])["recall"]["0.05"] == {**dict.fromkeys(r["num_gt"], -1.0), "all": 0.0, "small": 0.0, "8-16px": 0.0}


def test_custom_and_no_edges():
    gt = _gt((1, [0, 0, 3, 3]), (1, [50, 0, 5, 5]), (1, [100, 0, 70, 70]))
    dets = [_det(1, [0, 0, 3, 3], 0.9), _det(1, [100, 0, 70, 70], 0.9)]
    r = _ours(gt, dets, edges=(4, 64))
    assert list(r["num_gt"]) == ["all", "small", "medium", "large", "0-4px", "4-64px", "over64px"]
    assert r["recall"]["0.3"]["0-4px"] == 1.0 and r["recall"]["0.3"]["4-64px"] == 0.0 and r["recall"]["0.3"]["over64px"] == 1.0
    _assert_same(r, _ref_recall(gt, dets, edges=(4, 64)))
    assert list(_ours(gt, dets, edges=())["num_gt"]) == ["all", "small", "medium", "large"]


# --------------------------------------------------------------------------- random data
def _with_duplicates(dets: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Adds a shifted copy with another score to half of the detections (as before NMS), so that
    several detections compete for a box and the order by score decides which one counts."""
    rng = np.random.default_rng(seed + 77)
    out = list(dets)
    for d in dets:
        if rng.random() < 0.5:
            x, y, w, h = d["bbox"]
            shift = rng.normal(0, 0.1, 2) * [w, h]
            out.append({**d, "bbox": [x + shift[0], y + shift[1], w, h], "score": float(rng.uniform(0.05, 1.0))})
    return out


@pytest.mark.parametrize("seed,hard", [(0, False), (1, False), (0, True), (2, True)])
def test_random_cases_equal_the_reference(seed, hard):
    gt, dets = make_hard_gt_and_dets(seed) if hard else make_gt_and_dets(seed)
    dets = _with_duplicates(dets, seed)
    _assert_same(_ours(gt, dets), _ref_recall(gt, dets))
    _assert_same(_ours(gt, dets, max_dets=20), _ref_recall(gt, dets, max_dets=20))


def _pycocotools_recall(gt_file: str, dets: list[dict[str, Any]], t: float) -> np.ndarray:
    """pycocotools' recall ``[K classes, A areas]`` at IoU 0.5 of the detections with score >= t."""
    kept = [d for d in dets if d["score"] >= t]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(gt_file)
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(kept)), "bbox")
        ev.evaluate()
        ev.accumulate()
    assert ev.params.iouThrs[0] == 0.5 and list(ev.params.areaRngLbl) == ["all", "small", "medium", "large"]
    return ev.eval["recall"][0, :, :, -1]


def _cross_bin_overlaps(gt: dict[str, Any], dets: list[dict[str, Any]]) -> int:
    """Detections at IoU >= 0.5 with two boxes of their class in different COCO size bins (where
    pycocotools' per-area matching may differ from one matching for all sizes)."""
    def coco_bin(area: float) -> int:
        return 0 if area < 32**2 else 1 if area < 96**2 else 2

    n = 0
    for d in dets:
        hits = {coco_bin(a["area"]) for a in gt["annotations"] if a["image_id"] == d["image_id"]
                and a["category_id"] == d["category_id"] and not a["iscrowd"] and _ref_iou(d["bbox"], a["bbox"]) >= 0.5}
        n += len(hits) > 1
    return n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_recall_equals_pycocotools(tmp_path, seed):
    """Per class, at each threshold: equal to pycocotools' recall at IoU 0.5 (area all) on the
    detections above the threshold; per COCO size bin too, where no detection overlaps boxes of
    two bins (checked) and no box lies exactly on a bin limit (pycocotools counts it twice)."""
    gt, dets = make_gt_and_dets(seed)
    dets = _with_duplicates(dets, seed)
    gt_file = write_gt(str(tmp_path / "gt.json"), gt)
    assert _cross_bin_overlaps(gt, dets) == 0
    assert not any(a["area"] in (32.0**2, 96.0**2) for a in gt["annotations"])
    for t in THRESHOLDS:
        theirs = _pycocotools_recall(gt_file, dets, t)
        for k, cat in enumerate(CAT_IDS):
            one = {**gt, "annotations": [a for a in gt["annotations"] if a["category_id"] == cat]}
            ours = _ours(one, [d for d in dets if d["category_id"] == cat])["recall"][f"{t:g}"]
            for a, area in enumerate(["all", "small", "medium", "large"]):
                assert ours[area] == pytest.approx(float(theirs[k, a]), abs=1e-12), (t, cat, area)


# --------------------------------------------------------------------------- the evaluator
def test_evaluator_reports_recall_and_logs_a_table(tmp_path, caplog):
    gt, dets = make_hard_gt_and_dets(1)
    gt_file = write_gt(str(tmp_path / "gt.json"), gt)
    inputs, outputs = model_outputs(gt, dets)
    ev = COCOEvaluator(json_file=gt_file, recall_score_thresholds=[0.5, 0.05, 0.3])
    ev.process(inputs, outputs)
    with caplog.at_level(logging.INFO, logger="retinakit.evaluation.coco_evaluation"):
        res = ev.evaluate()["bbox"]
    # the evaluator's boxes went through float32: compare with the reference on what it wrote
    written = [r for o, i in zip(outputs, inputs) for r in _rows(o, i)]
    _assert_same({"recall": res["recall"], "num_gt": res["num_gt"]}, _ref_recall(gt, written))
    assert list(res["recall"]) == ["0.05", "0.3", "0.5"]
    assert 0 < res["recall"]["0.5"]["all"] < res["recall"]["0.05"]["all"] <= 1
    table = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Recall per box size"))
    assert f"small ({res['num_gt']['small']})" in table and f"{res['recall']['0.3']['all']:.3f}" in table


def _rows(out: dict[str, Any], inp: dict[str, Any]) -> list[dict[str, Any]]:
    from retinakit.evaluation import instances_to_coco_json

    return instances_to_coco_json(out["instances"], inp["image_id"], dict(enumerate(CAT_IDS)))


def test_evaluator_without_detections_and_switched_off(tmp_path):
    gt, dets = make_gt_and_dets(0)
    gt_file = write_gt(str(tmp_path / "gt.json"), gt)
    inputs, outputs = model_outputs(gt, [])
    ev = COCOEvaluator(json_file=gt_file)
    ev.process(inputs, outputs)
    res = ev.evaluate()["bbox"]
    assert res["AP"] == 0.0 and res["recall"]["0.05"]["all"] == 0.0 and res["num_gt"]["all"] > 0
    off = COCOEvaluator(json_file=gt_file, recall_score_thresholds=[])
    off.process(*model_outputs(gt, dets))
    assert "recall" not in off.evaluate()["bbox"]


@pytest.mark.parametrize(
    "kwargs,match",
    [({"recall_score_thresholds": [0.3, 1.5]}, "recall_score_thresholds"), ({"recall_score_thresholds": ["a"]}, "in \\[0, 1\\]"),
     ({"recall_size_edges": [16, 8]}, "recall_size_edges.*increasing"), ({"recall_size_edges": [0, 8]}, "positive")],
)
def test_bad_settings_are_refused(tmp_path, kwargs, match):
    gt, _ = make_gt_and_dets(0)
    with pytest.raises(ConfigError, match=match):
        COCOEvaluator(json_file=write_gt(str(tmp_path / "gt.json"), gt), **kwargs)
