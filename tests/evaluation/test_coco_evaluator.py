"""COCOEvaluator equals pycocotools run directly on the written results JSON."""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from _coco_fixture import (
    CAT_IDS,
    NAMES,
    evaluate_in_process,
    make_gt_and_dets,
    model_outputs,
    write_gt,
)
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from retinakit.engine import launch
from retinakit.evaluation import COCOEvaluator, inference_on_dataset


def _pycocotools(gt_file, dets, cat_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_file)
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    d = tmp_path_factory.mktemp("coco")
    gt, dets = make_gt_and_dets()
    return write_gt(str(d / "gt.json"), gt), gt, dets, d


def test_matches_pycocotools_on_written_json(fixture):
    gt_file, gt, dets, d = fixture
    inputs, outputs = model_outputs(gt, dets)
    ev = COCOEvaluator(json_file=gt_file, output_dir=str(d / "out"))
    ev.reset()
    for i in range(0, len(inputs), 4):
        ev.process(inputs[i : i + 4], outputs[i : i + 4])
    res = ev.evaluate()["bbox"]
    written = json.loads((d / "out" / "coco_instances_results.json").read_text())
    assert {r["category_id"] for r in written} <= set(CAT_IDS)  # original ids, not contiguous
    assert len(written) == len(dets)
    stats = _pycocotools(gt_file, written)
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert [res[n] for n in names] == [float(s) for s in stats[:6]]
    # ... and pycocotools on the fixture's own detections (float32 rounding of boxes aside)
    ref = _pycocotools(gt_file, dets)
    np.testing.assert_allclose([res[n] for n in names], ref[:6], atol=1e-6)
    assert 0.2 < res["AP"] < 0.95
    for cat, name in zip(CAT_IDS, NAMES):
        per = _pycocotools(gt_file, written, cat_ids=[cat])[0]
        assert math.isclose(res[f"AP-{name}"], per, abs_tol=1e-12), name


def test_distributed_gathering_gives_same_numbers(fixture, tmp_path):
    gt_file, _gt, _dets, _d = fixture
    single, double = str(tmp_path / "r1.json"), str(tmp_path / "r2.json")
    evaluate_in_process(gt_file, str(tmp_path / "o1"), single)
    launch(evaluate_in_process, 2, dist_url="auto", args=(gt_file, str(tmp_path / "o2"), double))
    assert json.loads(Path(single).read_text()) == json.loads(Path(double).read_text())
    a = sorted(json.loads((tmp_path / "o1" / "coco_instances_results.json").read_text()), key=json.dumps)
    b = sorted(json.loads((tmp_path / "o2" / "coco_instances_results.json").read_text()), key=json.dumps)
    assert a == b


def test_no_detections_gives_zero(fixture):
    gt_file, gt, _dets, _d = fixture
    inputs, outputs = model_outputs(gt, [])
    ev = COCOEvaluator(json_file=gt_file)
    ev.process(inputs, outputs)
    assert ev.evaluate()["bbox"]["AP"] == 0.0


def test_inference_on_dataset_runs_model_in_eval_mode(fixture):
    gt_file, gt, dets, _d = fixture
    inputs, outputs = model_outputs(gt, dets)
    import torch

    class Replay(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.by_id = {i["image_id"]: o for i, o in zip(inputs, outputs)}
            self.modes = []

        def forward(self, batch):
            self.modes.append(self.training)
            return [self.by_id[b["image_id"]] for b in batch]

    model = Replay()
    loader = [inputs[i : i + 3] for i in range(0, len(inputs), 3)]
    res = inference_on_dataset(model, loader, COCOEvaluator(json_file=gt_file), progress=False)
    assert model.modes and not any(model.modes) and model.training
    assert res["bbox"]["AP"] == pytest.approx(float(_pycocotools(gt_file, dets)[0]), abs=1e-6)
