"""What ``tools/deploy.py --triton-repo / --deepstream`` write, from a config, a model and the exported artefacts."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...config import ConfigError
from ..onnx import read_metadata
from .deepstream import check_input_size, deepstream_scale, export_deepstream_onnx, write_deepstream_config
from .triton import write_triton_repository

__all__ = ["PRECISION_ORDER", "deepstream_bundle", "deepstream_calibration_arrays", "deepstream_input_size", "triton_bundle"]

logger = logging.getLogger(__name__)

# The artefact that serves: the lowest precision made (it was asked for), FP32 otherwise.
PRECISION_ORDER = ("int8", "fp16", "fp32")


def _pick(artefacts: Sequence[tuple[str, str]], ext: str) -> tuple[str, str] | None:
    by = {p: path for p, path in artefacts if path.endswith(ext)}
    return next(((p, by[p]) for p in PRECISION_ORDER if p in by), None)


def triton_bundle(cfg: Any, artefacts: Sequence[tuple[str, str]], repo: str, *, name: str | None = None,
                  max_batch_size: int | None = None) -> str:
    """Triton repository entry for the TensorRT engine of the lowest precision built (tensorrt backend),
    else for the FP32 ONNX model (onnxruntime backend). Returns the ``config.pbtxt`` path."""
    t = cfg.EXPORT.TRITON
    engine = _pick(artefacts, ".plan")
    onnx_files = dict(p for p in artefacts if p[1].endswith(".onnx"))
    if engine is not None:
        model_path, onnx_path = engine[1], onnx_files.get(engine[0])
    else:
        model_path = onnx_path = onnx_files["fp32"]
    meta = read_metadata(onnx_path)
    return write_triton_repository(
        repo, model_path, meta=meta, name=name or t.NAME,
        max_batch_size=int(t.MAX_BATCH_SIZE if max_batch_size is None else max_batch_size),
        instance_kind=t.INSTANCE_KIND, max_queue_delay_us=int(t.MAX_QUEUE_DELAY_US), onnx_path=onnx_path,
        engine_max_batch=int(cfg.EXPORT.TENSORRT.BATCH[2]),
    )


def deepstream_input_size(cfg: Any, model: nn.Module) -> tuple[int, int]:
    """``EXPORT.DEEPSTREAM.INPUT_SIZE``, or ``INPUT.MIN_SIZE_TEST`` square rounded up to the size divisibility."""
    size = [int(s) for s in cfg.EXPORT.DEEPSTREAM.INPUT_SIZE]
    if size:
        return check_input_size(model, size)
    div = int(getattr(model.backbone, "size_divisibility", 32) or 32)
    side = -(-int(cfg.INPUT.MIN_SIZE_TEST) // div) * div
    if side <= 0:
        raise ConfigError(
            "EXPORT.DEEPSTREAM.INPUT_SIZE is empty and INPUT.MIN_SIZE_TEST is 0: set EXPORT.DEEPSTREAM.INPUT_SIZE (height, width)."
        )
    return side, side


def deepstream_calibration_arrays(cfg: Any, folder: str, num_images: int, input_size: Sequence[int]) -> dict[str, np.ndarray]:
    """Calibration inputs of the DeepStream graph: ``{"images": [N, 3, H, W]}`` float32 prepared as nvinfer
    does with ``maintain-aspect-ratio=1``: each test-size image scaled to fit ``(H, W)`` (bilinear),
    placed top-left on zeros, then ``(x - PIXEL_MEAN[c]) * net_scale_factor``."""
    from ..calibration import calibration_arrays

    data = calibration_arrays(cfg, folder, num_images, 1)
    h, w = int(input_size[0]), int(input_size[1])
    scale_factor, _ = deepstream_scale(cfg.MODEL.PIXEL_STD)
    mean = torch.tensor([float(m) for m in cfg.MODEL.PIXEL_MEAN]).view(3, 1, 1)
    out = np.zeros((len(data["images"]), 3, h, w), np.float32)
    for i, (img, (ih, iw)) in enumerate(zip(data["images"], data["image_sizes"])):
        x = torch.from_numpy(img[:, : int(ih), : int(iw)])
        s = min(h / ih, w / iw)
        nh, nw = min(h, round(ih * s)), min(w, round(iw * s))
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        canvas = torch.zeros(3, h, w)
        canvas[:, :nh, :nw] = x
        out[i] = ((canvas - mean) * scale_factor).numpy()
    return {"images": out}


def deepstream_bundle(cfg: Any, model: nn.Module, folder: str, meta: dict[str, Any], *, precision: str = "fp32",
                      calibration_images: str = "", num_calibration_images: int = 64, calibration_method: str = "max") -> str:
    """Export the DeepStream graph (FP32; an FP16 or INT8 copy for those precisions) into ``folder``
    and write its nvinfer config and labels. Returns the config path."""
    from ..quantize import convert_fp16, quantize_int8

    d = cfg.EXPORT.DEEPSTREAM
    size = deepstream_input_size(cfg, model)
    os.makedirs(folder, exist_ok=True)
    fp32 = export_deepstream_onnx(model, os.path.join(folder, "model_deepstream.onnx"), size, opset=int(cfg.EXPORT.OPSET), metadata=meta)
    onnx_path, cache = fp32, None
    if precision == "fp16":
        onnx_path = convert_fp16(fp32, os.path.join(folder, "model_deepstream_fp16.onnx"))
    elif precision == "int8":
        if not calibration_images:
            raise ConfigError("--deepstream with --int8 calibrates the DeepStream graph itself: it needs --calibration-images DIR.")
        data = deepstream_calibration_arrays(cfg, calibration_images, num_calibration_images, size)
        cache = os.path.join(folder, "calibration.cache")
        onnx_path = quantize_int8(fp32, os.path.join(folder, "model_deepstream_int8.onnx"), calibration_data=data,
                                  method=calibration_method, percentile=float(cfg.EXPORT.INT8.PERCENTILE), cache_path=cache,
                                  exclude=list(cfg.EXPORT.INT8.EXCLUDE))
    return write_deepstream_config(
        folder, onnx_path, meta=read_metadata(fp32), pixel_mean=cfg.MODEL.PIXEL_MEAN, precision=precision,
        calibration_cache=cache, batch_size=int(d.BATCH_SIZE), maintain_aspect_ratio=bool(d.MAINTAIN_ASPECT_RATIO),
        score_thresh=float(cfg.MODEL.RETINANET.SCORE_THRESH_TEST),
    )
