"""small-objects: AP, AP_small, recall per box size, training img/s and latency of small-object variants.

For each backbone (``--backbones``) and variant (``--variants``) and seed (``--seeds``), trains the
real model with the real trainer (DefaultTrainer) on the same schedule (``--iters``, ``--batch``,
``--size``; the backbone's preset for everything else), evaluates it on ``--test-dataset`` (COCO
AP, APs and the recall per box size at TEST.RECALL_SCORE_THRESHOLDS) and times batch-1 eager
inference (median and inter-quartile range over ``--latency-repeats`` calls). Variants:

* ``base``        the backbone's P3-P7 preset with RetinaNet's anchors (32-512 px);
* ``suggested``   ``base`` with the anchors of ``retinakit.analysis.anchors.suggest_anchors``;
* ``p2``          P2-P7 with the anchors of configs/small_objects/retinanet_R10_FPN_P2_shapes_small.yaml;
* ``p2_atss``     ``p2`` with MODEL.RETINANET.MATCHER_NAME "ATSSMatcher";
* ``p2_drop``     ``p2`` with the levels recommended by ``advise_levels`` (top levels no box needs dropped);
* ``p2_light_head`` ``p2`` with half the head's convolutions per branch (MODEL.RETINANET.NUM_CONVS, at least 1);
* ``large_input`` ``base`` at 1.5 x ``--size`` (a larger input instead of P2).

Every run writes OUTPUT/runs/<backbone>-<variant>-s<seed>/result.json and is skipped when that
file exists, so a long benchmark can be continued later (or on a GPU with ``--device cuda``).
``--jobs N`` trains N runs at once, each in its own process (``log.txt`` beside its result;
``OMP_NUM_THREADS`` = cores / N unless it is set): for a machine with many cores, or one GPU
shared by several small trainings. Timings of runs that shared a machine are not comparable
with runs that had it alone.
The summary (mean and sample standard deviation over seeds) is printed as markdown tables and
written to OUTPUT/small_objects.json.

    python tools/benchmark.py small-objects --output output/bench_small_objects \\
        [--backbones R10 MNV3L] [--variants base suggested p2 p2_atss p2_drop p2_light_head large_input] \\
        [--seeds 0 1] [--iters 400] [--batch 8] [--size 256] [--device cpu] [--jobs 1]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:  # the R10 presets import projects.ResNet10.resnet10
    sys.path.insert(0, _ROOT)

P2_PRESET = os.path.join(_ROOT, "configs", "small_objects", "retinanet_R10_FPN_P2_shapes_small.yaml")
R10_BASE = os.path.join(_ROOT, "projects", "ResNet10", "configs", "retinanet_R10_FPN_shapes_small.yaml")
MNV3_BASE = os.path.join(_ROOT, "configs", "quickstart", "retinanet_MNV3_Large_shapes.yaml")

# backbone -> (base config, the key of its bottom-up out-features)
BACKBONES: dict[str, tuple[str, str]] = {
    "R10": (R10_BASE, "MODEL.RESNET10.OUT_FEATURES"),
    "MNV3L": (MNV3_BASE, "MODEL.MOBILENETV3.OUT_FEATURES"),
}
VARIANTS = ("base", "suggested", "p2", "p2_atss", "p2_drop", "p2_light_head", "large_input")
_ANCHOR_KEYS = ("SIZES", "OCTAVE_SCALES", "ASPECT_RATIOS")
_P2_FEATURES = ["res2", "res3", "res4", "res5"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="output/bench_small_objects", help="folder of the runs and the summary")
    p.add_argument("--backbones", nargs="+", default=["R10", "MNV3L"], choices=sorted(BACKBONES))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--iters", type=int, default=400, help="SOLVER.MAX_ITER of every run")
    p.add_argument("--batch", type=int, default=8, help="SOLVER.IMS_PER_BATCH of every run")
    p.add_argument("--size", type=int, default=256, help="training and test image size (large_input: 1.5x)")
    p.add_argument("--train-dataset", default="shapes_small_train")
    p.add_argument("--test-dataset", default="shapes_small_val")
    p.add_argument("--device", default="cpu", help="MODEL.DEVICE of every run (cpu, cuda)")
    p.add_argument("--max-images", type=int, default=400, help="training images the anchor search / level advice read")
    p.add_argument("--latency-repeats", type=int, default=20, help="timed batch-1 inference calls per run")
    p.add_argument("--max-test-images", type=int, default=0, help="evaluate on the first N test images (0: all)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process each (timings then contended)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides applied to every run")


# ----------------------------------------------------------------------------- configs
def _load(path: str) -> Any:
    from retinakit.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(path)
    return cfg


def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _as_list(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_as_list(v) for v in value]
    return value


def p2_overrides(out_features_key: str) -> dict[str, Any]:
    """The P2 preset's level and anchor keys, for a backbone whose out-features key is ``out_features_key``."""
    preset = _load(P2_PRESET)
    over: dict[str, Any] = {out_features_key: list(_P2_FEATURES), "MODEL.FPN.IN_FEATURES": list(_P2_FEATURES),
                            "MODEL.RETINANET.IN_FEATURES": list(preset.MODEL.RETINANET.IN_FEATURES)}
    for k in _ANCHOR_KEYS:
        over[f"MODEL.ANCHOR_GENERATOR.{k}"] = _as_list(_get(preset, f"MODEL.ANCHOR_GENERATOR.{k}"))
    return over


