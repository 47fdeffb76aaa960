"""``retinakit infer MODEL --images DIR [--annotations JSON] [--output detections.json]``: ODTK's infer.

MODEL: a retinakit ``.pth`` (its config beside it as ``MODEL.yaml``, or ``--config-file``),
an ODTK ``.pth`` (converted in memory), an end-to-end ``.onnx`` or a TensorRT ``.plan``. The
run is tools/infer.py's: :func:`retinakit.export.load_predictor`, then
:func:`retinakit.export.detections.detect_folder`; ``--output`` gets ODTK's detections JSON
(COCO results) and, with ``--annotations``, the COCO AP table is printed.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

import torch

from ..export.detections import coco_summary, detect_folder, write_results
from .common import PTH_EXTS, flat, model_cfg, notice, print_equivalent, write_config
from .odtk import OdtkFlagError, flag_overrides, odtk_batch

__all__ = ["load", "run"]


def _resize_meta(predictor: Any, args: argparse.Namespace) -> None:
    """--resize/--max-size for an exported model: its preprocessing with those sizes."""
    from ..export.predictor import _preprocess_from_meta

    if args.resize is None and args.max_size is None:
        return
    meta = dict(predictor.metadata)
    meta["min_size"] = meta.get("min_size", 0) if args.resize is None else args.resize
    meta["max_size"] = meta.get("max_size", 0) if args.max_size is None else args.max_size
    predictor.preprocess = _preprocess_from_meta(meta)


def load(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """The predictor of ``args.model`` with the flags applied, and the tools/infer.py arguments that load the same."""
    from ..export import load_predictor

    ext = os.path.splitext(args.model)[1].lower()
    if ext not in PTH_EXTS:  # exported: the metadata inside says how to preprocess
        if args.opts or args.config_file:
            raise OdtkFlagError(f"--opts/--config-file apply to .pth models; '{args.model}' carries the config it was exported with.")
        device = "cpu" if ext == ".onnx" else "cuda"
        predictor = load_predictor(args.model, device=device)
        _resize_meta(predictor, args)
        if args.resize is not None or args.max_size is not None:
            notice("tools/infer.py runs an exported model at the sizes stored at export; --resize/--max-size change them here.")
        return predictor, ["--model", args.model, "--device", device]
    cfg, source = model_cfg(args.model, args.config_file)
    cfg.merge_from_list(flat(flag_overrides("infer", args)))
    cfg.merge_from_list(list(args.opts or []))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.MODEL.DEVICE = device
    resolved = write_config(cfg, os.path.splitext(args.output)[0] + ".yaml")
    print(f"config: {source}; resolved config written to {resolved}", flush=True)
    return load_predictor(args.model, cfg=cfg, device=device), ["--model", args.model, "--config-file", resolved, "--device", device]


def run(args: argparse.Namespace) -> int:
    if args.with_dali:
        notice("--with-dali has no effect on inference: the predictor decodes and resizes the images itself.")
    batch = odtk_batch() if args.batch is None else args.batch
    if batch < 1:
        raise OdtkFlagError(f"--batch must be >= 1, got {batch}.")
    predictor, tool_args = load(args)
    print_equivalent(["tools/infer.py", *tool_args, "--images", args.images, "--output", args.output, "--batch-size", str(batch),
                      *(["--annotations", args.annotations] if args.annotations else [])])
    rows, dets, val = detect_folder(predictor, args.images, args.annotations or "", batch)
    write_results(args.output, rows, len(dets), "images")
    if val is not None:
        print(coco_summary(rows, val.json_file, val.image_ids))
    return 0
