"""tools/train_net.py end to end on a tiny config (slow), and its error handling."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
QUICKSTART = os.path.join(REPO, "configs", "quickstart", "retinanet_R10_shapes.yaml")
TINY = [
    "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.LOG_PERIOD", "2", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu", "TEST.WATCH_INTERVAL", "0.5",
]

HOOK_MODULE = '''
import os
from retinakit.engine import HOOK_REGISTRY
from retinakit.engine.hooks import CallbackHook

@HOOK_REGISTRY.register()
def MarkerHook(cfg, trainer):
    path = os.path.join(cfg.OUTPUT_DIR, "marker.txt")
    return CallbackHook(after_step=lambda t: open(path, "a").write(f"{t.iter}\\n"))
'''


def _run(*args, env_extra=None, timeout=600):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, *(env_extra or [])]), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, TRAIN_NET, *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_config_error_exits_2_with_message_only(tmp_path):
    r = _run("--config-file", QUICKSTART, "SOLVER.BASE_LRR", "0.1", "OUTPUT_DIR", str(tmp_path))
    assert r.returncode == 2
    assert "SOLVER.BASE_LRR" in r.stderr and "SOLVER.BASE_LR" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_data_error_exits_2_before_training(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png", "width": 10, "height": 10}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [0, 0, 5, 5]}],
                               "categories": [{"id": 1, "name": "a"}]}))
    r = _run("--config-file", QUICKSTART, *TINY, "OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TRAIN", "()",
             "DATASETS.TRAIN_JSON", str(bad), "DATASETS.TRAIN_IMAGES", str(tmp_path))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "ERROR:" in r.stderr and "Traceback" not in r.stderr
    assert "Starting training" not in r.stdout
    assert not os.path.exists(tmp_path / "out" / "model_final.pth")


def _small_val(tmp_path, n=12):
    """The first ``n`` images of shapes_val as a COCO JSON (keeps the 4 evaluations short)."""
    from retinakit.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.get("shapes_val")  # generates the dataset on first use
    meta = MetadataCatalog.get("shapes_val")
    data = json.loads(Path(meta.json_file).read_text())
    keep = {img["id"] for img in data["images"][:n]}
    data["images"] = [i for i in data["images"] if i["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    path = tmp_path / "val_small.json"
    path.write_text(json.dumps(data))
    return ["DATASETS.TEST", "()", "DATASETS.TEST_JSON", str(path), "DATASETS.TEST_IMAGES", meta.image_root]


@pytest.mark.slow
def test_train_eval_resume_watch_end_to_end(tmp_path):
    out = tmp_path / "out"
    tiny = TINY + _small_val(tmp_path)
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "my_hooks.py").write_text(HOOK_MODULE)
    r = _run("--config-file", QUICKSTART, *tiny, "OUTPUT_DIR", str(out), "CUSTOM_IMPORTS", "['my_hooks']",
             "HOOKS", "['MarkerHook']", env_extra=[str(pkg)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = set(os.listdir(out))
    assert {"model_final.pth", "model_0000001.pth", "last_checkpoint", "metrics.json", "log.txt", "config.yaml"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert (out / "marker.txt").read_text().split() == ["0", "1", "2", "3"]
    rows = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert any("total_loss" in r for r in rows) and any("bbox/AP" in r for r in rows)
    results = json.loads((out / "inference" / "cfg_test" / "coco_instances_results.json").read_text())
    assert all({"image_id", "category_id", "bbox", "score"} <= set(d) for d in results)
    ckpt = torch.load(out / "model_final.pth", weights_only=True)
    assert ckpt["iteration"] == 3 and "rng" in ckpt and "optimizer" in ckpt and "scheduler" in ckpt

    # --resume of a finished run trains nothing more and keeps the weights
    r = _run("--resume", "--config-file", QUICKSTART, *tiny, "OUTPUT_DIR", str(out), "CUSTOM_IMPORTS", "['my_hooks']",
             "HOOKS", "['MarkerHook']", env_extra=[str(pkg)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Resuming from" in r.stdout
    again = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert all(torch.equal(again[k], v) for k, v in ckpt["model"].items())

    # --eval-only --watch evaluates every checkpoint, appends to metrics.json, keeps the best
    r = _run("--eval-only", "--watch", "--config-file", QUICKSTART, *tiny, "OUTPUT_DIR", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    watched = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines() if "checkpoint" in x]
    assert [w["checkpoint"] for w in watched] == ["model_0000001.pth", "model_final.pth"]
    assert all("bbox/AP" in w for w in watched)
    assert os.path.exists(out / "model_best.pth")

    # --eval-only on MODEL.WEIGHTS
    r = _run("--eval-only", "--config-file", QUICKSTART, *tiny, "OUTPUT_DIR", str(tmp_path / "ev"),
             "MODEL.WEIGHTS", str(out / "model_final.pth"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Evaluation of cfg_test" in r.stdout
