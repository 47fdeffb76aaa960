"""Pyramid levels: anchor generation and post-processing with P2 (p2-p7) against P3-P7.

For each input size and level set, with RetinaNet's anchors (4 x stride, 3 octave scales x
3 aspect ratios) and K classes, times in the same run and reports the peak memory of:

* anchors     - DefaultAnchorGenerator.forward with its cache cleared (what the first image
  of a new size pays; later images of that size hit the cache);
* retinakit   - RetinaNetPostProcessor (score threshold, per-level top-k, fused decode, NMS)
  on NCHW head outputs with a realistic logit distribution (benchmarks/postprocess.py's
  background and object blobs, on every level);
* torchvision - RetinaNet.postprocess_detections on the same outputs (the named peer).

Peak memory is the rise of the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs) over the resident set before the call, in MiB, measured in a child
process started with glibc's mmap threshold fixed at 128 KiB (MALLOC_MMAP_THRESHOLD_), so
that every buffer of 128 KiB or more is fresh mapped memory, never a reused free block: it
counts every such buffer alive at the peak, also inside compiled ops ("n/a" without /proc).
The size of the head outputs themselves (allocated by the head, before post-processing) is
reported beside it.

With ``--train-configs A.yaml B.yaml [...]`` it also times training steps of the real models
(build_model, the config's optimizer, SimpleTrainer.run_step: forward, losses, backward, SGD
step) on ``--train-batches`` batches of the config's training set loaded once and kept in
memory (data loading is not timed), the configs taking turns in windows of ``--train-iters``
steps, and reports the median seconds per step, the spread and the ratio to the first config.

    python tools/benchmark.py levels [--sizes 512x512 800x1333] [--levels p3-p7 p2-p7] [--json out.json]
        [--train-configs BASE.yaml P2.yaml [--train-iters 3 --train-repeats 3]]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

NUM_ANCHORS = 9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="+", default=["512x512", "800x1333"], help="input sizes HxW")
    parser.add_argument("--levels", nargs="+", default=["p3-p7", "p2-p7"], help="level ranges pA-pB (the first is the reference)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (torch.set_num_threads)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-torchvision", action="store_true", help="skip the torchvision peer")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument("--train-configs", nargs="*", default=[], help="also time training steps of these configs")
    parser.add_argument("--train-iters", type=int, default=3, help="steps per timed training window")
    parser.add_argument("--train-repeats", type=int, default=3, help="timed training windows per config")
    parser.add_argument("--train-batches", type=int, default=4, help="distinct training batches kept in memory")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)  # the child process of the memory pass


def parse_levels(text: str) -> list[int]:
    """``"p2-p7"`` -> ``[2, 3, 4, 5, 6, 7]``."""
    try:
        lo, hi = (int(p.strip().lstrip("pP")) for p in text.split("-"))
    except ValueError:
        raise SystemExit(f"--levels entries look like p2-p7, got {text!r}") from None
    if not 1 <= lo <= hi <= 9:
        raise SystemExit(f"--levels {text!r}: need 1 <= first <= last <= 9")
    return list(range(lo, hi + 1))


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--sizes entries look like 800x1333, got {text!r}") from None
    return h, w


def make_heads(n: int, hw: tuple[int, int], k: int, levels: list[int], seed: int, objects: int = 25):
    """NCHW logits/deltas per level. Background ~ N(-6.5, 1); each object is a 3x3-location blob
    of one class on two adjacent levels with logits ~ N(-1, 1.5) (as benchmarks/postprocess.py)."""
    g = torch.Generator().manual_seed(seed)
    cls, box = [], []
    for lvl in levels:
        h, w = math.ceil(hw[0] / 2**lvl), math.ceil(hw[1] / 2**lvl)
        cls.append(torch.randn(n, NUM_ANCHORS * k, h, w, generator=g) - 6.5)
        box.append(torch.randn(n, NUM_ANCHORS * 4, h, w, generator=g) * 0.3)
    ch_of = lambda kk: torch.arange(NUM_ANCHORS) * k + kk  # noqa: E731
    for i in range(n):
        for _ in range(objects):
            li = int(torch.randint(0, max(len(levels) - 1, 1), (1,), generator=g))
            kk = int(torch.randint(0, k, (1,), generator=g))
            for ll in sorted({li, min(li + 1, len(levels) - 1)}):
                _, _, h, w = cls[ll].shape
                y, x = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
                ys, xs = slice(max(0, y - 1), y + 2), slice(max(0, x - 1), x + 2)
                blob = cls[ll][i, ch_of(kk), ys, xs]
                cls[ll][i, ch_of(kk), ys, xs] = torch.randn(blob.shape, generator=g) * 1.5 - 1.0
    return cls, box


def anchor_generator(levels: list[int]):
    from retinakit.modeling.anchor_generator import DefaultAnchorGenerator

    strides = [2**lvl for lvl in levels]
    return DefaultAnchorGenerator(strides=strides, sizes=[[4 * s] for s in strides])


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_mib(fn: Callable[[], Any], setup: Callable[[], Any] | None = None) -> float | None:
    """Rise of the peak resident set during ``fn()`` over the resident set before it (MiB),
    after ``setup()`` (e.g. freeing the previous call's results)."""
    if setup is not None:
        setup()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current VmRSS
    except OSError:
        fn()
        return None
    before = _rss_kib("VmRSS")
    fn()
    peak = _rss_kib("VmHWM")
    return None if before is None or peak is None else max(peak - before, 0) / 1024


def _time_interleaved(fns: list[Callable[[], Any]], repeats: int, warmup: int) -> list[list[float]]:
    """Milliseconds of every repeat of each ``fn``, the functions taking turns (load hits all alike)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, times in zip(fns, out):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return out


def setting(hw: tuple[int, int], levels: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Head outputs, anchors and the functions measured for one input size and level set."""
    from benchmarks.postprocess import retinakit_fn, torchvision_fn

    gen = anchor_generator(levels)
    cls, box = make_heads(args.batch, hw, args.num_classes, levels, args.seed)
    pad = 2 ** max(levels[0] + 3, 5)  # the padded input of an FPN whose coarsest input is 32x
    padded = (math.ceil(hw[0] / pad) * pad, math.ceil(hw[1] / pad) * pad)

    def gen_anchors() -> list[Tensor]:
        gen._cache.clear()
        return gen(cls, padded)

    anchors = gen_anchors()
    sizes = [hw] * args.batch
    fns = {"anchors": gen_anchors, "retinakit": retinakit_fn(cls, box, anchors, sizes)}
    if not args.no_torchvision:
        fns["torchvision"] = torchvision_fn(cls, box, anchors, sizes)
    with torch.no_grad():
        cand = sum(int((torch.sigmoid(c) > 0.05).sum()) for c in cls) / args.batch
    meta = {
        "size": f"{hw[0]}x{hw[1]}", "levels": f"p{levels[0]}-p{levels[-1]}", "batch": args.batch,
        "anchors_per_image": sum(a.shape[0] for a in anchors), "candidates_per_image": cand,
        "head_outputs_mib_per_image": sum(c.numel() + b.numel() for c, b in zip(cls, box)) * 4 / 2**20 / args.batch,
        "threads": args.threads,
    }
    return {"meta": meta, "fns": fns, "clear_anchor_cache": gen._cache.clear, "anchors_again": lambda: gen(cls, padded)}


def measure_peaks(s: dict[str, Any]) -> dict[str, float | None]:
    """Peak memory (MiB) of each step of one setting; call after every timing (see the module doc)."""
    peaks = {name: peak_mib(fn) for name, fn in s["fns"].items() if name != "anchors"}
    peaks["anchors"] = peak_mib(s["anchors_again"], setup=s["clear_anchor_cache"])
    return peaks


def _fmt_ms(t: list[float]) -> str:
    return f"{statistics.median(t):.2f} ({min(t):.2f}-{max(t):.2f})"


def _fmt_mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _row(res: dict[str, Any], ref: dict[str, Any], impl: str) -> list[Any]:
    t, r = res["times_ms"][impl], ref["times_ms"][impl]
    return [res["size"], res["levels"], impl, _fmt_ms(t), f"{statistics.median(t) / statistics.median(r):.2f}x",
            _fmt_mib(res["peak_mib"][impl]), res["anchors_per_image"], f"{res['candidates_per_image']:.0f}",
            f"{res['head_outputs_mib_per_image']:.0f}"]


def _trainer(path: str, n_batches: int):
    """SimpleTrainer over ``n_batches`` in-memory batches of ``path``'s training set (no hooks)."""
    import itertools

    from retinakit.config import get_cfg
    from retinakit.data import build_detection_train_loader
    from retinakit.engine.solver import build_optimizer
    from retinakit.engine.train_loop import SimpleTrainer
    from retinakit.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"])
    torch.manual_seed(cfg.SEED)
    batches = list(itertools.islice(build_detection_train_loader(cfg), n_batches))
    model = build_model(cfg).train()
    trainer = SimpleTrainer(model, itertools.cycle(batches), build_optimizer(cfg, model))
    trainer.iter = 0
    return trainer, cfg.SOLVER.IMS_PER_BATCH


def train_pass(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Seconds per training step of each ``--train-configs`` entry, windows interleaved."""
    from retinakit.utils.events import EventStorage

    trainers = [_trainer(p, args.train_batches) for p in args.train_configs]
    times: list[list[float]] = [[] for _ in trainers]
    with EventStorage(0):
        for t, _ in trainers:  # warm-up step
            t.run_step()
        for _ in range(args.train_repeats):
            for (t, _), out in zip(trainers, times):
                t0 = time.perf_counter()
                for _ in range(args.train_iters):
                    t.run_step()
                out.append((time.perf_counter() - t0) / args.train_iters)
    return [{"config": p, "batch": b, "s_per_step": ts} for p, (_, b), ts in zip(args.train_configs, trainers, times)]


MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def memory_pass(args: argparse.Namespace) -> list[dict[str, float | None]]:
    """Peaks of every setting, from a child process with a fixed mmap threshold (module doc)."""
    cmd = [sys.executable, os.path.join(_ROOT, "tools", "benchmark.py"), "levels", "--memory-only", "--sizes", *args.sizes,
           "--levels", *args.levels, "--batch", str(args.batch), "--num-classes", str(args.num_classes),
           "--seed", str(args.seed), "--threads", str(args.threads)] + (["--no-torchvision"] if args.no_torchvision else [])
    out = subprocess.run(cmd, env={**os.environ, **MMAP_ENV}, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def memory_only(args: argparse.Namespace) -> int:
    peaks = []
    for size in args.sizes:
        for levels in args.levels:
            s = setting(parse_size(size), parse_levels(levels), args)
            for fn in s["fns"].values():  # warm-up: one-time allocations are not the step's
                fn()
            peaks.append(measure_peaks(s))
            del s
    print(json.dumps(peaks))
    return 0


def main(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    torch.set_num_threads(args.threads)
    if args.memory_only:
        return memory_only(args)
    level_sets = [parse_levels(x) for x in args.levels]
    results = []
    for size in args.sizes:
        settings = [setting(parse_size(size), levels, args) for levels in level_sets]
        for name in settings[0]["fns"]:
            times = _time_interleaved([s["fns"][name] for s in settings], args.repeats, args.warmup)
            for s, t in zip(settings, times):
                s["meta"].setdefault("times_ms", {})[name] = t
        results.extend(s["meta"] for s in settings)
        del settings
    for res, peaks in zip(results, memory_pass(args)):
        res["peak_mib"] = peaks
    rows = []
    for i, res in enumerate(results):
        ref = results[i - i % len(level_sets)]
        rows.extend(_row(res, ref, impl) for impl in res["times_ms"])
    print(f"batch {args.batch}, {args.num_classes} classes, {NUM_ANCHORS} anchors/location, {args.threads} threads; "
          f"ratios against {args.levels[0]} in the same run (interleaved repeats)")
    print(tabulate(rows, headers=["size", "levels", "step", "median ms (min-max)", f"vs {args.levels[0]}", "peak MiB",
                                  "anchors/img", "cand/img", "head out MiB/img"]))
    train = train_pass(args) if args.train_configs else []
    if train:
        base = statistics.median(train[0]["s_per_step"])
        print(tabulate([[os.path.relpath(r["config"]), r["batch"], _fmt_ms([1e3 * x for x in r["s_per_step"]]),
                         f"{statistics.median(r['s_per_step']) / base:.2f}x"] for r in train],
                       headers=["training config", "batch", "ms/step median (min-max)", "vs first"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "train": train}, f, indent=1)
    return 0
