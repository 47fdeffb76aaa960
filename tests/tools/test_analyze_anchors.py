"""tools/analyze_anchors.py end to end: table, PNG, JSON and --suggest on a small shapes split."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from retinakit.analysis.anchors import anchor_coverage
from retinakit.config import get_cfg
from retinakit.data import load_coco_json
from retinakit.data.datasets import ShapesSpec, generate_shapes
from retinakit.modeling import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = os.path.join(ROOT, "projects", "ResNet10", "configs", "retinanet_R10_FPN_shapes_small.yaml")


def run(args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", RETINAKIT_DATASETS=str(tmp_path / "datasets"),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "analyze_anchors.py"), *args], cwd=str(tmp_path),
                          env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("anchors")
    spec = ShapesSpec(num_images=24, image_size=256, min_object=4.0, max_object_frac=24 / 256, max_objects=10, seed=11)
    d = generate_shapes("tiny_small", spec, root=str(root))
    return os.path.join(d, "annotations.json"), os.path.join(d, "images")


@pytest.mark.slow
def test_report_suggest_png_and_json(tmp_path, small_split):
    js, images = small_split
    out = tmp_path / "out"
    r = run(["--config-file", CFG, "--suggest", "--output", str(out), "--max-images", "0",
             "DATASETS.TRAIN", "()", "DATASETS.TRAIN_JSON", js, "DATASETS.TRAIN_IMAGES", images], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "coverage (config)" in r.stdout and "coverage (suggested)" in r.stdout and "[8, 16)" in r.stdout
    assert "MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: [[" in r.stdout
    with open(out / "anchor_coverage.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(out / "anchor_coverage.json") as f:
        result = json.load(f)
    # the tool's numbers equal the library's on the same boxes (brute force over every anchor)
    cfg = get_cfg()
    cfg.merge_from_file(CFG)
    dicts = load_coco_json(js, images, "tiny_small")
    ref = anchor_coverage(cfg, dicts, method="bruteforce")
    assert result["config"]["coverage"] == pytest.approx(ref.coverage)
    assert result["config"]["mean_best_iou"] == pytest.approx(ref.mean_best_iou, abs=1e-6)
    assert result["config"]["boxes"] == ref.num_boxes > 0
    s = result["suggested"]
    assert s["coverage"] > result["config"]["coverage"]
    assert s["anchors_per_location"] == result["config"]["anchors_per_location"] == [9] * 5
    cfg.merge_from_list(["MODEL.ANCHOR_GENERATOR.SIZES", s["SIZES"], "MODEL.ANCHOR_GENERATOR.OCTAVE_SCALES",
                         s["OCTAVE_SCALES"], "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", s["ASPECT_RATIOS"]])
    assert anchor_coverage(cfg, dicts, method="bruteforce").coverage == pytest.approx(s["coverage"])
    # level advice (on the suggested anchors): printed, in the JSON, and its overrides build that model
    levels = result["levels"]
    assert levels["anchors"] == "suggested" and levels["p2_available"] and levels["test_size"] == [256, 256]
    rec = next(o for o in levels["options"] if o["name"] == levels["recommended"])
    assert "Recommended levels: " + ", ".join(rec["head_in_features"]) in r.stdout and levels["yaml"] in r.stdout
    assert levels["options"][0]["coverage"] == pytest.approx(s["coverage"])
    cfg.merge_from_list([x for k, v in levels["overrides"].items() for x in (k, json.dumps(v))])
    model = build_model(cfg)
    assert model.head_in_features == rec["head_in_features"] and model.anchor_generator.sizes == rec["sizes"]
    assert anchor_coverage(cfg, dicts, method="bruteforce").coverage == pytest.approx(rec["coverage"])


def test_bad_inputs_exit_2_with_one_message(tmp_path):
    r = run(["--config-file", CFG, "--dataset", "no_such_dataset", "--output", str(tmp_path)], tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("ERROR:") and "no_such_dataset" in r.stderr
    assert "Traceback" not in r.stderr
    r = run(["--config-file", CFG, "MODEL.ANCHOR_GENERATOR.SIZEZ", "[[8]]"], tmp_path)
    assert r.returncode == 2 and "SIZES" in r.stderr and "Traceback" not in r.stderr
    r = run(["--config-file", CFG, "MODEL.RETINANET.IN_FEATURES", '["p3","p4","p5","p6"]'], tmp_path)  # 5 SIZES lists
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "MODEL.ANCHOR_GENERATOR.SIZES has 5" in r.stderr and "MODEL.RETINANET.IN_FEATURES has 4" in r.stderr
