"""Backbones: size, compute and CPU latency of RetinaNet with MobileNetV3-Large/-Small, ResNet-10 and ResNet-18.

Every detector has the COCO settings of configs/COCO-Detection (FPN P3-P7 with 256 channels,
4-conv heads, 80 classes, 9 anchors) and seeded random weights; only the bottom-up network
differs: MobileNetV3-Large / -Small (retinanet_MNV3_{Large,Small}_FPN_1x.yaml), ResNet-10 of
projects/ResNet10 (ResNet-18 widths, one block per stage; FPN from its res3-res5) and
ResNet-18 (retinanet_R_18_FPN_1x.yaml). Figures:

* parameters of the bottom-up network and of the whole detector (frozen BatchNorms' scale and
  shift included, as in the ImageNet models; running statistics not);
* GMACs at ``--size`` (multiply-accumulates; ``torch.utils.flop_counter.FlopCounterMode``
  FLOPs / 2, convolutions and matrix products only) of the bottom-up network and of backbone +
  FPN + head (``model.inference_outputs``; decoding and NMS are not counted);
* latency at batch 1 of the whole pipeline on one uint8 image (preprocessing, network, decode,
  NMS): PyTorch eager (``torch.inference_mode``) and the end-to-end ONNX export in ONNX Runtime
  (``load_predictor``). After ``--warmup`` calls each, all variants are timed in ``--repeats``
  interleaved rounds; median and inter-quartile range per variant, and the ratio R-18 / variant
  (> 1: faster than ResNet-18) within the same runtime.

    python tools/benchmark.py backbones [--size 512 512] [--repeats 15] [--threads 2] [--json out.json]
        [--fpn-channels 64 --num-convs 2]   # a light head (the shapes quickstart's), where the backbone matters more
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

_COCO = os.path.join(_ROOT, "configs", "COCO-Detection")
# name -> (config file, overrides)
MODELS: dict[str, tuple[str, list[Any]]] = {
    "MobileNetV3-Large": (os.path.join(_COCO, "retinanet_MNV3_Large_FPN_1x.yaml"), []),
    "MobileNetV3-Small": (os.path.join(_COCO, "retinanet_MNV3_Small_FPN_1x.yaml"), []),
    "ResNet-10": (os.path.join(_COCO, "retinanet_R_18_FPN_1x.yaml"), [
        "CUSTOM_IMPORTS", ["projects.ResNet10.resnet10"], "MODEL.BACKBONE.NAME", "build_retinanet_fpn_backbone",
        "MODEL.FPN.BOTTOM_UP", "build_resnet10_backbone", "MODEL.FPN.TOP_BLOCK_IN", "p5",
    ]),
    "ResNet-18": (os.path.join(_COCO, "retinanet_R_18_FPN_1x.yaml"), []),
}
PEER = "ResNet-18"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"), help="input image size")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--fpn-channels", type=int, default=0, help="MODEL.FPN.OUT_CHANNELS (0: the config's 256)")
    p.add_argument("--num-convs", type=int, default=0, help="MODEL.RETINANET.NUM_CONVS (0: the config's 4)")
    p.add_argument("--json", default="", help="also write the results here")


def build(name: str, h: int, w: int, extra: list[Any] | None = None) -> tuple[Any, torch.nn.Module]:
    """``(cfg, eval-mode RetinaNet for h x w images, not resized)`` with seeded random weights
    (no file is read or downloaded)."""
    from retinakit.config import get_cfg
    from retinakit.config.config import import_custom_modules
    from retinakit.modeling import build_model

    path, opts = MODELS[name]
    if opts[:1] == ["CUSTOM_IMPORTS"]:
        import_custom_modules(opts[1])  # before get_cfg(): the project adds its config keys
    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", min(h, w),
                         "INPUT.MAX_SIZE_TEST", max(h, w), *opts, *(extra or [])])
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def count_params(module: torch.nn.Module) -> int:
    """Learned values: parameters plus the scale and shift of frozen BatchNorms (buffers, but
    parameters of the ImageNet model); running statistics are not counted."""
    from retinakit.modeling.backbone.norm import FrozenBatchNorm2d

    frozen = sum(m.weight.numel() + m.bias.numel() for m in module.modules() if isinstance(m, FrozenBatchNorm2d))
    return sum(p.numel() for p in module.parameters()) + frozen


def gmacs(fn: Callable[[], Any]) -> float:
    """Multiply-accumulates (x 1e9) of ``fn()``: FlopCounterMode's FLOPs / 2."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        fn()
    return counter.get_total_flops() / 2e9


