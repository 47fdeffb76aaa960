"""data: images/s of the torch and DALI training loaders on the same dataset and settings.

    python tools/benchmark.py data --config-file configs/quickstart/shapes.yaml
    python tools/benchmark.py data --dataset shapes_train --batches 50 --repeats 5 INPUT.MIN_SIZE_TRAIN "(320,)"

Each backend is warmed up, then the backends are timed in alternating windows of
``--batches`` batches, ``--repeats`` windows each (same process, same run, same background
load); the report gives the median images/s, the spread (min-max) and
the DALI/torch ratio. Images are decoded, resized, flipped and turned into Instances exactly
as the trainer receives them; nothing else runs.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-file", default="", help="YAML config (DATASETS.TRAIN / TRAIN_JSON, INPUT.*, DATALOADER.*)")
    p.add_argument("--dataset", action="append", default=[], help="registered dataset name (overrides the config)")
    p.add_argument("--backends", nargs="+", default=["torch", "dali"], choices=["torch", "dali"])
    p.add_argument("--batches", type=int, default=50, help="batches per timed window")
    p.add_argument("--repeats", type=int, default=5, help="timed windows per backend (spread)")
    p.add_argument("--warmup", type=int, default=10, help="batches before timing")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")


def _cfg(args: argparse.Namespace):
    from retinakit.config import get_cfg

    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.dataset:
        cfg.DATASETS.TRAIN, cfg.DATASETS.TRAIN_JSON = tuple(args.dataset), ""
    if not cfg.DATASETS.TRAIN and not cfg.DATASETS.TRAIN_JSON:
        cfg.DATASETS.TRAIN = ("shapes_train",)
    cfg.SEED = max(cfg.SEED, 0)
    return cfg


def _time_backends(cfg, dataset, backends: list, args) -> dict:
    """Warm every backend up, then time them in alternating windows, so that background
    load on the machine hits all of them alike."""
    from retinakit.data import build_detection_train_loader

    iters = {}
    for b in backends:
        c = cfg.clone()
        c.DATALOADER.BACKEND = b
        iters[b] = iter(build_detection_train_loader(c, dataset=dataset))
        for _ in range(args.warmup):
            next(iters[b])
    rates: dict = {b: [] for b in backends}
    for _ in range(args.repeats):
        for b, it in iters.items():
            t0 = time.perf_counter()
            n = sum(len(x) for x in itertools.islice(it, args.batches))
            rates[b].append(n / (time.perf_counter() - t0))
    return rates


def main(args: argparse.Namespace) -> int:
    import torch

    from retinakit.data import get_detection_dataset_dicts
    from retinakit.data.build import get_train_dataset_names
    from retinakit.data.dali import dali_available

    cfg = _cfg(args)
    dataset = get_detection_dataset_dicts(get_train_dataset_names(cfg))
    backends = [b for b in args.backends if b != "dali" or dali_available()]
    if len(backends) < len(args.backends):
        print("NVIDIA DALI is not installed (pip install 'retinakit[dali]'): timing the torch loader only.")
    load_before = os.getloadavg()[0]
    results = _time_backends(cfg, dataset, backends, args)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and cfg.DATALOADER.DALI.DEVICE != "cpu" else "CPU"
    print(
        f"data loaders: {len(dataset)} images ({', '.join(get_train_dataset_names(cfg))}), IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH}, "
        f"MIN_SIZE_TRAIN {tuple(cfg.INPUT.MIN_SIZE_TRAIN)}, MAX_SIZE_TRAIN {cfg.INPUT.MAX_SIZE_TRAIN}, flip {cfg.INPUT.RANDOM_FLIP}; "
        f"torch NUM_WORKERS {cfg.DATALOADER.NUM_WORKERS}, DALI {cfg.DATALOADER.DALI.NUM_THREADS} threads on {device}; "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"1-min load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after"
    )
    print(f"{'backend':<8} {'images/s (median)':>18} {'min':>8} {'max':>8}  ratio vs torch")
    base = statistics.median(results["torch"]) if "torch" in results else None
    for b, rates in results.items():
        med = statistics.median(rates)
        ratio = f"{med / base:.2f}x" if base else "-"
        print(f"{b:<8} {med:>18.1f} {min(rates):>8.1f} {max(rates):>8.1f}  {ratio}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "images": len(dataset), "config": args.config_file, "opts": args.opts}, f, indent=1)
    return 0
