"""data-load: COCO-sized annotation file, retinakit's loader vs pycocotools' COCO(), first and repeated load.

    python tools/benchmark.py data-load                       # COCO train2017 size (118,287 images, 828k boxes)
    python tools/benchmark.py data-load --images 2000 --annotations 14000 --repeats 3 --ddp-memory

A COCO-like JSON is generated in ``--workdir`` (a temp dir by default; with segmentations,
and every image file present as a hard link of one of 8 real JPEGs, so the header probe
reads real files). Each measurement runs in a fresh Python process (its own peak RSS),
the variants alternating ``--repeats`` times: pycocotools ``COCO(json)``; retinakit's
``load_coco_json(..., serialized=True)`` (what the loaders use) with an empty cache
("first", validation and image probe included, cache written), with a current cache
("repeated"), and the list API from the cache (``DatasetCatalog.get``). Reported: median
and min-max seconds, ratio vs pycocotools, peak RSS and peak RSS above the process's
RSS after its imports (torch is imported by retinakit, not by pycocotools).

``--ddp-memory``: 2 gloo ranks x 2 DataLoader workers load the dataset through the loader
path (rank 0 loads, the other receives) and each worker reads every record of its share:
per rank the serialized records' size and the peak RSS growth of the load; per worker its
private memory (USS) growth over the pass (records shared copy-on-write stay out of it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VARIANTS = ("pycocotools", "retinakit_first", "retinakit_repeated", "retinakit_repeated_list")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from benchmarks.coco_gen import COCO_TRAIN2017

    p.add_argument("--images", type=int, default=COCO_TRAIN2017[0], help="images in the generated file")
    p.add_argument("--annotations", type=int, default=COCO_TRAIN2017[1], help="boxes in the generated file")
    p.add_argument("--repeats", type=int, default=3, help="runs of each variant (alternating)")
    p.add_argument("--no-check-image-files", action="store_true", help="retinakit without the image-header probe")
    p.add_argument("--ddp-memory", action="store_true", help="also measure 2 ranks x 2 workers memory")
    p.add_argument("--workdir", default="", help="where the file is generated (kept; reused when it exists)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--cache", default="", help=argparse.SUPPRESS)


def _rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _uss_mib() -> float:
    """Private (unshared) memory of this process, from smaps_rollup."""
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


def _child(args: argparse.Namespace, js: str, root: str) -> dict:
    """One measurement in this (fresh) process."""
    import time

    if args.child == "pycocotools":
        from pycocotools.coco import COCO

        base = _rss_mib()
        t0 = time.perf_counter()
        COCO(js)
    else:
        from retinakit.data import load_coco_json

        base = _rss_mib()
        check = not args.no_check_image_files
        t0 = time.perf_counter()
        load_coco_json(js, root, check_image_files=check, cache_dir=args.cache, serialized=args.child != "retinakit_repeated_list")
    seconds = time.perf_counter() - t0
    peak = _rss_mib("VmHWM")
    return {"seconds": seconds, "peak_rss_mib": peak, "base_rss_mib": base, "added_rss_mib": peak - base}


def _run_child(args: argparse.Namespace, variant: str, js: str, root: str, cache: str) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "data-load", "--child", variant, "--cache", cache,
           "--workdir", os.path.dirname(js)]
    if args.no_check_image_files:
        cmd.append("--no-check-image-files")
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": ROOT})
    if res.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _dataset(args: argparse.Namespace) -> tuple[str, str]:
    from benchmarks.coco_gen import write_coco_like

    js, root = os.path.join(args.workdir, "annotations.json"), os.path.join(args.workdir, "images")
    if not os.path.isfile(js):
        print(f"generating {args.images} images, {args.annotations} boxes in {args.workdir} ...", flush=True)
        write_coco_like(args.workdir, args.images, args.annotations)
    return js, root


def _load_times(args: argparse.Namespace, js: str, root: str) -> dict:
    results: dict = {v: [] for v in VARIANTS}
    cache = os.path.join(args.workdir, "cache")
    for _ in range(args.repeats):
        for variant in VARIANTS:
            if variant == "retinakit_first":
                shutil.rmtree(cache, ignore_errors=True)
            results[variant].append(_run_child(args, variant, js, root, cache))
    return results


def _ddp_rank(rank: int, js: str, root: str, cache: str, port: int, out: str) -> None:
    import resource

    import torch.distributed as dist
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    from retinakit.config import get_cfg
    from retinakit.data.build import _dicts_from_cfg, register_datasets_from_cfg

    class Touch(IterableDataset):
        """Reads every record of this worker's share; yields its memory figures at the end."""

        def __init__(self, records) -> None:
            self.records = records

        def __iter__(self):
            info = get_worker_info()
            start = _uss_mib()
            boxes = sum(len(self.records[i]["annotations"]) for i in range(info.id, len(self.records), info.num_workers))
            yield {"worker": info.id, "boxes": boxes, "uss_start_mib": start, "uss_end_mib": _uss_mib(),
                   "rss_end_mib": _rss_mib()}

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        cfg = get_cfg()
        cfg.DATASETS.TRAIN_JSON, cfg.DATASETS.TRAIN_IMAGES, cfg.DATASETS.CACHE_DIR = js, root, cache
        names = register_datasets_from_cfg(cfg)[0]
        base = _rss_mib()
        resource.getrusage(resource.RUSAGE_SELF)
        records = _dicts_from_cfg(cfg, names, False)
        peak = _rss_mib("VmHWM")
        workers = list(DataLoader(Touch(records), batch_size=None, num_workers=2))
        result = {"rank": rank, "records_mib": records.nbytes / 2**20, "base_rss_mib": base, "peak_rss_mib": peak,
                  "load_growth_mib": peak - base, "workers": workers}
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def _ddp_child(args: argparse.Namespace, js: str, root: str) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_ddp_rank, args=(js, root, args.cache, port, out), nprocs=2, start_method="fork")
        ranks = []
        for r in range(2):
            with open(os.path.join(out, f"rank{r}.json")) as f:
                ranks.append(json.load(f))
    return {"ranks": ranks}


