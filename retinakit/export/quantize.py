"""FP16 and INT8 (Q/DQ) ONNX models made with NVIDIA Model Optimizer.

* :func:`convert_fp16`: a typed FP16 graph (``modelopt.onnx.autocast``): backbone and head in
  FP16, inputs/outputs and the post-processing (decode, top-k, NMS) in FP32, where box
  coordinates need the precision.
* :func:`quantize_int8`: post-training quantization (``modelopt.onnx.quantization``,
  TensorRT-style Q/DQ placement, per-channel weights) calibrated on images prepared with the
  inference preprocessing. Methods: ``entropy`` and ``max`` are Model Optimizer's own;
  ``percentile`` (which Model Optimizer would silently treat as ``max``) is computed with
  onnxruntime's percentile calibrator and handed to Model Optimizer as a calibration cache.
  The activation scales are written to a TensorRT-format cache; a later call given only
  that cache quantizes without any image.

Only nodes inside the model's ``backbone`` and ``head`` modules are converted/quantized.
Model Optimizer runs in a child process (it monkey-patches onnxruntime's calibrators).
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

from ..config import ConfigError
from ._deps import MissingDependencyError, require
from .calib_cache import CacheError, read_cache, scales_from_qdq_model, write_cache
from .onnx import MAX_IR_VERSION, read_metadata, write_metadata

__all__ = [
    "CALIBRATION_METHODS", "QuantizationError", "convert_fp16", "excluded_node_names", "module_path", "quantize_int8",
    "trunk_node_names", "trunk_output_names",
]

logger = logging.getLogger(__name__)

CALIBRATION_METHODS = ("entropy", "max", "percentile")
# A node is in the trunk when its dynamo "namespace" path passes through the model's backbone or
# head module (segments "<module path>: <type>"; the exported adapter holds the model as "model").
_TRUNK_SCOPE = re.compile(r"(^|/)(model\.)?(backbone|head): ")


class QuantizationError(RuntimeError):
    """Model Optimizer failed; the message carries the end of its log."""


def trunk_node_names(model) -> tuple:
    """``(inside, outside)`` node names: in the backbone/head modules or not (from dynamo metadata)."""
    inside, outside = [], []
    for node in model.graph.node:
        scope = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
        (inside if _TRUNK_SCOPE.search(scope) else outside).append(node.name)
    return inside, outside


def trunk_output_names(model) -> list[str]:
    """Tensors that the backbone/head hand to the rest of the graph (post-processing or graph outputs).

    They have fixed shapes for a fixed input size, unlike the detections (data-dependent count).
    """
    inside = set(trunk_node_names(model)[0])
    used_outside = {i for n in model.graph.node if n.name not in inside for i in n.input}
    used_outside |= {o.name for o in model.graph.output}
    return [o for n in model.graph.node if n.name in inside for o in n.output if o in used_outside]


def excluded_node_names(model, patterns: Sequence[str]) -> list[str]:
    """Trunk nodes whose name or module scope matches one of ``patterns`` (``re.search``).

    The module scope is the dotted module path from dynamo's metadata (``model.`` prefix
    dropped), e.g. ``head.cls_subnet.0`` for the first conv of the classification branch.
    Raises :class:`ConfigError` for an invalid pattern or one that matches no node.
    """
    inside = set(trunk_node_names(model)[0])
    out: list[str] = []
    for pat in patterns:
        try:
            rx = re.compile(pat)
        except re.error as e:
            raise ConfigError(f"EXPORT.INT8.EXCLUDE: invalid regular expression {pat!r} ({e}).") from None
        hits = [n.name for n in model.graph.node if n.name in inside and (rx.search(n.name) or rx.search(module_path(n)))]
        if not hits:
            raise ConfigError(
                f"EXPORT.INT8.EXCLUDE pattern {pat!r} matches no backbone/head node of the ONNX model: "
                "use a module path such as 'head.cls_score' or an ONNX node name."
            )
        out += [h for h in hits if h not in out]
    return out


def module_path(node) -> str:
    """Dotted module path of a node (``backbone.bottom_up.stem.conv1``) from dynamo's name scopes."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":  # "['', 'model.backbone', ..., '<op name>']"
            paths = [x for x in re.findall(r"'([^']*)'", p.value) if x.startswith("model.")]
            return paths[-1][len("model."):] if paths else ""
    return ""


