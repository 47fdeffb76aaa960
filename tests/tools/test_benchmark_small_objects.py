"""tools/benchmark.py small-objects: a smoke run (2 variants x 1 seed x 2 iterations at 128 px, the
real trainer and evaluation, the two runs in two processes with --jobs 2) checks the JSON and the
table, resuming and its schedule check; the variants' configs are built through the benchmark's
own function and checked against the presets."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = ["--backbones", "R10", "--variants", "p2", "p2_atss", "--seeds", "0", "--iters", "2", "--batch", "2",
         "--size", "128", "--max-test-images", "4", "--latency-repeats", "3"]


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _import(name: str):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _cli(argv: list[str]) -> tuple[int, str, str]:
    benchmark = _import("benchmark")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = benchmark.main(["small-objects", *argv])
    return rc, out.getvalue(), err.getvalue()


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    _import("benchmarks.small_objects").add_arguments(p)
    return p.parse_args(argv)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[str, str]:
    out = str(tmp_path_factory.mktemp("small_objects"))
    rc, stdout, _ = _cli([*SMOKE, "--output", out, "--jobs", "2"])
    assert rc == 0
    return out, stdout


def _small_boxes_of_first_images(n: int) -> dict[str, int]:
    """Boxes per size bin of the first n shapes_small_val images, counted from the dataset dicts."""
    from retinakit.data import get_detection_dataset_dicts

    counts = {"small": 0, "0-8px": 0, "8-16px": 0, "16-32px": 0}
    for d in get_detection_dataset_dicts(["shapes_small_val"])[:n]:
        for a in d["annotations"]:
            x0, y0, x1, y1 = a["bbox"]  # XYXY in the original image (the ground truth is not resized)
            side = math.sqrt((x1 - x0) * (y1 - y0))
            if side < 32:
                counts["small"] += 1
                counts["0-8px" if side < 8 else "8-16px" if side < 16 else "16-32px"] += 1
    return counts


@pytest.mark.slow
def test_smoke_run_writes_json_and_table(smoke):
    out, stdout = smoke
    with open(os.path.join(out, "small_objects.json")) as f:
        data = json.load(f)
    assert [(r["backbone"], r["variant"], r["seed"]) for r in data["runs"]] == [("R10", "p2", 0), ("R10", "p2_atss", 0)]
    for run in data["runs"]:
        assert os.path.exists(os.path.join(out, "runs", f"R10-{run['variant']}-s0", "result.json"))
        assert run["iters"] == 2 and run["batch"] == 2 and run["size"] == 128 and run["device"] == "cpu"
        assert 0.0 <= run["AP"] <= 100.0 and 0.0 <= run["AP_small"] <= 100.0
        assert set(run["recall"]) == {"0.05", "0.3", "0.5"}  # TEST.RECALL_SCORE_THRESHOLDS' default
        for per_bin in run["recall"].values():
            for b, v in per_bin.items():
                assert v == -1.0 if run["num_gt"][b] == 0 else 0.0 <= v <= 1.0
        expected = _small_boxes_of_first_images(4)
        assert {b: run["num_gt"][b] for b in expected} == expected
        assert run["train_img_per_s"] > 0 and run["train_seconds"] > 0
        lat = run["latency_ms"]
        assert lat["repeats"] == 3 and 0 < lat["q1"] <= lat["median"] <= lat["q3"] and lat["iqr"] == pytest.approx(lat["q3"] - lat["q1"])
    rows = {r["variant"]: r for r in data["summary"]}
    assert set(rows) == {"p2", "p2_atss"}
    assert rows["p2"]["matcher"] == "IoUMatcher" and rows["p2_atss"]["matcher"] == "ATSSMatcher"
    for r in rows.values():
        run = next(x for x in data["runs"] if x["variant"] == r["variant"])
        assert r["AP"] == {"mean": run["AP"], "sd": 0.0, "n": 1}
        assert r["latency_ms"]["mean"] == run["latency_ms"]["median"]
    assert "training 2 run(s), 2 at a time" in stdout
    for variant in ("p2", "p2_atss"):  # each run trained in its own process, which logged its training
        with open(os.path.join(out, "runs", f"R10-{variant}-s0", "log.txt")) as f:
            assert f"R10-{variant}-s0: training 2 iterations x 2 images" in f.read()
    table = [line for line in stdout.splitlines() if line.startswith("| R10 |")]
    assert len(table) == 4  # main table and recall table, one row per variant each
    # AP is a fraction in [0, 1]: shown with 3 decimals (".1f" printed 0.0 for every run)
    assert f"| {rows['p2']['AP']['mean']:.3f} ± 0.000 | {rows['p2']['AP_small']['mean']:.3f} ± 0.000 |" in stdout
    assert "| AP | AP_small | Train img/s | Latency ms (median) | IQR ms |" in stdout
    assert "0-8px @0.3" in stdout and "over32px" not in stdout  # only bins with boxes


@pytest.mark.slow
def test_resume_skips_existing_runs_and_checks_the_schedule(smoke):
    out, _ = smoke
    path = os.path.join(out, "runs", "R10-p2-s0", "result.json")
    mtime = os.path.getmtime(path)
    rc, stdout, _ = _cli([*SMOKE, "--output", out])
    assert rc == 0 and stdout.count("result exists, skipped") == 2 and "training" not in stdout
    assert os.path.getmtime(path) == mtime
    changed = [*SMOKE, "--output", out]
    changed[changed.index("--iters") + 1] = "3"
    rc, _, err = _cli(changed)
    assert rc == 2 and path in err and "--output" in err


def test_child_command_line_carries_every_flag(tmp_path):
    """A run trained in its own process (--jobs) gets the parent's flags, for exactly that run."""
    so = _import("benchmarks.small_objects")
    argv = ["--output", str(tmp_path), "--backbones", "R10", "MNV3L", "--variants", "p2", "base", "--seeds", "0", "1",
            "--iters", "7", "--batch", "3", "--size", "160", "--train-dataset", "shapes_small_val",
            "--test-dataset", "shapes_small_train", "--device", "cuda", "--max-images", "9", "--latency-repeats", "4",
            "--max-test-images", "5", "--jobs", "3", "SOLVER.BASE_LR", "0.02"]
    parent = _args(argv)
    child_argv = so._child_argv(parent, "MNV3L", "base", 1)
    assert child_argv[1:3] == [os.path.join(ROOT, "tools", "benchmark.py"), "small-objects"]
    child = _args(child_argv[3:])
    expected = dict(vars(parent), backbones=["MNV3L"], variants=["base"], seeds=[1], jobs=1, output=str(tmp_path))
    assert vars(child) == expected
    assert so.schedule(child) == so.schedule(parent)  # its result is accepted by the parent


