"""The COCO evaluator's nested recall results travel through DefaultTrainer's hooks: flattened
into the event storage and metrics.json (``bbox/recall/<t>/<bin>``), usable as TEST.BEST_METRIC,
``bbox/AP`` still deciding model_best by default; bad TEST.RECALL_* values fail before training."""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest
import torch
from _engine_trainer import DummyTrainer, tiny_cfg

from retinakit.config import ConfigError
from retinakit.evaluation import COCOEvaluator
from retinakit.structures import Boxes, Instances

# One image: a small box (6 px) and a large one (120 px) of one class.
GT = {
    "images": [{"id": 1, "width": 300, "height": 300}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 6.0, 6.0], "area": 36.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100.0, 100.0, 120.0, 120.0], "area": 14400.0, "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "thing"}],
}
# Score of the small box's detection at the 1st, 2nd, 3rd evaluation (the large one: 0.9).
SMALL_SCORES = [0.1, 0.4, 0.2]


class RecallTrainer(DummyTrainer):
    """Evaluates with the real COCOEvaluator on fixed detections, the small box scoring higher
    at the second evaluation."""

    gt_file = ""
    calls = 0

    @classmethod
    def test_dataset_names(cls, cfg: Any) -> list[str]:
        return ["fixed"]

    @classmethod
    def test(cls, cfg: Any, model: Any, evaluators: Any = None) -> dict[str, Any]:
        score = SMALL_SCORES[cls.calls]
        cls.calls += 1
        ev = COCOEvaluator(json_file=cls.gt_file, **_settings(cfg))
        inst = Instances((300, 300), pred_boxes=Boxes(torch.tensor([[10.0, 10.0, 16.0, 16.0], [100.0, 100.0, 220.0, 220.0]])),
                         scores=torch.tensor([score, 0.9]), pred_classes=torch.tensor([0, 0]))
        ev.process([{"image_id": 1, "height": 300, "width": 300}], [{"instances": inst}])
        return ev.evaluate()


def _settings(cfg: Any) -> dict[str, Any]:
    return {"recall_score_thresholds": list(cfg.TEST.RECALL_SCORE_THRESHOLDS), "recall_size_edges": list(cfg.TEST.RECALL_SIZE_EDGES)}


def _train(tmp_path: Any, **overrides: Any) -> list[dict[str, Any]]:
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(GT))
    RecallTrainer.gt_file, RecallTrainer.calls = str(gt_file), 0
    cfg = tiny_cfg(str(tmp_path / "out"), SOLVER__MAX_ITER=6, TEST__EVAL_PERIOD=2, SOLVER__CHECKPOINT_PERIOD=0,
                   SOLVER__LOG_PERIOD=1, **overrides)
    trainer = RecallTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    return rows


def test_recall_reaches_storage_metrics_and_best_checkpoint(tmp_path):
    rows = _train(tmp_path, TEST__BEST_METRIC="bbox/recall/0.3/small")
    assert RecallTrainer.calls == 3
    evals = [r for r in rows if "bbox/recall/0.3/small" in r]
    assert len(evals) == 3 and [r["iteration"] for r in evals][:2] == [1, 3]  # then the final evaluation
    assert [r["bbox/recall/0.3/small"] for r in evals] == [0.0, 1.0, 0.0]
    assert [r["bbox/recall/0.05/small"] for r in evals] == [1.0, 1.0, 1.0]
    assert all(r["bbox/recall/0.5/large"] == 1.0 and r["bbox/num_gt/0-8px"] == 1 and r["bbox/recall/0.3/8-16px"] == -1 for r in evals)
    best = torch.load(tmp_path / "out" / "model_best.pth", weights_only=True)
    assert best["iteration"] == 3 and best["best_metric"] == 1.0


def test_ap_still_decides_the_best_checkpoint(tmp_path):
    rows = _train(tmp_path, TEST__BEST_METRIC="bbox/AP")
    aps = [r["bbox/AP"] for r in rows if "bbox/AP" in r]
    assert len(aps) == 3 and aps[0] == aps[1] == aps[2] > 0  # the small box's score does not change the ranking
    best = torch.load(tmp_path / "out" / "model_best.pth", weights_only=True)
    assert best["iteration"] == 1 and best["best_metric"] == aps[0]


def test_best_at_the_final_evaluation_resumes_after_the_last_iteration(tmp_path, monkeypatch):
    """The final evaluation is logged at max_iter; model_best (then last_checkpoint) must record
    the last completed iteration, max_iter - 1, so that a resume runs no iteration twice or never."""
    monkeypatch.setattr(sys.modules[__name__], "SMALL_SCORES", [0.1, 0.2, 0.4])  # the final one is best
    _train(tmp_path, TEST__BEST_METRIC="bbox/recall/0.3/small")
    out = tmp_path / "out"
    best = torch.load(out / "model_best.pth", weights_only=True)
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert best["best_metric"] == 1.0 and best["iteration"] == final["iteration"] == 5
    assert (out / "last_checkpoint").read_text().strip() == "model_best.pth"
    cfg = tiny_cfg(str(out), SOLVER__MAX_ITER=8, TEST__EVAL_PERIOD=0, SOLVER__CHECKPOINT_PERIOD=0)
    trainer = RecallTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 6


@pytest.mark.parametrize(
    "key,value,match",
    [("RECALL_SCORE_THRESHOLDS", [0.3, 5.0], r"TEST\.RECALL_SCORE_THRESHOLDS must list score thresholds in \[0, 1\]"),
     ("RECALL_SIZE_EDGES", [16, 8], r"TEST\.RECALL_SIZE_EDGES must list increasing positive")],
)
def test_bad_recall_settings_fail_before_training(tmp_path, key, value, match):
    cfg = tiny_cfg(str(tmp_path))
    cfg.TEST[key] = value
    with pytest.raises(ConfigError, match=match):
        DummyTrainer(cfg)
    with pytest.raises(ConfigError, match=match):
        DummyTrainer.build_evaluator(cfg, "any")