def _run_worker(job: dict) -> None:
    require("modelopt", "FP16/INT8 conversion (NVIDIA Model Optimizer)")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
        job_file = f.name
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "retinakit.export._modelopt_worker", job_file],
            capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": _pythonpath()},
        )
    finally:
        os.unlink(job_file)
    if proc.returncode != 0 or not os.path.isfile(job["output"]):
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise QuantizationError(f"NVIDIA Model Optimizer ({job['task']}) failed:\n{tail}")


def _pythonpath() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def _finish(src: str, dst: str, extra_meta: dict) -> None:
    onnx = require("onnx")
    proto = onnx.load(dst)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    meta = read_metadata(src)
    meta.update(extra_meta)
    write_metadata(proto, meta)
    onnx.save(proto, dst)


def convert_fp16(onnx_path: str, output_path: str) -> str:
    """Typed FP16 copy of an exported retinakit ONNX model (FP32 inputs/outputs and post-processing)."""
    onnx = require("onnx")
    _, outside = trunk_node_names(onnx.load(onnx_path, load_external_data=False))
    _run_worker({"task": "fp16", "input": os.path.abspath(onnx_path), "output": os.path.abspath(output_path),
                 "nodes_to_exclude": [f"^{n}$" for n in outside]})
    _finish(onnx_path, output_path, {"precision": "fp16"})
    return output_path


def quantize_int8(
    onnx_path: str,
    output_path: str,
    *,
    calibration_data: dict[str, np.ndarray] | None = None,
    method: str = "entropy",
    percentile: float = 99.999,
    cache_path: str | None = None,
    exclude: Sequence[str] = (),
) -> str:
    """INT8 Q/DQ copy of an exported model.

    Args:
        calibration_data: ``{"images": [N, 3, H, W], "image_sizes": [N, 2]}`` float32 from
            :func:`retinakit.export.calibration.calibration_arrays`. ``None`` means: reuse
            ``cache_path``, which must then exist.
        method: ``"entropy"``, ``"max"`` or ``"percentile"`` (``percentile`` of |x|).
        cache_path: where the activation scales are written after calibration, or read from
            when ``calibration_data`` is None.
        exclude: regular expressions (``EXPORT.INT8.EXCLUDE``); trunk nodes whose ONNX name or
            module scope (e.g. ``head.cls_score``) matches one stay in FP32.
    """
    onnx = require("onnx")
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"EXPORT.INT8.CALIBRATION_METHOD (--calibration-method) must be one of {CALIBRATION_METHODS}, got {method!r}.")
    proto = onnx.load(onnx_path, load_external_data=False)
    _, outside = trunk_node_names(proto)
    kept = excluded_node_names(proto, exclude)
    job = {"task": "int8", "input": os.path.abspath(onnx_path), "output": os.path.abspath(output_path),
           "method": method, "percentile": percentile, "nodes_to_exclude": [f"^{re.escape(n)}$" for n in outside + kept]}
    with tempfile.TemporaryDirectory() as tmp:
        if calibration_data is None:
            if not cache_path or not os.path.isfile(cache_path):
                raise CacheError(
                    f"INT8 needs calibration images or an existing calibration cache; cache '{cache_path}' not found."
                )
            _check_cache_fits(read_cache(cache_path), proto, cache_path)
            job["cache_in"] = os.path.abspath(cache_path)
            job["blank"] = {"images": np.zeros((1, 3, 64, 64), np.float32).tolist(), "image_sizes": [[64.0, 64.0]]}
        else:
            data_file = os.path.join(tmp, "calibration.npz")
            np.savez(data_file, **calibration_data)
            job["data"] = data_file
        _run_worker(job)
    q = onnx.load(output_path)
    scales = scales_from_qdq_model(q)
    if not scales:
        raise QuantizationError(f"Model Optimizer produced no activation Q/DQ nodes in '{output_path}'.")
    if calibration_data is not None and cache_path:
        write_cache(cache_path, scales)
        logger.info(f"Wrote calibration cache '{cache_path}' ({len(scales)} tensors).")
    _finish(onnx_path, output_path, {"precision": "int8", "calibration_method": method})
    return output_path


def _check_cache_fits(scales: dict[str, float], proto, path: str) -> None:
    names: list[str] = [o for n in proto.graph.node for o in n.output] + [i.name for i in proto.graph.input]
    known = set(names)
    hits = sum(1 for k in scales if k in known)
    if hits == 0:
        raise CacheError(
            f"Calibration cache '{path}' names none of this model's tensors: it was made for another "
            "model or export. Recalibrate with --calibration-images."
        )


__all__ += ["CacheError", "MissingDependencyError"]