@pytest.mark.skipif(torch_cuda_available(), reason="needs a run that fails: MODEL.DEVICE cuda without a GPU")
def test_failed_process_is_named_and_the_others_kept(tmp_path):
    argv = [*SMOKE, "--output", str(tmp_path), "--jobs", "2", "--device", "cuda", "--variants", "p2"]
    rc, stdout, err = _cli(argv)
    log = os.path.join(str(tmp_path), "runs", "R10-p2-s0", "log.txt")
    assert rc == 1 and "R10-p2-s0: FAILED (exit 1)" in stdout and log in err
    with open(log) as f:
        assert "Traceback" in f.read()  # the child's own error, kept in its log
    assert not os.path.exists(os.path.join(str(tmp_path), "small_objects.json"))


def test_concurrent_writers_of_one_summary_do_not_collide(tmp_path):
    """--jobs processes write the same small_objects.json at once: each write stays atomic and
    none fails (a shared temporary name let one writer rename another's; CI failed on it)."""
    from concurrent.futures import ThreadPoolExecutor

    so = _import("benchmarks.small_objects")
    path = str(tmp_path / "small_objects.json")
    values = [{"writer": i, "rows": list(range(2000))} for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda v: [so._write_json(path, v) for _ in range(25)], values))
    with open(path) as f:
        assert json.load(f) in values
    assert os.listdir(tmp_path) == ["small_objects.json"] and (os.stat(path).st_mode & 0o777) == 0o644


def test_jobs_below_one_is_refused(tmp_path):
    rc, _, err = _cli([*SMOKE, "--output", str(tmp_path), "--jobs", "0"])
    assert rc == 2 and "--jobs 0" in err and not os.path.exists(os.path.join(tmp_path, "runs"))