def _ddp_memory(args: argparse.Namespace, js: str, root: str) -> dict:
    cache = os.path.join(args.workdir, "cache_ddp")
    shutil.rmtree(cache, ignore_errors=True)
    return {phase: _run_child(args, "ddp", js, root, cache) for phase in ("first", "repeated")}


def _print_times(results: dict, args: argparse.Namespace) -> None:
    base = statistics.median(r["seconds"] for r in results["pycocotools"])
    print(f"{'variant':<26} {'s (median)':>10} {'min':>7} {'max':>7} {'vs pycocotools':>15} {'peak RSS MiB':>13} {'above imports':>14}")
    for v, runs in results.items():
        secs = [r["seconds"] for r in runs]
        med = statistics.median(secs)
        peak = statistics.median(r["peak_rss_mib"] for r in runs)
        added = statistics.median(r["added_rss_mib"] for r in runs)
        print(f"{v:<26} {med:>10.2f} {min(secs):>7.2f} {max(secs):>7.2f} {med / base:>14.2f}x {peak:>13.0f} {added:>14.0f}")


def _print_ddp(ddp: dict) -> None:
    print("2 ranks x 2 workers (gloo, CPU): MiB")
    print(f"{'cache':<9} {'rank':>4} {'records':>8} {'load peak growth':>17} {'worker USS growth':>18} {'worker USS':>11}")
    for phase, res in ddp.items():
        for r in res["ranks"]:
            growth = ", ".join(f"{w['uss_end_mib'] - w['uss_start_mib']:.1f}" for w in r["workers"])
            uss = ", ".join(f"{w['uss_end_mib']:.0f}" for w in r["workers"])
            print(f"{phase:<9} {r['rank']:>4} {r['records_mib']:>8.1f} {r['load_growth_mib']:>17.0f} {growth:>18} {uss:>11}")


def main(args: argparse.Namespace) -> int:
    if args.child:
        js, root = os.path.join(args.workdir, "annotations.json"), os.path.join(args.workdir, "images")
        print(json.dumps(_ddp_child(args, js, root) if args.child == "ddp" else _child(args, js, root)))
        return 0
    temp = None
    if not args.workdir:
        temp = tempfile.mkdtemp(prefix="rk_data_load_")
        args.workdir = temp
    try:
        js, root = _dataset(args)
        load_before = os.getloadavg()[0]
        results = _load_times(args, js, root)
        ddp = _ddp_memory(args, js, root) if args.ddp_memory else None
        print(
            f"data-load: {args.images} images, {args.annotations} boxes, {os.path.getsize(js) / 2**20:.0f} MiB JSON; "
            f"image-header probe {'off' if args.no_check_image_files else 'on'}; {args.repeats} runs each, fresh process each; "
            f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"1-min load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after"
        )
        _print_times(results, args)
        if ddp:
            _print_ddp(ddp)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"results": results, "ddp": ddp, "images": args.images, "annotations": args.annotations}, f, indent=1)
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    return 0