def _image(h: int, w: int) -> torch.Tensor:
    """A uint8 ``[3, H, W]`` image: smooth background plus a few bright rectangles."""
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.interpolate(torch.rand(1, 3, h // 32, w // 32, generator=g), size=(h, w), mode="bilinear")[0] * 160
    rh, rw = min(60, h // 4), min(70, w // 4)  # 60 x 70 px from 280 px up
    for _ in range(8):
        y, x = int(torch.randint(0, h - rh - 20, (1,), generator=g)), int(torch.randint(0, w - rh - 20, (1,), generator=g))
        img[:, y : y + rh, x : x + rw] = torch.rand(3, 1, 1, generator=g) * 255
    return img.clamp(0, 255).to(torch.uint8)


def measure_size(name: str, h: int, w: int, extra: list[Any] | None = None) -> dict[str, float]:
    """Parameters (millions) and GMACs of the bottom-up network and of the whole network."""
    _, model = build(name, h, w, extra)
    x = torch.zeros(1, 3, h, w)
    images = model.preprocess_image([{"image": torch.zeros(3, h, w, dtype=torch.uint8)}])
    return {
        "backbone_params_m": count_params(model.backbone.bottom_up) / 1e6,
        "params_m": count_params(model) / 1e6,
        "backbone_gmacs": gmacs(lambda: model.backbone.bottom_up(x)),
        "gmacs": gmacs(lambda: model.inference_outputs(images)),
    }


def main(args: argparse.Namespace) -> int:
    from retinakit.export import export_onnx, load_predictor, model_metadata

    torch.set_num_threads(args.threads)
    h, w = args.size
    img = _image(h, w)
    extra: list[Any] = []
    if args.fpn_channels:
        extra += ["MODEL.FPN.OUT_CHANNELS", args.fpn_channels]
    if args.num_convs:
        extra += ["MODEL.RETINANET.NUM_CONVS", args.num_convs]
    sizes = {name: measure_size(name, h, w, extra) for name in args.models}
    variants: dict[str, Callable[[], Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            cfg, model = build(name, h, w, extra)
            variants[f"{name} eager"] = (lambda m: lambda: _eager(m, img))(model)
            path = os.path.join(tmp, f"{name}.onnx")
            export_onnx(model, path, example_size=(1, h, w), metadata=model_metadata(cfg, model))
            variants[f"{name} ONNX Runtime"] = (lambda p: lambda: p([img]))(load_predictor(path, threads=args.threads))
        from benchmarks.inference import _time_interleaved  # one interleaved timer for the benchmarks

        timing = _time_interleaved(variants, args.warmup, args.repeats)
    print(f"batch 1, {h}x{w}, {args.threads} threads, median of {args.repeats} interleaved rounds (IQR) [min]; "
          f"x = {PEER} / model; overrides {extra or 'none'}")
    print(f"{'model':20s} {'bb Mparams':>10s} {'Mparams':>8s} {'bb GMACs':>9s} {'GMACs':>7s} "
          f"{'eager ms':>24s} {'ORT ms':>24s}")
    results: dict[str, Any] = {}
    for name in args.models:
        s, e, o = sizes[name], timing[f"{name} eager"], timing[f"{name} ONNX Runtime"]
        results[name] = {**s, "eager": e, "onnxruntime": o}
        if PEER in args.models:
            e["ratio_vs_peer"] = timing[f"{PEER} eager"]["median_ms"] / e["median_ms"]
            o["ratio_vs_peer"] = timing[f"{PEER} ONNX Runtime"]["median_ms"] / o["median_ms"]
        cell = lambda r: f"{r['median_ms']:6.1f} ({r['iqr_ms']:4.1f}) [{r['min_ms']:6.1f}] {r.get('ratio_vs_peer', float('nan')):4.2f}x"  # noqa: E731
        print(f"{name:20s} {s['backbone_params_m']:10.2f} {s['params_m']:8.2f} {s['backbone_gmacs']:9.2f} {s['gmacs']:7.2f} "
              f"{cell(e):>24s} {cell(o):>24s}")
    if args.json:
        with open(args.json, "w") as f:
            summary = {"size": [h, w], "threads": args.threads, "repeats": args.repeats, "overrides": extra}
            json.dump({**summary, "results": results}, f, indent=2)
    return 0


def _eager(model: torch.nn.Module, img: torch.Tensor) -> Any:
    with torch.inference_mode():
        return model([{"image": img}])
