"""INT8 mixed precision: which layers to keep in FP32 so that the INT8 model meets its budget.

1. :func:`rank_layers`: starting from the fully quantized Q/DQ model, restore one layer at a
   time to FP32 (its input Q/DQ pairs bypassed, an exact FP32 copy of that layer) and measure
   the relative error of the backbone/head outputs (the tensors the post-processing reads,
   cheaper and smoother than AP) against the FP32 model on a few images. A layer is a module
   path (``head.cls_score``, ``backbone.bottom_up.layer2.0.bn1`` for a conv folded with its
   BN); a shared head module run on every FPN level is one layer (one ONNX node per level).
2. :func:`search_exclusions`: keep the most sensitive layers in FP32, one more at a time (only
   layers whose restoration lowered the error), each candidate judged by the caller's check
   (``tools/deploy.py``: COCO AP of the re-quantized ONNX on the validation set), until the
   check passes or ``max_layers`` are spent. The best candidate is reported either way.

The final model is made by :func:`retinakit.export.quantize_int8` with ``exclude`` set to the
chosen layers' patterns (:func:`layer_pattern`), i.e. the ``EXPORT.INT8.EXCLUDE`` mechanism.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._deps import require
from .quantize import excluded_node_names, module_path, quantize_int8, trunk_node_names, trunk_output_names

__all__ = [
    "LayerSensitivity", "MixedPrecisionReport", "SearchResult", "SearchStep", "layer_groups", "layer_pattern",
    "mixed_precision_int8", "rank_layers", "restore_fp32", "search_exclusions", "trunk_outputs",
]

logger = logging.getLogger(__name__)

# Ops that carry the cost (and most of the error) of a quantized model.
_LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class LayerSensitivity:
    """One layer: its module path, ONNX nodes, and the output error with only it in FP32."""

    layer: str
    nodes: list[str]
    error: float  # relative error of the trunk outputs with this layer restored (all others INT8)
    gain: float  # error of the fully quantized model minus ``error`` (> 0: restoring it helps)


@dataclass
class SearchStep:
    excluded: list[str]  # layers kept in FP32 (module paths)
    ok: bool
    info: Any = None  # what the caller's check returned (e.g. the evaluation result)


@dataclass
class SearchResult:
    met: bool
    best: SearchStep | None
    steps: list[SearchStep] = field(default_factory=list)


@dataclass
class MixedPrecisionReport:
    """What :func:`mixed_precision_int8` measured and chose."""

    error_int8: float  # trunk output error of the fully quantized model
    ranking: list[LayerSensitivity]
    search: SearchResult
    path: str | None  # the best candidate ONNX (None when no layer was worth trying)

    @property
    def excluded(self) -> list[str]:
        return list(self.search.best.excluded) if self.search.best else []


def layer_pattern(layer: str) -> str:
    """``EXPORT.INT8.EXCLUDE`` pattern matching exactly the nodes of ``layer`` (a module path)."""
    return "^" + re.escape(layer) + "$"


def layer_groups(proto: Any, quantized: Any = None) -> dict[str, list[str]]:
    """``{module path: [ONNX node names]}`` of the backbone/head nodes that INT8 touches, in graph order.

    With ``quantized`` (the Q/DQ copy of ``proto``): the nodes that read a DequantizeLinear output
    there (convolutions, and the residual Adds, pooling, resizes Model Optimizer quantizes);
    without it: the Conv/Gemm/MatMul nodes. A node without module scope is its own group.
    """
    inside = set(trunk_node_names(proto)[0])
    if quantized is not None:
        dq = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        reads_dq = {n.name for n in quantized.graph.node if any(i in dq for i in n.input)}
        pick = [n for n in proto.graph.node if n.name in inside and n.name in reads_dq]
    else:
        pick = [n for n in proto.graph.node if n.name in inside and n.op_type in _LAYER_OPS]
    groups: dict[str, list[str]] = {}
    for node in pick:
        groups.setdefault(module_path(node) or node.name, []).append(node.name)
    return groups


def restore_fp32(qproto: Any, nodes: Sequence[str]) -> Any:
    """Copy of the Q/DQ model ``qproto`` where ``nodes`` read their inputs unquantized.

    Each input produced by ``DequantizeLinear(QuantizeLinear(x))`` is rewired to ``x`` (the FP32
    activation or weight), so the node computes exactly as in the FP32 model. The Q/DQ pair
    stays for other consumers of ``x``.
    """
    onnx = require("onnx")
    out = onnx.ModelProto()
    out.CopyFrom(qproto)
    producer = {o: n for n in out.graph.node for o in n.output}
    wanted = set(nodes)
    for node in out.graph.node:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    return out


def trunk_outputs(proto: Any, inputs: dict[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
    """Values of the tensors ``names`` of ``proto`` for the batch ``inputs`` (one run)."""
    onnx, ort = require("onnx"), require("onnxruntime")
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Basic optimisations only: Q/DQ stay simulated in FP32 (as the graph says), and the session,
    # one per ranked layer, builds ~1.5x faster than with the QLinearConv fusions.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return list(sess.run(list(names), dict(inputs)))


def _error(ref: Sequence[np.ndarray], out: Sequence[np.ndarray]) -> float:
    """Mean over the floating-point outputs of ``||out - ref|| / ||ref||`` (each counts the same, whatever its size)."""
    errs = [float(np.linalg.norm(o - r) / max(float(np.linalg.norm(r)), 1e-12))
            for r, o in zip(ref, out) if np.issubdtype(r.dtype, np.floating)]
    return float(np.mean(errs))


def rank_layers(
    fp32_path: str, int8_path: str, inputs: dict[str, np.ndarray], *, exclude: Sequence[str] = ()
) -> tuple[float, list[LayerSensitivity]]:
    """``(error of the INT8 model, layers sorted most sensitive first)``.

    Args:
        fp32_path / int8_path: the exported FP32 ONNX and its Q/DQ copy.
        inputs: graph inputs (``{"images": [N, 3, H, W], "image_sizes": [N, 2]}``), a few images.
        exclude: module paths already in FP32 (skipped).
    """
    onnx = require("onnx")
    fp32, q = onnx.load(fp32_path), onnx.load(int8_path)
    names = trunk_output_names(fp32)
    ref = trunk_outputs(fp32, inputs, names)
    base = _error(ref, trunk_outputs(q, inputs, names))
    ranked = []
    for layer, nodes in layer_groups(fp32, q).items():
        if layer in exclude:
            continue
        err = _error(ref, trunk_outputs(restore_fp32(q, nodes), inputs, names))
        ranked.append(LayerSensitivity(layer, nodes, err, base - err))
        logger.debug(f"INT8 sensitivity: {layer}: error {err:.4g} with it in FP32 (all INT8: {base:.4g})")
    ranked.sort(key=lambda s: s.error)
    return base, ranked


def search_exclusions(
    ranking: Sequence[LayerSensitivity],
    check: Callable[[list[str]], tuple[bool, Any]],
    *,
    max_layers: int,
    score: Callable[[Any], float] = lambda info: 0.0,
) -> SearchResult:
    """Keep the 1, 2, ... most sensitive layers in FP32 until ``check(layers)`` passes.

    Only layers with ``gain > 0`` are candidates. ``check`` builds and judges a candidate and
    returns ``(ok, info)``; ``score(info)`` (higher is better) picks the best failing step.
    """
    candidates = [s.layer for s in ranking if s.gain > 0][: max(0, int(max_layers))]
    result = SearchResult(met=False, best=None)
    for k in range(1, len(candidates) + 1):
        ok, info = check(candidates[:k])
        step = SearchStep(candidates[:k], ok, info)
        result.steps.append(step)
        if ok:
            result.met, result.best = True, step
            return result
        if result.best is None or score(info) > score(result.best.info):
            result.best = step
    return result


def mixed_precision_int8(
    fp32_path: str,
    int8_path: str,
    output_path: str,
    *,
    cache_path: str,
    method: str,
    inputs: dict[str, np.ndarray],
    accept: Callable[[str], tuple[bool, Any]],
    max_layers: int,
    exclude: Sequence[str] = (),
    score: Callable[[Any], float] = lambda info: 0.0,
) -> MixedPrecisionReport:
    """Rank the layers of ``int8_path`` and re-quantize with the most sensitive ones in FP32 until ``accept`` passes.

    Args:
        fp32_path / int8_path: the FP32 export and its fully quantized copy (calibrated, with
            its scales in ``cache_path``: candidates are quantized from that cache, no recalibration).
        inputs: a few graph inputs for the ranking (``{"images": [N, 3, H, W], "image_sizes": [N, 2]}``).
        accept: ``accept(candidate.onnx) -> (ok, info)`` (e.g. AP within budget, the evaluation).
        max_layers: at most this many layers are kept in FP32 (besides ``exclude``).
        exclude: the user's ``EXPORT.INT8.EXCLUDE`` patterns, kept in every candidate.
        score: ``score(info)``, higher is better: picks the best candidate when none passes.

    The best candidate (the passing one, else the best scoring) is written to ``output_path``.
    """
    onnx = require("onnx")
    user_nodes = set(excluded_node_names(onnx.load(fp32_path, load_external_data=False), exclude))
    base, ranking = rank_layers(fp32_path, int8_path, inputs)
    ranking = [s for s in ranking if not user_nodes.intersection(s.nodes)]
    work = output_path + ".candidates"
    os.makedirs(work, exist_ok=True)
    paths: dict[tuple, str] = {}

    def check(layers: list[str]) -> tuple[bool, Any]:
        path = os.path.join(work, f"int8_fp32x{len(layers)}.onnx")
        quantize_int8(fp32_path, path, calibration_data=None, method=method, cache_path=cache_path,
                      exclude=[*exclude, *(layer_pattern(x) for x in layers)])
        paths[tuple(layers)] = path
        ok, info = accept(path)
        logger.info(f"INT8 with {len(layers)} layer(s) in FP32 ({', '.join(layers)}): {'meets' if ok else 'misses'} the budget")
        return ok, info

    try:
        result = search_exclusions(ranking, check, max_layers=max_layers, score=score)
        best = None
        if result.best is not None:
            best = output_path
            shutil.copyfile(paths[tuple(result.best.excluded)], best)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return MixedPrecisionReport(base, ranking, result, best)
