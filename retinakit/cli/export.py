"""``retinakit export MODEL EXPORT [--full-precision | --int8 ...]``: ODTK's export.

EXPORT ``.onnx`` writes an end-to-end ONNX model; ``.plan``/``.engine`` also builds the
TensorRT engine from it (the ONNX stays beside it, ``EXPORT`` with ``.onnx``). Precision as
ODTK: FP16 by default, FP32 with ``--full-precision``, INT8 with ``--int8`` (calibrated on
``--calibration-images`` with the inference preprocessing, or from ``--calibration-table``).
TensorRT 11 takes the precision from the ONNX, so the ONNX carries it (typed FP16, INT8 Q/DQ),
for ``.onnx`` and ``.plan`` alike. The steps are tools/deploy.py's functions
(:func:`~retinakit.export.export_onnx`, :func:`~retinakit.export.convert_fp16`,
:func:`~retinakit.export.quantize_int8`, :func:`~retinakit.export.tensorrt.build_engine`).
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
from typing import Any

from ..config import CfgNode
from .common import flat, model_cfg, print_equivalent, write_config
from .odtk import OdtkFlagError, flag_overrides

__all__ = ["export_model", "precision_of", "run"]

ENGINE_EXTS = (".plan", ".engine")


def precision_of(args: argparse.Namespace) -> str:
    """ODTK's rule: --int8 > --full-precision (fp32) > fp16."""
    return "int8" if args.int8 else "fp32" if args.full_precision else "fp16"


def _check(args: argparse.Namespace) -> str:
    ext = os.path.splitext(args.export)[1].lower()
    if ext not in (".onnx", *ENGINE_EXTS):
        raise OdtkFlagError(f"export '{args.export}': the file name must end in .onnx (ONNX only) or .plan/.engine (TensorRT engine).")
    if args.int8 and not args.calibration_images and not (args.calibration_table and os.path.isfile(args.calibration_table)):
        raise OdtkFlagError("--int8 needs --calibration-images DIR, or an existing --calibration-table FILE to reuse.")
    if args.calibration_images:
        from ..export import list_images

        list_images(args.calibration_images)  # missing or image-less folder: fail before exporting
    if ext in ENGINE_EXTS:
        from ..export._deps import require

        require("tensorrt", f"the TensorRT engine {args.export}")  # before the slow export
    return ext


def export_model(cfg: CfgNode, model: Any, onnx_path: str, precision: str, args: argparse.Namespace) -> str:
    """Write ``onnx_path`` in ``precision`` (the FP32 graph first, in a temporary folder, for FP16/INT8)."""
    from ..export import calibration_arrays, convert_fp16, export_onnx, model_metadata, quantize_int8

    meta = model_metadata(cfg, model)
    h, w = cfg.EXPORT.EXAMPLE_SIZE
    data = None
    if precision == "int8" and args.calibration_images:  # read (and check) the images before the slow steps
        data = calibration_arrays(cfg, args.calibration_images, int(cfg.EXPORT.INT8.NUM_IMAGES), meta["size_divisibility"])
    os.makedirs(os.path.dirname(os.path.abspath(onnx_path)), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(onnx_path))) as tmp:
        fp32 = onnx_path if precision == "fp32" else os.path.join(tmp, "model.onnx")
        export_onnx(model, fp32, mode="e2e", opset=cfg.EXPORT.OPSET, example_size=(2, int(h), int(w)),
                    metadata={**meta, "precision": "fp32"}, legacy=cfg.EXPORT.LEGACY_EXPORTER)
        if precision == "fp16":
            convert_fp16(fp32, onnx_path)
        elif precision == "int8":
            cache = args.calibration_table or os.path.splitext(onnx_path)[0] + ".calibration.cache"
            i8 = cfg.EXPORT.INT8
            quantize_int8(fp32, onnx_path, calibration_data=data, method=i8.CALIBRATION_METHOD, percentile=i8.PERCENTILE,
                          cache_path=cache, exclude=list(i8.EXCLUDE))
    return onnx_path


def _check_engine_limits(cfg: CfgNode, model: Any, plan: str) -> None:
    """Fail before the slow export when TensorRT could not build the graph's TopK."""
    from ..export.tensorrt import TensorRTLimitError, check_tensorrt_limits

    try:
        check_tensorrt_limits(len(model.head_in_features), model.postprocessor.topk_candidates, cfg.TEST.DETECTIONS_PER_IMAGE)
    except TensorRTLimitError as e:
        raise OdtkFlagError(f"{plan}: {e}") from None


def _engine(cfg: CfgNode, model: Any, onnx_path: str, plan: str, verbose: bool) -> str:
    from ..export.tensorrt import build_engine, profile_from_cfg

    t = cfg.EXPORT.TENSORRT
    div = int(getattr(model.backbone, "size_divisibility", 32) or 32)
    cache = t.TIMING_CACHE or os.path.splitext(plan)[0] + ".timing.cache"
    return build_engine(onnx_path, plan, profile=profile_from_cfg(cfg, div), workspace_mib=t.WORKSPACE_MIB, timing_cache=cache,
                        optimization_level=t.OPTIMIZATION_LEVEL, verbose=verbose)


def _deploy_args(args: argparse.Namespace, resolved: str, precision: str, engine: bool) -> list[str]:
    out = ["tools/deploy.py", "--config-file", resolved, "--weights", args.model,
           "--output", os.path.splitext(args.export)[0] + "_deploy"]
    if precision == "fp16":
        out.append("--fp16")
    if precision == "int8":
        out.append("--int8")
        out += ["--calibration-images", args.calibration_images] if args.calibration_images else []
        out += ["--calibration-cache", args.calibration_table] if args.calibration_table else []
    return out + (["--tensorrt"] if engine else [])


def run(args: argparse.Namespace) -> int:
    from ..export import load_model

    ext = _check(args)
    if args.verbose:
        logging.getLogger("retinakit").setLevel(logging.DEBUG)
    cfg, source = model_cfg(args.model, args.config_file)
    cfg.merge_from_list(flat(flag_overrides("export", args)))
    cfg.merge_from_list(list(args.opts or []))
    cfg.MODEL.DEVICE = "cpu"
    cfg.EXPORT.MODE = "e2e"
    precision = precision_of(args)
    engine = ext in ENGINE_EXTS
    resolved = write_config(cfg, os.path.splitext(args.export)[0] + ".yaml")
    print(f"config: {source}; resolved config written to {resolved}", flush=True)
    print_equivalent(_deploy_args(args, resolved, precision, engine))
    model = load_model(cfg, args.model)
    if engine:
        _check_engine_limits(cfg, model, args.export)
    onnx_path = os.path.splitext(args.export)[0] + ".onnx" if engine else args.export
    export_model(cfg, model, onnx_path, precision, args)
    print(f"wrote {onnx_path} ({precision})", flush=True)
    if engine:
        _engine(cfg, model, onnx_path, args.export, args.verbose)
        print(f"wrote {args.export} ({precision} TensorRT engine)", flush=True)
    return 0
