"""Inference: torchvision RetinaNet vs retinakit eager, ONNX Runtime FP32 and INT8 Q/DQ (batch 1).

R50-FPN (configs/COCO-Detection/retinanet_R_50_FPN_torchvision.yaml, torchvision's exact
architecture) at 800 px: torchvision's ``retinanet_resnet50_fpn`` with seeded random
weights, the same weights converted into retinakit, and retinakit's end-to-end ONNX export
(FP32; FP32 with its 3x3 convolutions rewritten as Winograd F(4x4,3x3), as
``deploy.py --winograd`` writes it; INT8 Q/DQ made by NVIDIA Model Optimizer, "max"
calibration on a few synthetic images at the same size; and the INT8 model in ONNX Runtime's
CPU layout, ``EXPORT.INT8.ORT_CPU_MODEL``, calibrated on the same images). Every variant runs the whole
pipeline on one uint8 image (model preprocessing, backbone, head, decode, NMS) in the same
process; after ``--warmup`` calls each, the variants are timed in ``--repeats`` interleaved
rounds (each variant once per round); each figure is the median over the rounds, with the
inter-quartile range. Ratios are torchvision's median / variant's median (> 1: faster).

    python tools/benchmark.py inference [--size 800 1216] [--repeats 15] [--threads 2] [--json out.json]

With ``--device cuda`` (or ``--eager-only``) it times the PyTorch variants at each of
``--batch-sizes`` instead: torchvision and retinakit eager in FP32 and under autocast (FP16 on
CUDA, BF16 on CPU), retinakit's predictor form (folded + channels_last) and, with
``--compile``, that form under ``torch.compile``; ONNX Runtime's CUDA provider when installed.
Figures are per batch (median, IQR) and images/s; ratios against torchvision FP32 eager at the
same batch size.

    python tools/benchmark.py inference --device cuda --batch-sizes 1 32 [--compile] [--json out.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

CONFIG = os.path.join(_ROOT, "configs", "COCO-Detection", "retinanet_R_50_FPN_torchvision.yaml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-file", default=CONFIG, help="retinakit config equal to torchvision's architecture")
    p.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"), help="input image size")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    p.add_argument("--skip-int8", action="store_true", help="skip the INT8 Q/DQ model (calibration takes minutes)")
    p.add_argument("--calibration-images", type=int, default=4)
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda: the PyTorch variants per batch size)")
    p.add_argument("--eager-only", action="store_true", help="the PyTorch variants per batch size, also on CPU")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1], help="with --device cuda / --eager-only")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the predictor form")
    p.add_argument("--onnx", action="store_true",
                   help="with --eager-only on CPU: also the e2e ONNX in ONNX Runtime (on CUDA: always, when its provider is installed)")


def _no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return fn()

    return run


def _time_interleaved(
    fns: dict[str, Callable[[], Any]], warmup: int, repeats: int, sync: Callable[[], None] = lambda: None
) -> dict[str, dict[str, float]]:
    """Median, IQR and minimum (ms) per variant: ``warmup`` calls each, then ``repeats`` rounds
    in which every variant runs once in turn, so that a change of machine speed during the
    run hits all variants alike instead of whichever happened to be timed then. ``sync`` waits
    for queued device work (before the clock starts and before it stops)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    ts: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            ts[name].append((time.perf_counter() - t0) * 1000.0)
    out = {}
    for name, t in ts.items():
        q1, q3 = np.percentile(t, [25, 75])
        out[name] = {"median_ms": statistics.median(t), "iqr_ms": float(q3 - q1), "min_ms": min(t)}
    return out


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A uint8 ``[3, H, W]`` image with smooth background and a few bright rectangles."""
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.interpolate(torch.rand(1, 3, h // 32, w // 32, generator=g), size=(h, w), mode="bilinear")[0] * 160
    for _ in range(12):
        y, x = int(torch.randint(0, h - 100, (1,), generator=g)), int(torch.randint(0, w - 100, (1,), generator=g))
        img[:, y : y + 80, x : x + 90] = torch.rand(3, 1, 1, generator=g) * 255
    return img.clamp(0, 255).to(torch.uint8)


def main(args: argparse.Namespace) -> int:
    import torchvision

    from retinakit.checkpoint.model_loading import load_model_weights
    from retinakit.config import get_cfg
    from retinakit.export import (
        calibration_arrays,
        export_onnx,
        load_predictor,
        model_metadata,
        quantize_int8,
        winograd_onnx,
    )
    from retinakit.modeling import build_model, fuse_frozen_batchnorm, prepare_for_inference

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tv = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None).eval()
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.MODEL.DEVICE = "cpu"
    rk = build_model(cfg).eval()
    load_model_weights(rk, {"model": tv.state_dict()}, "torchvision retinanet_resnet50_fpn (random)", cfg=cfg)
    h, w = args.size
    if args.device != "cpu" or args.eager_only:
        return _main_eager_batches(args, tv, rk, cfg)
    img = _image(h, w)
    variants: dict[str, Callable[[], Any]] = {"torchvision eager": _no_grad(lambda: tv([img.float() / 255.0]))}
    variants["retinakit eager"] = _no_grad(lambda: rk([{"image": img}]))
    rk_cl = copy.deepcopy(rk).to(memory_format=torch.channels_last)
    variants["retinakit eager channels_last"] = _no_grad(lambda: rk_cl([{"image": img}]))
    rk_fused = copy.deepcopy(rk)
    fuse_frozen_batchnorm(rk_fused)
    variants["retinakit eager, FrozenBN folded"] = _no_grad(lambda: rk_fused([{"image": img}]))
    # What DefaultPredictor / load_predictor(.pth) run: FrozenBN folded + channels_last.
    rk_pred = prepare_for_inference(copy.deepcopy(rk))
    variants["retinakit eager, predictor (folded + channels_last)"] = _no_grad(lambda: rk_pred([{"image": img}]))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = os.path.join(tmp, "model.onnx")
        export_onnx(rk, fp32, example_size=(1, h, w), metadata=model_metadata(cfg, rk))
        pred = load_predictor(fp32, threads=args.threads)
        variants["retinakit ONNX Runtime FP32"] = lambda: pred([img])
        wino = winograd_onnx(fp32, os.path.join(tmp, "model_winograd.onnx"), cfg.EXPORT.WINOGRAD_MIN_CHANNELS)
        pred_w = load_predictor(wino, threads=args.threads)
        variants["retinakit ONNX Runtime FP32, Winograd 3x3"] = lambda: pred_w([img])
        if not args.skip_int8:
            cal_dir = os.path.join(tmp, "cal")
            os.makedirs(cal_dir)
            from PIL import Image

            for i in range(args.calibration_images):
                Image.fromarray(_image(h, w, seed=100 + i).permute(1, 2, 0).numpy()).save(os.path.join(cal_dir, f"{i}.png"))
            data = calibration_arrays(cfg, cal_dir, args.calibration_images, pred.metadata["size_divisibility"])
            int8 = quantize_int8(fp32, os.path.join(tmp, "int8.onnx"), calibration_data=data, method="max")
            pred8 = load_predictor(int8, threads=args.threads)
            variants["retinakit ONNX Runtime INT8 Q/DQ"] = lambda: pred8([img])
            # EXPORT.INT8.ORT_CPU_MODEL: Q/DQ on conv outputs too, U8S8, which ONNX Runtime fuses into QLinearConv.
            from retinakit.export.quantize_ort import quantize_int8_ort

            int8_ort = quantize_int8_ort(fp32, os.path.join(tmp, "int8_ort.onnx"), calibration_data=data)
            pred8o = load_predictor(int8_ort, threads=args.threads)
            variants["retinakit ONNX Runtime INT8, ORT CPU layout"] = lambda: pred8o([img])
        results = _time_interleaved(variants, args.warmup, args.repeats)
    base = results["torchvision eager"]["median_ms"]
    print(f"batch 1, {h}x{w}, {args.threads} threads, median of {args.repeats} (IQR), speed-up vs torchvision eager")
    print(f"{'variant':52s} {'median ms':>10s} {'IQR ms':>8s} {'speed-up':>9s}")
    for name, r in results.items():
        r["speedup_vs_torchvision"] = base / r["median_ms"]
        print(f"{name:52s} {r['median_ms']:10.1f} {r['iqr_ms']:8.1f} {r['speedup_vs_torchvision']:8.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": [h, w], "threads": args.threads, "repeats": args.repeats, "results": results}, f, indent=2)
    return 0


def _autocast(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def run() -> Any:
        with torch.autocast(device.type, dtype=dtype):
            return fn()

    return run


def _eager_variants(
    tv: Any, rk: Any, pred: Any, compiled: Any, ort_pred: Any, imgs: list[torch.Tensor], device: torch.device
) -> dict[str, Callable[[], Any]]:
    """The variants on one batch ``imgs`` (uint8 ``[3, H, W]`` each, already on ``device``).

    ``pred``: ``rk`` in its predictor form (folded + channels_last); ``compiled``: ``torch.compile``
    of it, or ``None``; ``ort_pred``: the ONNX Runtime predictor, or ``None``. All are made once,
    for every batch size."""
    low = "FP16" if device.type == "cuda" else "BF16"
    tv_in = [i.float() / 255.0 for i in imgs]
    rk_in = [{"image": i} for i in imgs]
    out: dict[str, Callable[[], Any]] = {
        "torchvision eager FP32": _no_grad(lambda: tv(tv_in)),
        f"torchvision eager {low} autocast": _no_grad(_autocast(lambda: tv(tv_in), device)),
        "retinakit eager FP32": _no_grad(lambda: rk(rk_in)),
        f"retinakit eager {low} autocast": _no_grad(_autocast(lambda: rk(rk_in), device)),
        "retinakit predictor FP32 (folded + channels_last)": _no_grad(lambda: pred(rk_in)),
        f"retinakit predictor {low} autocast (folded + channels_last)": _no_grad(_autocast(lambda: pred(rk_in), device)),
    }
    if compiled is not None:
        out[f"retinakit predictor {low} autocast, torch.compile"] = _no_grad(_autocast(lambda: compiled(rk_in), device))
    if ort_pred is not None:
        host = [i.cpu() for i in imgs]
        out["retinakit ONNX Runtime FP32"] = lambda: ort_pred(host)
    return out


def _onnx_predictor(args: argparse.Namespace, rk: Any, cfg: Any, device: torch.device, tmp: str, notes: list[str]) -> Any:
    """The e2e ONNX export of ``rk`` in ONNX Runtime on ``device``, or ``None`` (with a note why)."""
    import onnxruntime as ort

    from retinakit.export import export_onnx, load_predictor, model_metadata

    providers = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" not in providers:
        notes.append(f"ONNX Runtime on CUDA: not timed, its CUDA provider is not installed (providers: {providers})")
        return None
    if not args.onnx and device.type != "cuda":
        return None
    path = os.path.join(tmp, "model.onnx")
    cpu_model = copy.deepcopy(rk).cpu()
    export_onnx(cpu_model, path, example_size=(1, *args.size), metadata=model_metadata(cfg, cpu_model))
    return load_predictor(path, device=device.type, threads=args.threads)


def _report(res: dict[str, dict[str, float]], batch: int, title: str) -> dict[str, dict[str, float]]:
    """Adds images/s and the speed-up vs torchvision FP32 eager to ``res``; prints the table."""
    base = res["torchvision eager FP32"]["median_ms"]
    print(f"{title}, median of the rounds (IQR), speed-up vs torchvision eager FP32")
    print(f"{'variant':64s} {'median ms':>10s} {'IQR ms':>8s} {'img/s':>8s} {'speed-up':>9s}")
    for name, r in res.items():
        r["images_per_s"] = batch * 1000.0 / r["median_ms"]
        r["speedup_vs_torchvision"] = base / r["median_ms"]
        print(f"{name:64s} {r['median_ms']:10.1f} {r['iqr_ms']:8.1f} {r['images_per_s']:8.1f} {r['speedup_vs_torchvision']:8.2f}x")
    return res


def _main_eager_batches(args: argparse.Namespace, tv: Any, rk: Any, cfg: Any) -> int:
    """``--device cuda`` / ``--eager-only``: the PyTorch variants at each batch size."""
    from retinakit.modeling import prepare_for_inference

    device = torch.device(args.device)
    tv, rk = tv.to(device), rk.to(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    h, w = args.size
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    results: dict[str, dict[str, dict[str, float]]] = {}
    notes: list[str] = []
    pred = prepare_for_inference(copy.deepcopy(rk))
    compiled = torch.compile(pred) if args.compile else None
    with tempfile.TemporaryDirectory() as tmp:
        ort_pred = _onnx_predictor(args, rk, cfg, device, tmp, notes)
        for b in args.batch_sizes:
            imgs = [_image(h, w, seed=i).to(device) for i in range(b)]
            try:
                res = _time_interleaved(_eager_variants(tv, rk, pred, compiled, ort_pred, imgs, device), args.warmup, args.repeats, sync)
            except Exception as e:  # torch.compile may not support this model/toolchain: time the rest
                if compiled is None:
                    raise
                notes.append(f"torch.compile failed at batch {b}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                compiled = None
                res = _time_interleaved(_eager_variants(tv, rk, pred, None, ort_pred, imgs, device), args.warmup, args.repeats, sync)
            results[str(b)] = _report(res, b, f"batch {b}, {h}x{w}, {dev}")
    for n in notes:
        print(n)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": [h, w], "device": dev, "repeats": args.repeats, "notes": notes, "batches": results}, f, indent=2)
    return 0