def base_anchor_overrides() -> dict[str, Any]:
    """RetinaNet's anchors of the R10 small-object baseline (the same for every backbone)."""
    base = _load(R10_BASE)
    return {f"MODEL.ANCHOR_GENERATOR.{k}": _as_list(_get(base, f"MODEL.ANCHOR_GENERATOR.{k}")) for k in _ANCHOR_KEYS}


def _merge(cfg: Any, over: dict[str, Any]) -> Any:
    cfg = cfg.clone()
    for k, v in over.items():
        cfg.merge_from_list([k, v if isinstance(v, str) else repr(v)])
    return cfg


def schedule_overrides(args: argparse.Namespace, seed: int, size: int) -> list[Any]:
    """The keys every run shares (schedule, data, size, device), as a merge_from_list list."""
    warmup = max(1, min(50, args.iters // 10))
    return [
        "SOLVER.MAX_ITER", args.iters, "SOLVER.IMS_PER_BATCH", args.batch, "SOLVER.WARMUP_ITERS", warmup,
        "SOLVER.CHECKPOINT_PERIOD", 0, "TEST.EVAL_PERIOD", 0, "SEED", seed, "MODEL.DEVICE", args.device,
        "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", size, "INPUT.MIN_SIZE_TEST", size,
        "INPUT.MAX_SIZE_TEST", size, "EXPORT.EXAMPLE_SIZE", f"[{size},{size}]",
        "DATASETS.TRAIN", f"('{args.train_dataset}',)", "DATASETS.TEST", f"('{args.test_dataset}',)",
        "DATALOADER.NUM_WORKERS", 0,
    ]


def _dicts(args: argparse.Namespace) -> list[dict]:
    from retinakit.data import get_detection_dataset_dicts

    return get_detection_dataset_dicts([args.train_dataset], check_image_files=False)


def _cached(path: str, compute: Any) -> dict[str, Any]:
    """JSON at ``path``, computed and written once (the searched anchors / levels stay fixed across seeds and sessions)."""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    value = compute()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_json(path, value)
    return value


def _suggested(cfg: Any, args: argparse.Namespace, backbone: str) -> dict[str, Any]:
    from retinakit.analysis.anchors import suggest_anchors

    def compute() -> dict[str, Any]:
        s = suggest_anchors(cfg, _dicts(args), max_images=args.max_images or None)
        return {"MODEL.ANCHOR_GENERATOR.SIZES": s.sizes, "MODEL.ANCHOR_GENERATOR.OCTAVE_SCALES": s.octave_scales,
                "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": s.aspect_ratios}

    return _cached(os.path.join(args.output, f"{backbone}-suggested_anchors-{args.size}.json"), compute)


def _dropped(cfg: Any, args: argparse.Namespace, backbone: str) -> dict[str, Any]:
    from retinakit.analysis.anchors import advise_levels

    def compute() -> dict[str, Any]:
        return dict(advise_levels(cfg, _dicts(args), max_images=args.max_images or None).recommended.overrides)

    return _cached(os.path.join(args.output, f"{backbone}-p2_levels-{args.size}.json"), compute)


def variant_config(backbone: str, variant: str, seed: int, args: argparse.Namespace) -> Any:
    """The config of one run: the backbone's preset, the variant's keys, the shared schedule, ``args.opts``."""
    path, out_key = BACKBONES[backbone]
    cfg = _merge(_load(path), base_anchor_overrides())
    size = round(args.size * 1.5) if variant == "large_input" else args.size
    cfg.merge_from_list([*schedule_overrides(args, seed, size), *args.opts])
    if variant == "suggested":
        cfg = _merge(cfg, _suggested(cfg, args, backbone))
    elif variant.startswith("p2"):
        cfg = _merge(cfg, p2_overrides(out_key))
        if variant == "p2_atss":
            cfg.MODEL.RETINANET.MATCHER_NAME = "ATSSMatcher"
        elif variant == "p2_drop":
            cfg = _merge(cfg, _dropped(cfg, args, backbone))
        elif variant == "p2_light_head":
            cfg.MODEL.RETINANET.NUM_CONVS = max(1, cfg.MODEL.RETINANET.NUM_CONVS // 2)
    cfg.OUTPUT_DIR = os.path.join(args.output, "runs", run_name(backbone, variant, seed))
    return cfg


def run_name(backbone: str, variant: str, seed: int) -> str:
    return f"{backbone}-{variant}-s{seed}"


def _result_path(args: argparse.Namespace, run: tuple[str, str, int]) -> str:
    return os.path.join(args.output, "runs", run_name(*run), "result.json")


# ----------------------------------------------------------------------------- one run
def _latency(model: torch.nn.Module, inputs: list[dict], repeats: int, device: torch.device) -> list[float]:
    """Seconds of ``repeats`` batch-1 eager calls (after 3 warm-up calls), cycling over ``inputs``."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    model.eval()
    with torch.inference_mode():
        for i in range(3 + repeats):
            sync()
            t0 = time.perf_counter()
            model([inputs[i % len(inputs)]])
            sync()
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return times


def _quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return q[0], q[1], q[2]


def _test_inputs(cfg: Any, n: int) -> list[dict]:
    from retinakit.data import build_detection_test_loader

    out: list[dict] = []
    for batch in build_detection_test_loader(cfg, cfg.DATASETS.TEST[0]):
        out += batch
        if len(out) >= n:
            break
    return out[:n]


def _evaluate(cfg: Any, model: torch.nn.Module, max_images: int) -> dict[str, Any]:
    """COCO evaluation (with the recall report) of ``model`` on the first ``max_images`` images of DATASETS.TEST[0] (0: all)."""
    from retinakit.data import build_detection_test_loader, get_detection_dataset_dicts
    from retinakit.engine import DefaultTrainer
    from retinakit.evaluation import inference_on_dataset

    name = cfg.DATASETS.TEST[0]
    dicts = get_detection_dataset_dicts([name])[: max_images or None]
    evaluator = DefaultTrainer.build_evaluator(cfg, name)
    return inference_on_dataset(model, build_detection_test_loader(cfg, name, dataset=dicts), evaluator)


def _step_timer(skip: int) -> Any:
    """A trainer hook recording the wall time of every training step (hooks and data loading included)."""
    from retinakit.engine.train_loop import HookBase

    class StepTimer(HookBase):
        def __init__(self) -> None:
            self.start = 0.0
            self.ends: list[float] = []

        def before_step(self) -> None:
            if not self.ends:
                self.start = time.perf_counter()

        def after_step(self) -> None:
            self.ends.append(time.perf_counter())

        def images_per_s(self, batch: int) -> tuple[float, float]:
            """``(images/s after the first `skip` steps, seconds of all steps)``."""
            k = min(skip, len(self.ends) - 1)
            t0 = self.ends[k - 1] if k > 0 else self.start
            return batch * (len(self.ends) - k) / (self.ends[-1] - t0), self.ends[-1] - self.start

    return StepTimer()


def run_one(cfg: Any, args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    """Train, evaluate and time one config; writes and returns OUTPUT_DIR/result.json's content.

    The trainer evaluates nothing (its eval hook keeps only flattened scalars, without the recall
    report); the model is evaluated after training on the first ``--max-test-images`` images of
    DATASETS.TEST[0] (0: all)."""
    from retinakit.engine import DefaultTrainer
    from retinakit.utils.env import seed_all_rng

    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    seed_all_rng(cfg.SEED)
    train_cfg = cfg.clone()
    train_cfg.DATASETS.TEST = ()
    trainer = DefaultTrainer(train_cfg)
    timer = _step_timer(skip=min(5, cfg.SOLVER.MAX_ITER // 5))
    trainer.register_hooks([timer])
    trainer.train()
    model = trainer.model
    bbox = _evaluate(cfg, model, args.max_test_images)["bbox"]
    img_s, train_s = timer.images_per_s(cfg.SOLVER.IMS_PER_BATCH)
    device = next(model.parameters()).device
    lat = _latency(model, _test_inputs(cfg, 8), args.latency_repeats, device)
    q1, med, q3 = _quartiles(lat)
    result = {
        **meta, "head_in_features": list(cfg.MODEL.RETINANET.IN_FEATURES), "matcher": cfg.MODEL.RETINANET.MATCHER_NAME,
        "anchor_sizes": _as_list(cfg.MODEL.ANCHOR_GENERATOR.SIZES), "size": cfg.INPUT.MIN_SIZE_TRAIN[0],
        "iters": cfg.SOLVER.MAX_ITER, "batch": cfg.SOLVER.IMS_PER_BATCH, "device": str(device),
        "AP": bbox["AP"], "AP_small": bbox["APs"], "recall": bbox.get("recall", {}), "num_gt": bbox.get("num_gt", {}),
        "train_seconds": train_s, "train_img_per_s": img_s,
        "latency_ms": {"median": med * 1e3, "q1": q1 * 1e3, "q3": q3 * 1e3, "iqr": (q3 - q1) * 1e3, "repeats": len(lat)},
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    _write_json(os.path.join(cfg.OUTPUT_DIR, "result.json"), result)
    return result


def _write_json(path: str, value: Any) -> None:
    """Atomic write; the temporary file's name is unique, as ``--jobs`` processes write the same
    summary file at the same time (a shared ``path + ".tmp"`` let one rename the other's)."""
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path) or ".")
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=1)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the results private
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- summary
def _mean_sd(xs: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def summarize(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (backbone, variant): mean and sample SD over seeds of every metric; recall per threshold and bin."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["backbone"], r["variant"]), []).append(r)
    rows = []
    for (backbone, variant), rs in groups.items():
        recall = {t: {b: _mean_sd([r["recall"][t][b] for r in rs]) for b in bins} for t, bins in rs[0]["recall"].items()}
        rows.append({
            "backbone": backbone, "variant": variant, "seeds": [r["seed"] for r in rs],
            "head_in_features": rs[0]["head_in_features"], "matcher": rs[0]["matcher"], "size": rs[0]["size"],
            "devices": sorted({r["device"] for r in rs}),
            **{k: _mean_sd([r[k] for r in rs]) for k in ("AP", "AP_small", "train_img_per_s")},
            "latency_ms": _mean_sd([r["latency_ms"]["median"] for r in rs]),
            "latency_iqr_ms": _mean_sd([r["latency_ms"]["iqr"] for r in rs]),
            "recall": recall, "num_gt": rs[0]["num_gt"],
        })
    return rows


def _pm(m: dict[str, float], fmt: str = ".1f") -> str:
    return f"{m['mean']:{fmt}} ± {m['sd']:{fmt}}"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The main table and the recall table (mean ± SD over seeds; AP as COCO's fractions in [0, 1])."""
    out = ["| Backbone | Variant | Levels | Matcher | Size | Seeds | AP | AP_small | Train img/s | Latency ms (median) | IQR ms | Device |",
           "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        levels = f"{r['head_in_features'][0]}-{r['head_in_features'][-1]}"
        out.append(f"| {r['backbone']} | {r['variant']} | {levels} | {r['matcher']} | {r['size']} | {len(r['seeds'])} | "
                   f"{_pm(r['AP'], '.3f')} | {_pm(r['AP_small'], '.3f')} | {_pm(r['train_img_per_s'], '.2f')} | "
                   f"{_pm(r['latency_ms'])} | {_pm(r['latency_iqr_ms'])} | {', '.join(r['devices'])} |")
    if rows and rows[0]["recall"]:
        nonempty = [b for b, n in rows[0]["num_gt"].items() if n and b != "all"]
        cols = [(t, b) for t, bins in rows[0]["recall"].items() for b in bins if b in nonempty]
        out += ["", "Recall per box size (sqrt(area), px; bins with boxes) at score threshold t:", "",
                "| Backbone | Variant | " + " | ".join(f"{b} @{t}" for t, b in cols) + " |",
                "| --- | --- | " + " | ".join("---:" for _ in cols) + " |"]
        for r in rows:
            out.append(f"| {r['backbone']} | {r['variant']} | "
                       + " | ".join(_pm(r["recall"][t][b], ".3f") for t, b in cols) + " |")
    return "\n".join(out)


def schedule(args: argparse.Namespace) -> dict[str, Any]:
    """What must be equal for runs to be compared (a resumed benchmark checks it against the stored runs)."""
    return {"iters": args.iters, "batch": args.batch, "size": args.size, "train_dataset": args.train_dataset,
            "test_dataset": args.test_dataset, "max_test_images": args.max_test_images, "opts": list(args.opts)}


def load_result(path: str, args: argparse.Namespace) -> dict[str, Any]:
    """A stored run, after checking that it was made with this schedule (ValueError naming the file otherwise)."""
    with open(path) as f:
        result = json.load(f)
    if result.get("schedule") != schedule(args):
        raise ValueError(f"{path} was made with {result.get('schedule')}, not {schedule(args)}: "
                         "pass the same flags to continue that benchmark, or a new --output folder.")
    return result


def _child_argv(args: argparse.Namespace, backbone: str, variant: str, seed: int) -> list[str]:
    """The command line that trains one run in its own process: every flag of ``args``, one run, one job."""
    argv = [sys.executable, os.path.join(_ROOT, "tools", "benchmark.py"), "small-objects",
            "--output", os.path.abspath(args.output), "--backbones", backbone, "--variants", variant,
            "--seeds", str(seed), "--iters", str(args.iters), "--batch", str(args.batch), "--size", str(args.size),
            "--train-dataset", args.train_dataset, "--test-dataset", args.test_dataset, "--device", args.device,
            "--max-images", str(args.max_images), "--latency-repeats", str(args.latency_repeats),
            "--max-test-images", str(args.max_test_images), "--jobs", "1"]
    return argv + [str(x) for x in args.opts]


def train_in_processes(args: argparse.Namespace, pending: Sequence[tuple[str, str, int]]) -> list[str]:
    """Train the ``pending`` runs ``(backbone, variant, seed)``, ``args.jobs`` processes at a time,
    each logging to OUTPUT/runs/<name>/log.txt. Returns the log files of the runs that failed."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    for run in pending:  # the shared searched anchors / levels are computed once, here, not by each process
        variant_config(*run, args)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))

    def train(run: tuple[str, str, int]) -> tuple[str, int]:
        folder = os.path.dirname(_result_path(args, run))
        os.makedirs(folder, exist_ok=True)
        log = os.path.join(folder, "log.txt")
        with open(log, "w") as f:
            return log, subprocess.run(_child_argv(args, *run), stdout=f, stderr=subprocess.STDOUT, env=env).returncode

    print(f"training {len(pending)} run(s), {args.jobs} at a time (OMP_NUM_THREADS={env['OMP_NUM_THREADS']}) ...", flush=True)
    failed = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for done in as_completed([pool.submit(train, run) for run in pending]):
            log, code = done.result()
            print(f"{os.path.basename(os.path.dirname(log))}: {'done' if code == 0 else f'FAILED (exit {code})'}", flush=True)
            if code != 0:
                failed.append(log)
    return failed


def main(args: argparse.Namespace) -> int:
    logging.getLogger("retinakit").setLevel(logging.WARNING)
    os.makedirs(args.output, exist_ok=True)
    if args.jobs < 1:
        print(f"ERROR: --jobs {args.jobs}: give 1 (one run after another) or more (runs at once)", file=sys.stderr)
        return 2
    runs = [(b, v, s) for b in args.backbones for v in args.variants for s in args.seeds]
    try:  # a stored run made with another schedule stops the benchmark before any training
        stored = {r: load_result(_result_path(args, r), args) for r in runs if os.path.exists(_result_path(args, r))}
    except ValueError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    pending = [r for r in runs if r not in stored]
    if args.jobs > 1 and pending:
        failed = train_in_processes(args, pending)
        if failed:
            print("ERROR: these runs failed (the others are kept; run the same command again to retry them): "
                  + ", ".join(failed), file=sys.stderr)
            return 1
    results = []
    for run in runs:
        if run in stored:
            print(f"{run_name(*run)}: result exists, skipped ({_result_path(args, run)})")
            results.append(stored[run])
        elif args.jobs > 1:  # trained above, in its own process
            results.append(load_result(_result_path(args, run), args))
        else:
            print(f"{run_name(*run)}: training {args.iters} iterations x {args.batch} images ...", flush=True)
            meta = {"backbone": run[0], "variant": run[1], "seed": run[2], "schedule": schedule(args)}
            results.append(run_one(variant_config(*run, args), args, meta))
    rows = summarize(results)
    table = markdown(rows)
    threads = sorted({r["threads"] for r in results})
    print(f"\n{args.iters} iterations, batch {args.batch}, size {args.size}, {args.train_dataset} -> {args.test_dataset}, "
          f"device {args.device}, {'/'.join(map(str, threads))} threads per run; mean ± SD over seeds {args.seeds}\n")
    print(table)
    _write_json(os.path.join(args.output, "small_objects.json"),
                {"args": {k: v for k, v in vars(args).items() if k != "func"}, "summary": rows, "runs": results})
    print(f"\nWrote {os.path.join(args.output, 'small_objects.json')}")
    return 0
