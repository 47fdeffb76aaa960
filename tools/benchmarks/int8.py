"""INT8 calibration recipes: AP and ONNX Runtime latency of each against the FP32 export, same run.

For a trained model and a validation set: exports the e2e ONNX once, then for every
calibration method x number of calibration images makes Model Optimizer's INT8 Q/DQ model
(the TensorRT layout, ``model_int8.onnx``) and, for ``max``, the ONNX Runtime CPU layout
(``EXPORT.INT8.ORT_CPU_MODEL``), and evaluates each like ``deploy --verify`` (batch 1, COCO AP,
median latency with IQR). Ratios: ONNX Runtime FP32 latency / variant latency (> 1: faster).

    python tools/benchmark.py int8 --config-file CFG --weights W --calibration-images DIR \\
        --val-images DIR --val-annotations JSON [--methods max entropy percentile] [--num-images 8 32] \\
        [--ort-per-tensor] [--json out.json] [KEY VALUE ...]   # e.g. EXPORT.INT8.PERCENTILE 99.9
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--calibration-images", required=True)
    p.add_argument("--val-images", required=True)
    p.add_argument("--val-annotations", required=True)
    p.add_argument("--max-val-images", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=["max", "entropy", "percentile"])
    p.add_argument("--num-images", type=int, nargs="+", default=[32])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ort-per-tensor", action="store_true",
                   help="also the ORT CPU layout with one weight scale per tensor (deploy writes per-channel)")
    p.add_argument("--json", default="")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")


def main(args: argparse.Namespace) -> int:
    from retinakit.config import get_cfg
    from retinakit.data import build_inference_preprocess
    from retinakit.export import Predictor, calibration_arrays, export_onnx, load_model, load_predictor, model_metadata, quantize_int8
    from retinakit.export.predictor import TorchBackend
    from retinakit.export.quantize_ort import quantize_int8_ort
    from retinakit.export.verify import evaluate, load_valset

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list([*args.opts, "MODEL.DEVICE", "cpu"])
    model = load_model(cfg, args.weights)
    meta = model_metadata(cfg, model)
    val = load_valset(args.val_images, args.val_annotations, args.max_val_images)
    rows = []

    def run(name: str, predictor) -> None:
        r = evaluate(predictor, val)
        rows.append({"variant": name, "ap": r.ap, "latency_ms": r.latency_ms, "iqr_ms": r.latency_spread_ms})
        print(f"{name:40s} AP {r.ap:6.2f}  {r.latency_ms:7.1f} ms (IQR {r.latency_spread_ms:.1f})", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = os.path.join(tmp, "model.onnx")
        h, w = cfg.EXPORT.EXAMPLE_SIZE
        export_onnx(model, fp32, example_size=(2, int(h), int(w)), metadata={**meta, "precision": "fp32"})
        run("pytorch fp32", Predictor(TorchBackend(model), build_inference_preprocess(cfg)))
        run("onnxruntime fp32", load_predictor(fp32, threads=args.threads))
        for n in args.num_images:
            data = calibration_arrays(cfg, args.calibration_images, n, meta["size_divisibility"])
            for method in args.methods:
                path = quantize_int8(fp32, os.path.join(tmp, f"int8_{method}_{n}.onnx"), calibration_data=data, method=method,
                                     percentile=cfg.EXPORT.INT8.PERCENTILE)
                run(f"int8 Q/DQ (TensorRT layout) {method} n={n}", load_predictor(path, threads=args.threads))
            path = quantize_int8_ort(fp32, os.path.join(tmp, f"int8_ort_{n}.onnx"), calibration_data=data)
            run(f"int8 ORT CPU layout max n={n}", load_predictor(path, threads=args.threads))
            if args.ort_per_tensor:
                path = quantize_int8_ort(fp32, os.path.join(tmp, f"int8_ort_pt_{n}.onnx"), calibration_data=data, per_channel=False)
                run(f"int8 ORT CPU layout max per-tensor n={n}", load_predictor(path, threads=args.threads))
    base = rows[1]
    print(f"\n{'variant':40s} {'AP':>6s} {'rel. AP':>8s} {'ms':>7s} {'IQR':>6s} {'vs ORT FP32':>11s}")
    for r in rows:
        r["relative_ap"] = r["ap"] / base["ap"] if base["ap"] else float("nan")
        r["speedup_vs_ort_fp32"] = base["latency_ms"] / r["latency_ms"]
        print(f"{r['variant']:40s} {r['ap']:6.2f} {r['relative_ap']:8.3f} {r['latency_ms']:7.1f} {r['iqr_ms']:6.1f} "
              f"{r['speedup_vs_ort_fp32']:10.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config_file, "rows": rows}, f, indent=2)
    return 0
