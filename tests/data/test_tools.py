"""tools/browse_dataset.py, tools/benchmark.py data, and dataset statistics."""
import importlib.util
import json
import math
import os
import sys

from retinakit.data import load_coco_json
from retinakit.data.stats import dataset_statistics, format_statistics

from .helpers import make_coco

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_tool(path, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_statistics_by_hand(tmp_path):
    def edit(d):
        d["annotations"] = [
            {"id": 1, "image_id": 100, "category_id": 3, "bbox": [0, 0, 4, 4]},  # side 4
            {"id": 2, "image_id": 100, "category_id": 7, "bbox": [0, 0, 20, 20]},  # side 20
            {"id": 3, "image_id": 101, "category_id": 7, "bbox": [0, 0, 10, 40], "iscrowd": 1},
        ]

    dicts = load_coco_json(make_coco(str(tmp_path), mutate=edit), str(tmp_path / "img"))
    s = dataset_statistics(dicts, ["c3", "c7", "c11"])
    assert (s["images"], s["negatives"], s["boxes"], s["crowd"], s["max_boxes_per_image"]) == (3, 1, 2, 1, 2)
    assert s["per_class"] == {"c3": 1, "c7": 1, "c11": 0}
    hist = {(lo, hi): c for lo, hi, c in s["size_hist"]}
    assert hist[(0, 8)] == 1 and hist[(16, 32)] == 1 and hist[(512, math.inf)] == 0
    assert s["coco_sizes"] == {"small": 2, "medium": 0, "large": 0}
    assert "c7" in format_statistics(s) and "without boxes" in format_statistics(s)


def test_browse_dataset(tmp_path, capsys):
    js = make_coco(str(tmp_path))
    tool = _load_tool("tools/browse_dataset.py", "browse_dataset")
    out = tmp_path / "out"
    opts = ["DATASETS.TRAIN_JSON", js, "DATASETS.TRAIN_IMAGES", str(tmp_path / "img")]
    assert tool.main(["--output", str(out), "--num-images", "2", *opts]) == 0
    assert sorted(os.listdir(out)) == ["100.png", "101.png"]
    printed = capsys.readouterr().out
    assert "boxes per class" in printed and "c11" in printed and "box size" in printed
    loader_out = tmp_path / "out2"
    loader_args = ["--output", str(loader_out), "--source", "loader", "--num-images", "2", *opts]
    assert tool.main([*loader_args, "SOLVER.IMS_PER_BATCH", "1", "INPUT.MIN_SIZE_TRAIN", "(64,)"]) == 0
    assert len(os.listdir(loader_out)) == 2


def test_benchmark_data_runs(tmp_path, capsys):
    js = make_coco(str(tmp_path))
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        bench = _load_tool("tools/benchmark.py", "benchmark_tool")
        rc = bench.main(["data", "--batches", "2", "--repeats", "2", "--warmup", "1", "--json", str(tmp_path / "r.json"),
                         "DATASETS.TRAIN_JSON", js, "DATASETS.TRAIN_IMAGES", str(tmp_path / "img"), "SOLVER.IMS_PER_BATCH", "2",
                         "INPUT.MIN_SIZE_TRAIN", "(64,)", "DATALOADER.NUM_WORKERS", "0"])
    finally:
        sys.path.remove(os.path.join(ROOT, "tools"))
    assert rc == 0
    assert "images/s" in capsys.readouterr().out
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert len(results["torch"]) == 2 and all(r > 0 for r in results["torch"])