def _model(cfg):
    from retinakit.modeling import build_model

    return build_model(cfg)


def test_variant_configs_differ_as_intended(tmp_path):
    from retinakit.config import get_cfg

    so = _import("benchmarks.small_objects")
    args = _args(["--output", str(tmp_path), "--size", "128", "--iters", "7", "--batch", "3"])
    base, p2, atss, large = (so.variant_config("R10", v, 1, args) for v in ("base", "p2", "p2_atss", "large_input"))
    preset = get_cfg()
    preset.merge_from_file(so.P2_PRESET)
    for cfg in (base, p2, atss, large):  # the same schedule
        assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.SEED) == (7, 3, 1)
        assert cfg.DATASETS.TRAIN == ("shapes_small_train",) and cfg.DATASETS.TEST == ("shapes_small_val",)
    assert (base.INPUT.MIN_SIZE_TRAIN, large.INPUT.MIN_SIZE_TRAIN, large.INPUT.MAX_SIZE_TEST) == ((128,), (192,), 192)
    assert base.MODEL.ANCHOR_GENERATOR.SIZES == large.MODEL.ANCHOR_GENERATOR.SIZES
    light = so.variant_config("R10", "p2_light_head", 1, args)
    assert (p2.MODEL.RETINANET.NUM_CONVS, light.MODEL.RETINANET.NUM_CONVS) == (2, 1)
    assert light.MODEL.RETINANET.IN_FEATURES == p2.MODEL.RETINANET.IN_FEATURES
    for key in ("RETINANET.IN_FEATURES", "FPN.IN_FEATURES", "RESNET10.OUT_FEATURES", "ANCHOR_GENERATOR.SIZES"):
        node_p2, node_preset = p2.MODEL, preset.MODEL
        for part in key.split("."):
            node_p2, node_preset = getattr(node_p2, part), getattr(node_preset, part)
        assert [list(x) if isinstance(x, (list, tuple)) else x for x in node_p2] == \
               [list(x) if isinstance(x, (list, tuple)) else x for x in node_preset]
    models = {name: _model(cfg) for name, cfg in (("base", base), ("p2", p2), ("atss", atss))}
    shapes = {name: m.backbone.output_shape() for name, m in models.items()}
    assert min(shapes["base"][f].stride for f in models["base"].head_in_features) == 8
    for name in ("p2", "atss"):
        assert models[name].head_in_features[0] == "p2" and shapes[name]["p2"].stride == 4
    assert type(models["p2"].matcher).__name__ == "IoUMatcher"
    assert type(models["atss"].matcher).__name__ == "ATSSMatcher"


def test_mobilenet_variants_get_the_p2_levels(tmp_path):
    so = _import("benchmarks.small_objects")
    args = _args(["--output", str(tmp_path), "--size", "128"])
    cfg = so.variant_config("MNV3L", "p2_atss", 0, args)
    assert list(cfg.MODEL.MOBILENETV3.OUT_FEATURES) == ["res2", "res3", "res4", "res5"]
    model = _model(cfg)
    assert model.backbone.output_shape()["p2"].stride == 4 and type(model.matcher).__name__ == "ATSSMatcher"
    r10 = so.variant_config("R10", "p2", 0, args)
    assert [list(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES] == [list(s) for s in r10.MODEL.ANCHOR_GENERATOR.SIZES]


def test_evaluate_zero_means_every_test_image(tmp_path):
    """`--max-test-images 0` (the default) evaluates the whole test set, with the recall report."""
    from retinakit.data import get_detection_dataset_dicts

    so = _import("benchmarks.small_objects")
    cfg = so.variant_config("R10", "base", 0, _args(["--output", str(tmp_path), "--size", "128"]))
    bbox = so._evaluate(cfg, _model(cfg).eval(), 0)["bbox"]
    expected = _small_boxes_of_first_images(len(get_detection_dataset_dicts(["shapes_small_val"])))
    assert {b: bbox["num_gt"][b] for b in expected} == expected
    assert set(bbox["recall"]) == {"0.05", "0.3", "0.5"}
