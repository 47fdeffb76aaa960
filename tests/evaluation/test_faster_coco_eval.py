"""COCOEvaluator(use_fast_impl=True) (faster-coco-eval) gives pycocotools' numbers.

The only difference between the two libraries' precision arrays is documented and tested
here: faster-coco-eval's C++ accumulate computes ``tp / (tp + fp)`` while pycocotools adds
``np.spacing(1)`` to the denominator, so where ``tp + fp == 1`` pycocotools has
``1 - 2**-52`` and faster-coco-eval ``1.0``. Every metric agrees to ~1e-16.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import sys
from typing import Any

import numpy as np
import pytest
from _coco_fixture import CAT_IDS, NAMES, make_gt_and_dets, make_hard_gt_and_dets, model_outputs, write_gt
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from retinakit.evaluation import COCOEvaluator

faster_coco_eval = pytest.importorskip("faster_coco_eval")

METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
# Bound of the last-bit difference explained in the module docstring (observed: <= 5.6e-17).
TOL = 1e-15


def _case(tmp_path: Any, seed: int, hard: bool) -> tuple[str, dict, list]:
    gt, dets = make_hard_gt_and_dets(seed) if hard else make_gt_and_dets(seed)
    return write_gt(str(tmp_path / f"gt{seed}.json"), gt), gt, dets


def _evaluate(gt_file: str, gt: dict, dets: list, fast: bool, max_dets: int = 100) -> dict[str, float]:
    ev = COCOEvaluator(json_file=gt_file, use_fast_impl=fast, max_dets_per_image=max_dets)
    assert ev._COCOeval.__module__.startswith("faster_coco_eval" if fast else "pycocotools")
    inputs, outputs = model_outputs(gt, dets)
    for i in range(0, len(inputs), 5):
        ev.process(inputs[i : i + 5], outputs[i : i + 5])
    return ev.evaluate()["bbox"]


def _direct(coco_cls: Any, eval_cls: Any, gt_file: str, dets: list, max_dets: int = 100) -> Any:
    """``COCOeval`` of a library run directly (no retinakit code), summarized."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_cls(gt_file)
        ev = eval_cls(gt, gt.loadRes(copy.deepcopy(dets)), "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed,hard", [(0, False), (0, True), (1, True), (2, True)])
@pytest.mark.parametrize("max_dets", [100, 20, 300])
def test_fast_impl_equals_pycocotools(tmp_path, seed, hard, max_dets):
    gt_file, gt, dets = _case(tmp_path, seed, hard)
    ref = _evaluate(gt_file, gt, dets, fast=False, max_dets=max_dets)
    fast = _evaluate(gt_file, gt, dets, fast=True, max_dets=max_dets)
    assert set(ref) == set(fast) == set(METRICS) | {f"AP-{n}" for n in NAMES} | {"recall", "num_gt"}
    for key in set(ref) - {"recall", "num_gt"}:
        assert abs(ref[key] - fast[key]) <= TOL, (key, ref[key], fast[key])
    # the recall report is retinakit's own computation: the same whichever COCO library runs
    assert ref["recall"] == fast["recall"] and ref["num_gt"] == fast["num_gt"]
    assert all(0.05 < ref[m] < 0.95 for m in METRICS), ref


def test_precision_arrays_differ_only_by_pycocotools_epsilon(tmp_path):
    gt_file, _, dets = _case(tmp_path, 1, hard=True)
    py = _direct(COCO, COCOeval, gt_file, dets)
    fast = _direct(faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster, gt_file, dets)
    for key in ("recall", "scores"):
        np.testing.assert_array_equal(py.eval[key], fast.eval[key])
    a, b = py.eval["precision"], fast.eval["precision"]
    differ = a != b
    assert differ.any()  # the case below occurs in this data
    assert set(a[differ].tolist()) == {1.0 / (1.0 + np.spacing(1))} and set(b[differ].tolist()) == {1.0}


@pytest.mark.parametrize("max_dets", [20, 300])
def test_max_dets_other_than_100(tmp_path, max_dets):
    """pycocotools' summarize gives AP = -1 unless maxDets holds 100; the evaluator does not."""
    gt_file, gt, dets = _case(tmp_path, 0, hard=True)
    res = _evaluate(gt_file, gt, dets, fast=False, max_dets=max_dets)
    py = _direct(COCO, COCOeval, gt_file, dets, max_dets)
    assert py.stats[0] == -1  # the pycocotools quirk
    # AP50 ... APl of pycocotools' summarize are taken at maxDets[-1]: bitwise equal.
    assert [res[m] for m in METRICS[1:]] == [float(s) for s in py.stats[1:6]]
    # faster-coco-eval's summarize takes AP at maxDets[-1] too: an independent reference.
    fast = _direct(faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster, gt_file, dets, max_dets)
    assert abs(res["AP"] - float(fast.stats[0])) <= TOL
    at_100 = _evaluate(gt_file, gt, dets, fast=False)
    assert res["AP"] != at_100["AP"]  # the 150-detection image makes the limit matter


def test_per_class_ap_equals_single_class_pycocotools(tmp_path):
    gt_file, gt, dets = _case(tmp_path, 2, hard=True)
    fast = _evaluate(gt_file, gt, dets, fast=True)
    for cat, name in zip(CAT_IDS, NAMES):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(gt_file)
            ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
            ev.params.catIds = [cat]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        assert abs(fast[f"AP-{name}"] - ev.stats[0]) <= TOL, name


def test_missing_faster_coco_eval_falls_back_to_pycocotools(tmp_path, monkeypatch, caplog):
    gt_file, _, _ = _case(tmp_path, 0, hard=False)
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import fails as if not installed
    with caplog.at_level(logging.WARNING, logger="retinakit.evaluation.coco_evaluation"):
        ev = COCOEvaluator(json_file=gt_file, use_fast_impl=True)
    assert ev._COCOeval is COCOeval
    assert "faster-coco-eval is not installed" in caplog.text


@pytest.mark.parametrize("fast", [False, True])
def test_config_key_selects_the_implementation(fast):
    """TEST.FAST_COCO_EVAL reaches the evaluator that DefaultTrainer builds."""
    from retinakit.config import get_cfg
    from retinakit.engine import DefaultTrainer

    cfg = get_cfg()
    cfg.merge_from_list(["TEST.FAST_COCO_EVAL", fast, "OUTPUT_DIR", ""])
    ev = DefaultTrainer.build_evaluator(cfg, "shapes_val", output_folder=None)
    assert ev._COCOeval.__module__.startswith("faster_coco_eval" if fast else "pycocotools")
