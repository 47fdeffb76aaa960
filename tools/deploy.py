#!/usr/bin/env python
"""Export a trained retinakit model for deployment, and check it.

    python tools/deploy.py --config-file CFG --weights model.pth --output DIR
        [--fp16] [--winograd] [--int8 (--calibration-images DIR | --calibration-cache FILE)
                         [--calibration-cache FILE] [--calibration-method entropy|max|percentile]
                         [--num-calibration-images N]]
        [--tensorrt] [--mode e2e|heads]
        [--verify --val-images DIR --val-annotations JSON [--max-ap-drop 0.01]]
        [--triton-repo DIR [--triton-name NAME] [--max-batch N]] [--deepstream DIR] [KEY VALUE ...]

Writes DIR/model.onnx (FP32), DIR/model_fp16.onnx, DIR/model_winograd.onnx (FP32 with its
3x3 convolutions rewritten as Winograd F(4x4,3x3), for ONNX Runtime on CPU),
DIR/model_int8.onnx (+ the calibration cache, DIR/calibration.cache unless
--calibration-cache names another file) and, with --tensorrt, one TensorRT engine (.plan)
per ONNX model except the Winograd one. --verify evaluates every artefact
(onnxruntime here; TensorRT engines too when TensorRT and a GPU are present) against the
PyTorch model on the validation set and prints backend, precision, latency, AP, ΔAP and
the largest box difference; it also writes DIR/verify.json. An INT8 model whose AP is more
than --max-ap-drop (relative, default EXPORT.INT8.MAX_RELATIVE_AP_DROP = 1%) below the
PyTorch AP fails the run (exit code 1), unless the sensitivity search
(EXPORT.INT8.SENSITIVITY, on by default) finds layers whose FP32 precision brings it within
budget: then DIR/model_int8.onnx is that mixed-precision model (the all-INT8 one is kept as
DIR/model_int8_plain.onnx) and the layers, their AP and the latency cost are printed and written
to verify.json ("int8_search"); when no candidate meets the budget, the best one is written to
DIR/model_int8_mixed.onnx and the run still fails. Bad inputs exit with code 2 and one message.

--triton-repo DIR writes a Triton model repository, DIR/NAME/{config.pbtxt, labels.txt,
1/model.onnx or 1/model.plan} (the engine of the lowest precision built, else the FP32 ONNX).
--deepstream DIR writes DIR/config_infer_primary_retinakit.txt, DIR/labels.txt and the graph
in the layout of DeepStream's stock NMS parser (FP16/INT8 with --fp16/--int8). See
docs/deployment.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retinakit.utils.errors import UserInputError, exit_code_on_user_error

logger = logging.getLogger("retinakit.deploy")

EXIT_FAILED_CHECK = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="config the weights were trained with")
    p.add_argument("--weights", required=True, help="checkpoint (.pth / .safetensors)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--mode", choices=("e2e", "heads"), default=None, help="ONNX graph kind (default EXPORT.MODE)")
    p.add_argument("--fp16", action="store_true", help="also write a typed FP16 ONNX model")
    p.add_argument("--winograd", action="store_true",
                   help="also write an FP32 ONNX model with Winograd 3x3 convolutions (faster in ONNX Runtime on CPU; "
                        "give TensorRT the plain one)")
    p.add_argument("--int8", action="store_true", help="also write an INT8 Q/DQ ONNX model")
    p.add_argument("--calibration-images", default="", help="folder of calibration images (INT8)")
    p.add_argument("--calibration-cache", default="", help="calibration cache: written after calibration, or reused without images")
    p.add_argument("--calibration-method", choices=("entropy", "max", "percentile"), default=None)
    p.add_argument("--num-calibration-images", type=int, default=None, help="default EXPORT.INT8.NUM_IMAGES")
    p.add_argument("--tensorrt", action="store_true", help="build TensorRT engines (pip install retinakit[tensorrt])")
    p.add_argument("--verify", action="store_true", help="evaluate every artefact against PyTorch")
    p.add_argument("--val-images", default="", help="validation image folder (--verify)")
    p.add_argument("--val-annotations", default="", help="validation COCO JSON (--verify)")
    p.add_argument("--max-val-images", type=int, default=0, help="evaluate only the first N images (0 = all)")
    p.add_argument("--max-ap-drop", type=float, default=None, help="relative INT8 AP tolerance (default EXPORT.INT8.MAX_RELATIVE_AP_DROP)")
    p.add_argument("--triton-repo", default="", help="write a Triton model repository into this folder")
    p.add_argument("--triton-name", default=None, help="Triton model name (default EXPORT.TRITON.NAME)")
    p.add_argument("--max-batch", type=int, default=None, help="Triton max_batch_size (default EXPORT.TRITON.MAX_BATCH_SIZE)")
    p.add_argument("--deepstream", default="", help="write a DeepStream nvinfer config (+ its ONNX graph) into this folder")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


class UserError(UserInputError):
    """Bad arguments or inputs: printed as one message, exit code 2."""


def _check_args(args: argparse.Namespace) -> None:
    if not os.path.isfile(args.config_file):
        raise UserError(f"Config file '{args.config_file}' does not exist.")
    if not os.path.isfile(args.weights):
        raise UserError(f"Weights file '{args.weights}' does not exist.")
    if args.int8 and not args.calibration_images and not (args.calibration_cache and os.path.isfile(args.calibration_cache)):
        raise UserError("--int8 needs --calibration-images DIR, or an existing --calibration-cache FILE to reuse.")
    if args.calibration_images:
        from retinakit.export import list_images

        list_images(args.calibration_images)  # missing or image-less folder: fail before exporting
    if args.verify and not (args.val_images and args.val_annotations):
        raise UserError("--verify needs --val-images DIR and --val-annotations JSON.")
    if (args.triton_name is not None or args.max_batch is not None) and not args.triton_repo:
        raise UserError("--triton-name and --max-batch go with --triton-repo DIR.")
    if args.max_batch is not None and args.max_batch < 1:
        raise UserError(f"--max-batch must be >= 1, got {args.max_batch}.")
    if args.deepstream and args.int8 and not args.calibration_images:
        raise UserError("--deepstream with --int8 calibrates the DeepStream graph itself: it needs --calibration-images DIR.")


def _check_int8_options(args: argparse.Namespace, cfg: Any) -> None:
    """Combinations of INT8 flags/keys that cannot work: one message before the slow export."""
    from retinakit.config import ConfigError
    from retinakit.export import CALIBRATION_METHODS
    from retinakit.export.quantize_ort import ORT_CALIBRATION_METHODS

    i8 = cfg.EXPORT.INT8
    method = args.calibration_method or i8.CALIBRATION_METHOD
    given = [f for f, v in (("--calibration-images", args.calibration_images), ("--calibration-cache", args.calibration_cache),
                            ("--calibration-method", args.calibration_method),
                            ("--num-calibration-images", args.num_calibration_images is not None)) if v]
    if given and not args.int8:
        raise UserError(f"{', '.join(given)} only apply to INT8: add --int8 (or drop them).")
    if args.num_calibration_images is not None and args.num_calibration_images < 0:
        raise UserError(f"--num-calibration-images must be >= 0 (0 = all images), got {args.num_calibration_images}.")
    tol = i8.MAX_RELATIVE_AP_DROP if args.max_ap_drop is None else args.max_ap_drop
    if not 0.0 <= float(tol) < 1.0:
        raise UserError(f"--max-ap-drop / EXPORT.INT8.MAX_RELATIVE_AP_DROP is a relative AP drop in [0, 1) (0.01 = 1%), got {tol}.")
    if not args.int8:
        return
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"EXPORT.INT8.CALIBRATION_METHOD must be one of {CALIBRATION_METHODS}, got {method!r}.")
    if method == "percentile" and not 0.0 < float(i8.PERCENTILE) <= 100.0:
        raise ConfigError(f"EXPORT.INT8.PERCENTILE must be in (0, 100] (e.g. 99.999), got {i8.PERCENTILE}.")
    if int(i8.SENSITIVITY.MAX_LAYERS) < 0 or int(i8.SENSITIVITY.NUM_IMAGES) < 1:
        raise ConfigError("EXPORT.INT8.SENSITIVITY.MAX_LAYERS must be >= 0 and EXPORT.INT8.SENSITIVITY.NUM_IMAGES >= 1, "
                          f"got {i8.SENSITIVITY.MAX_LAYERS} and {i8.SENSITIVITY.NUM_IMAGES}.")
    if i8.ORT_CPU_MODEL and not args.calibration_images:
        raise UserError("EXPORT.INT8.ORT_CPU_MODEL calibrates its own ranges: it needs --calibration-images DIR "
                        "(a calibration cache holds TensorRT-style scales only).")
    if i8.ORT_CPU_MODEL and method not in ORT_CALIBRATION_METHODS:
        raise ConfigError(f"EXPORT.INT8.ORT_CPU_MODEL calibrates with min/max only: use --calibration-method max "
                          f"(got {method!r}), or set EXPORT.INT8.ORT_CPU_MODEL False.")


def _setup_cfg(args: argparse.Namespace) -> Any:
    from retinakit.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    if args.opts:
        cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    if args.mode:
        cfg.EXPORT.MODE = args.mode
    return cfg


def export_all(args: argparse.Namespace, cfg: Any, model: Any) -> tuple:
    """Write the ONNX artefacts; returns ``([(precision, path)], calibration inputs or None)``."""
    from retinakit.export import (
        calibration_arrays,
        convert_fp16,
        export_onnx,
        model_metadata,
        quantize_int8,
        winograd_onnx,
    )

    os.makedirs(args.output, exist_ok=True)
    meta = model_metadata(cfg, model)
    data = None
    method = args.calibration_method or cfg.EXPORT.INT8.CALIBRATION_METHOD
    if args.int8 and args.calibration_images:  # read (and check) the images before the slow steps
        n = cfg.EXPORT.INT8.NUM_IMAGES if args.num_calibration_images is None else args.num_calibration_images
        data = calibration_arrays(cfg, args.calibration_images, n, meta["size_divisibility"])
    fp32 = os.path.join(args.output, "model.onnx")
    logger.info(f"Exporting {cfg.EXPORT.MODE} ONNX to {fp32}")
    h, w = cfg.EXPORT.EXAMPLE_SIZE
    export_onnx(model, fp32, mode=cfg.EXPORT.MODE, opset=cfg.EXPORT.OPSET, example_size=(2, int(h), int(w)),
                metadata={**meta, "precision": "fp32"}, legacy=cfg.EXPORT.LEGACY_EXPORTER)
    out = [("fp32", fp32)]
    if args.fp16:
        path = os.path.join(args.output, "model_fp16.onnx")
        logger.info(f"Converting to typed FP16: {path}")
        out.append(("fp16", convert_fp16(fp32, path)))
    if args.winograd:
        path = os.path.join(args.output, "model_winograd.onnx")
        logger.info(f"Rewriting 3x3 convolutions as Winograd F(4x4,3x3): {path}")
        try:
            out.append(("fp32-winograd", winograd_onnx(fp32, path, cfg.EXPORT.WINOGRAD_MIN_CHANNELS)))
        except ValueError as e:
            raise UserError(f"--winograd: {e}") from None
    if args.int8:
        path = os.path.join(args.output, "model_int8.onnx")
        cache = args.calibration_cache or os.path.join(args.output, "calibration.cache")
        if data is not None:
            logger.info(f"INT8 calibration ({method}) on {len(data['images'])} images")
        else:
            logger.info(f"INT8 from calibration cache {cache} (no images)")
        quantize_int8(fp32, path, calibration_data=data, method=method, percentile=cfg.EXPORT.INT8.PERCENTILE, cache_path=cache,
                      exclude=list(cfg.EXPORT.INT8.EXCLUDE))
        out.append(("int8", path))
        if cfg.EXPORT.INT8.ORT_CPU_MODEL:
            out.append(("int8-ort", _ort_cpu_int8(args, cfg, fp32, data, method)))
    return out, data


def _ort_cpu_int8(args: argparse.Namespace, cfg: Any, fp32: str, data: Any, method: str) -> str:
    """DIR/model_int8_ort.onnx (EXPORT.INT8.ORT_CPU_MODEL): the INT8 layout ONNX Runtime on CPU runs fast."""
    from retinakit.export.quantize_ort import quantize_int8_ort

    path = os.path.join(args.output, "model_int8_ort.onnx")
    logger.info(f"INT8 for ONNX Runtime CPU (QLinearConv layout): {path}")
    return quantize_int8_ort(fp32, path, calibration_data=data, method=method, exclude=list(cfg.EXPORT.INT8.EXCLUDE))


def _check_tensorrt_limits(cfg: Any, model: Any) -> None:
    """Fail before the slow export when the e2e graph would have a TopK that TensorRT cannot build.

    The NMS box-limit warning is logged by ``build_engine`` (from the ONNX metadata).
    """
    from retinakit.export.tensorrt import TensorRTLimitError, check_tensorrt_limits

    if cfg.EXPORT.MODE != "e2e":
        return
    try:
        check_tensorrt_limits(len(model.head_in_features), model.postprocessor.topk_candidates, cfg.TEST.DETECTIONS_PER_IMAGE)
    except TensorRTLimitError as e:
        raise UserError(f"--tensorrt: {e}") from None


def write_serving(args: argparse.Namespace, cfg: Any, model: Any, artefacts: list[tuple]) -> list[tuple]:
    """--triton-repo / --deepstream: ``[(kind, config path)]``."""
    from retinakit.export import model_metadata
    from retinakit.export.serving.bundle import deepstream_bundle, triton_bundle

    out = []
    if args.triton_repo:
        out.append(("triton", triton_bundle(cfg, artefacts, args.triton_repo, name=args.triton_name, max_batch_size=args.max_batch)))
    if args.deepstream:
        precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
        n = cfg.EXPORT.INT8.NUM_IMAGES if args.num_calibration_images is None else args.num_calibration_images
        logger.info(f"Exporting the DeepStream graph ({precision}) to {args.deepstream}")
        out.append(("deepstream", deepstream_bundle(
            cfg, model, args.deepstream, model_metadata(cfg, model), precision=precision, calibration_images=args.calibration_images,
            num_calibration_images=n, calibration_method=args.calibration_method or cfg.EXPORT.INT8.CALIBRATION_METHOD)))
    return out


def build_engines(args: argparse.Namespace, cfg: Any, onnx_files: list[tuple], divisibility: int) -> list[tuple]:
    from retinakit.export.tensorrt import build_engine, profile_from_cfg

    t = cfg.EXPORT.TENSORRT
    profile = profile_from_cfg(cfg, divisibility)
    cache = t.TIMING_CACHE or os.path.join(args.output, "timing.cache")
    engines = []
    for precision, path in onnx_files:
        plan = os.path.splitext(path)[0] + ".plan"
        logger.info(f"Building TensorRT engine {plan}")
        engines.append((precision, build_engine(path, plan, profile=profile, workspace_mib=t.WORKSPACE_MIB,
                                                timing_cache=cache, optimization_level=t.OPTIMIZATION_LEVEL)))
    return engines


def verify_onnx(args: argparse.Namespace, cfg: Any, model: Any, onnx_files: list[tuple], data: Any) -> tuple:
    """Evaluate PyTorch and every ONNX artefact on the validation set; an INT8 model over the AP
    budget triggers the sensitivity search (``EXPORT.INT8.SENSITIVITY``), which may replace
    ``model_int8.onnx`` by a mixed-precision one. Returns ``(val, results, onnx_files, search_report)``."""
    from retinakit.data import build_inference_preprocess
    from retinakit.export import Predictor
    from retinakit.export.predictor import TorchBackend
    from retinakit.export.sensitivity_report import search_row
    from retinakit.export.verify import evaluate, load_valset

    val = load_valset(args.val_images, args.val_annotations, args.max_val_images)
    logger.info(f"Verifying on {len(val.files)} images of {args.val_annotations}")
    ref = evaluate(Predictor(TorchBackend(model), build_inference_preprocess(cfg)), val)
    results = [ref] + [_evaluate_artefact(precision, path, ref, val) for precision, path in onnx_files]
    tol = _tolerance(args, cfg)
    search = None
    plain = next((r for r in results if r.precision == "int8"), None)
    if plain is not None and plain.ap < ref.ap * (1.0 - tol) and cfg.EXPORT.INT8.SENSITIVITY.ENABLED:
        search, onnx_files = int8_search(args, cfg, model, onnx_files, data, val, ref, plain, tol)
        results += search_row(search)
        results.sort(key=lambda r: r.precision == "int8-plain")  # the deliverable first
    return val, results, onnx_files, search


def _tolerance(args: argparse.Namespace, cfg: Any) -> float:
    return float(cfg.EXPORT.INT8.MAX_RELATIVE_AP_DROP if args.max_ap_drop is None else args.max_ap_drop)


def _evaluate_artefact(precision: str, path: str, ref: Any, val: Any) -> Any:
    from retinakit.export import load_predictor
    from retinakit.export.verify import evaluate, max_box_diff

    r = evaluate(load_predictor(path), val)
    r.precision = precision
    r.delta_ap = r.ap - ref.ap
    r.max_box_diff = max_box_diff(ref.detections, r.detections)
    return r


def int8_search(args: argparse.Namespace, cfg: Any, model: Any, onnx_files: list[tuple], data: Any, val: Any, ref: Any,
                plain: Any, tol: float) -> tuple:
    """Keep the most INT8-sensitive layers in FP32 until the INT8 AP is within ``tol`` of PyTorch's.

    On success ``model_int8.onnx`` becomes the mixed-precision model (the fully quantized one is
    kept as ``model_int8_plain.onnx``); otherwise the best candidate is ``model_int8_mixed.onnx``.
    """
    from retinakit.export import calibration_arrays
    from retinakit.export.sensitivity import mixed_precision_int8
    from retinakit.export.sensitivity_report import format_search

    s = cfg.EXPORT.INT8.SENSITIVITY
    fp32 = dict(onnx_files)["fp32"]
    int8 = dict(onnx_files)["int8"]
    n = max(1, int(s.NUM_IMAGES))
    div = int(getattr(model.backbone, "size_divisibility", 32) or 32)
    inputs = {k: v[:n] for k, v in data.items()} if data is not None else calibration_arrays(cfg, args.val_images, n, div)
    logger.info(f"INT8 AP {plain.ap:.2f} misses the budget ({ref.ap * (1 - tol):.2f}): ranking layers by INT8 sensitivity "
                f"on {len(inputs['images'])} images, then keeping up to {s.MAX_LAYERS} in FP32")
    cache = args.calibration_cache or os.path.join(args.output, "calibration.cache")
    method = args.calibration_method or cfg.EXPORT.INT8.CALIBRATION_METHOD

    def accept(path: str) -> tuple:
        r = _evaluate_artefact("int8-mixed", path, ref, val)
        return r.ap >= ref.ap * (1.0 - tol), r

    mixed = os.path.join(args.output, "model_int8_mixed.onnx")
    report = mixed_precision_int8(fp32, int8, mixed, cache_path=cache, method=method, inputs=inputs, accept=accept,
                                  max_layers=int(s.MAX_LAYERS), exclude=list(cfg.EXPORT.INT8.EXCLUDE), score=lambda r: r.ap)
    files = list(onnx_files)
    if report.search.met:  # the mixed model is the INT8 deliverable ("int8": engines, serving bundles)
        plain_path = os.path.join(args.output, "model_int8_plain.onnx")
        os.replace(int8, plain_path)
        os.replace(mixed, int8)
        report.path = int8
        files.append(("int8-plain", plain_path))
        plain.precision = "int8-plain"
        report.search.best.info.precision = "int8"
    elif report.path:
        files.append(("int8-mixed", mixed))
    print(format_search(report, plain, ref, tol))
    return report, files


def finish_verify(args: argparse.Namespace, cfg: Any, results: list, search: Any) -> int:
    """Mark INT8 rows over budget, print the table, write DIR/verify.json; exit code."""
    from retinakit.export.sensitivity_report import search_summary
    from retinakit.export.verify import format_table

    ref = results[0]
    tol = _tolerance(args, cfg)
    failed = False
    for r in results[1:]:
        if r.precision == "int8-plain":  # the all-INT8 model the search replaced
            r.status = f"over budget (> {tol:.1%}): replaced by the mixed-precision int8"
        elif r.precision in ("int8", "int8-mixed", "int8-ort") and r.ap < ref.ap * (1.0 - tol):
            r.status = f"FAILED (AP drop > {tol:.1%} relative)"
            failed = True
    print(format_table(results))
    rows = [{k: v for k, v in vars(r).items() if k != "detections"} for r in results]
    out = {"max_relative_ap_drop": tol, "results": rows}
    if search is not None:
        out["int8_search"] = search_summary(search, results)
    with open(os.path.join(args.output, "verify.json"), "w") as f:
        json.dump(out, f, indent=2)
    return EXIT_FAILED_CHECK if failed else 0


def run(args: argparse.Namespace) -> int:
    from retinakit.export import load_model

    _check_args(args)
    cfg = _setup_cfg(args)
    _check_int8_options(args, cfg)
    if args.verify and cfg.EXPORT.MODE != "e2e":
        raise UserError("--verify needs the end-to-end export (--mode e2e).")
    model = load_model(cfg, args.weights)
    if args.deepstream:  # a bad EXPORT.DEEPSTREAM.INPUT_SIZE fails before the slow exports
        from retinakit.export.serving.bundle import deepstream_input_size

        deepstream_input_size(cfg, model)
    if args.tensorrt:
        _check_tensorrt_limits(cfg, model)
    onnx_files, data = export_all(args, cfg, model)
    results, search = [], None
    if args.verify:
        val, results, onnx_files, search = verify_onnx(args, cfg, model, onnx_files, data)
    artefacts = list(onnx_files)
    div = int(getattr(model.backbone, "size_divisibility", 32) or 32)
    if args.tensorrt:
        # The Winograd graph is for ONNX Runtime on CPU; TensorRT picks its own convolution kernels;
        # the all-INT8 model that the sensitivity search replaced is not built.
        skip = ("fp32-winograd", "int8-plain", "int8-ort")  # TensorRT gets Model Optimizer's explicit Q/DQ
        engines = build_engines(args, cfg, [f for f in onnx_files if f[0] not in skip], div)
        artefacts += engines
        if args.verify:
            results += [_evaluate_artefact(p, path, results[0], val) for p, path in engines]
    artefacts += write_serving(args, cfg, model, artefacts)
    for precision, path in artefacts:
        print(f"wrote {path} ({precision})")
    if args.verify:
        return finish_verify(args, cfg, results, search)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s] %(name)s %(levelname)s: %(message)s")
    logging.getLogger("retinakit").setLevel(logging.INFO)
    args = parse_args(argv)
    return exit_code_on_user_error(run, args)  # user errors: one line, exit 2


if __name__ == "__main__":
    sys.exit(main())
