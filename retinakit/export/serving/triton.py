"""Triton Inference Server: a model repository for an exported ONNX model or TensorRT engine.

:func:`write_triton_repository` lays out ``DIR/NAME/config.pbtxt``, ``DIR/NAME/labels.txt`` and
``DIR/NAME/1/model.onnx`` (``onnxruntime`` backend) or ``DIR/NAME/1/model.plan`` (``tensorrt``
backend). Inputs and outputs (names, data types, dims) are read from the ONNX graph (for an
engine: the ONNX it was built from); the batch dimension must be dynamic and becomes
``max_batch_size``, with dynamic batching on. The config is Triton's ``ModelConfig`` protobuf in
text format, written here without protobuf so that exporting needs no Triton package.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...config import ConfigError
from .._deps import require
from .labels import class_labels, write_labels

__all__ = ["INSTANCE_KINDS", "TritonTensor", "onnx_io", "triton_config_text", "write_triton_repository"]

CONFIG_NAME = "config.pbtxt"
LABELS_NAME = "labels.txt"
INSTANCE_KINDS = ("auto", "gpu", "cpu")
BACKENDS = {".onnx": ("onnxruntime", "onnxruntime_onnx", "model.onnx"), ".plan": ("tensorrt", "tensorrt_plan", "model.plan")}
# ONNX TensorProto element type -> Triton DataType.
_TRITON_TYPE = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
                7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64",
                16: "TYPE_BF16"}


@dataclass
class TritonTensor:
    """One input/output: ``dims`` without the batch dimension, ``-1`` where dynamic."""

    name: str
    data_type: str
    dims: list[int]


class _Enum(str):
    """A protobuf enum value (written unquoted)."""


def onnx_io(path: str) -> tuple[list[TritonTensor], list[TritonTensor]]:
    """``(inputs, outputs)`` of an ONNX graph whose first dimension is a dynamic batch."""
    onnx = require("onnx", "the Triton model repository")
    graph = onnx.load(path, load_external_data=False).graph
    init = {i.name for i in graph.initializer}

    def tensor(v: Any) -> TritonTensor:
        t = v.type.tensor_type
        if t.elem_type not in _TRITON_TYPE:
            raise ConfigError(f"'{path}': tensor '{v.name}' has an ONNX type ({t.elem_type}) Triton has no DataType for.")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if not dims or dims[0] != -1:
            raise ConfigError(f"'{path}': tensor '{v.name}' {dims} has no dynamic batch dimension; export it again with tools/deploy.py.")
        return TritonTensor(v.name, _TRITON_TYPE[t.elem_type], dims[1:])

    return [tensor(v) for v in graph.input if v.name not in init], [tensor(v) for v in graph.output]


def _tensor_entry(t: TritonTensor, label_file: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": t.name, "data_type": _Enum(t.data_type)}
    if t.dims:
        entry["dims"] = list(t.dims)
    else:  # a per-request scalar (e.g. num_dets [N]): Triton wants dims [1] reshaped to []
        entry["dims"] = [1]
        entry["reshape"] = {"shape": []}
    if label_file:
        entry["label_filename"] = label_file
    return entry


def _pbtxt(value: Any, indent: int = 0) -> str:
    """Protobuf text format of nested dicts (messages), lists (repeated) and scalars."""
    pad = "  " * indent
    if isinstance(value, dict):
        lines = []
        for key, v in value.items():
            if isinstance(v, dict):
                lines.append(f"{pad}{key} {{\n{_pbtxt(v, indent + 1)}{pad}}}\n")
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                items = ",\n".join(f"{pad}  {{\n{_pbtxt(x, indent + 2)}{pad}  }}" for x in v)
                lines.append(f"{pad}{key} [\n{items}\n{pad}]\n")
            else:
                lines.append(f"{pad}{key}: {_pbtxt(v)}\n")
        return "".join(lines)
    if isinstance(value, list):
        return "[ " + ", ".join(_pbtxt(x) for x in value) + " ]" if value else "[ ]"
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def triton_config_text(
    name: str,
    backend: str,
    platform: str,
    inputs: Sequence[TritonTensor],
    outputs: Sequence[TritonTensor],
    *,
    max_batch_size: int,
    instance_kind: str,
    instance_count: int = 1,
    max_queue_delay_us: int = 100,
    label_output: str | None = None,
) -> str:
    """``config.pbtxt`` text; ``label_output`` names the output that gets ``label_filename: "labels.txt"``."""
    config: dict[str, Any] = {
        "name": name,
        "backend": backend,
        "platform": platform,
        "max_batch_size": int(max_batch_size),
        "input": [_tensor_entry(t) for t in inputs],
        "output": [_tensor_entry(t, LABELS_NAME if t.name == label_output else None) for t in outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": int(max_queue_delay_us)},
        "instance_group": [{"count": int(instance_count), "kind": _Enum(f"KIND_{instance_kind.upper()}")}],
    }
    return "# Triton model configuration written by retinakit (tools/deploy.py --triton-repo); docs/deployment.md\n" + _pbtxt(config)


def write_triton_repository(
    repo: str,
    model_path: str,
    *,
    meta: dict[str, Any],
    name: str = "retinakit",
    max_batch_size: int = 8,
    instance_kind: str = "auto",
    max_queue_delay_us: int = 100,
    onnx_path: str | None = None,
    engine_max_batch: int | None = None,
) -> str:
    """Write the model repository entry ``repo/name``; returns the ``config.pbtxt`` path.

    Args:
        model_path: ``.onnx`` (onnxruntime backend) or ``.plan`` (tensorrt backend), copied to
            ``repo/name/1/model.onnx`` / ``model.plan``.
        meta: the model's retinakit metadata (``num_classes``, ``class_names``, ``outputs``).
        max_batch_size: largest batch Triton forms (dynamic batching); for an engine at most
            ``engine_max_batch`` (its optimisation profile's largest batch).
        instance_kind: ``"auto"`` (GPU when there is one, else CPU; an engine always GPU),
            ``"gpu"`` or ``"cpu"`` (not for an engine).
        onnx_path: the ONNX an engine was built from (its inputs/outputs); defaults to ``model_path``.
    """
    ext = os.path.splitext(model_path)[1]
    if ext not in BACKENDS:
        raise ConfigError(f"Triton repository: '{model_path}' is neither an .onnx model nor a .plan engine.")
    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise ConfigError(f"EXPORT.TRITON.NAME (--triton-name) {name!r} must be a non-empty folder name without '/', '\\' or spaces.")
    if max_batch_size < 1:
        raise ConfigError(f"EXPORT.TRITON.MAX_BATCH_SIZE (--max-batch) must be >= 1, got {max_batch_size}.")
    if instance_kind not in INSTANCE_KINDS:
        raise ConfigError(f"EXPORT.TRITON.INSTANCE_KIND must be one of {INSTANCE_KINDS}, got {instance_kind!r}.")
    backend, platform, filename = BACKENDS[ext]
    if backend == "tensorrt":
        if instance_kind == "cpu":
            raise ConfigError("EXPORT.TRITON.INSTANCE_KIND 'cpu' cannot serve a TensorRT engine: use 'gpu' or 'auto'.")
        instance_kind = "gpu"
        if engine_max_batch is not None and max_batch_size > engine_max_batch:
            raise ConfigError(
                f"--max-batch {max_batch_size} exceeds the engine's largest batch {engine_max_batch} "
                "(EXPORT.TENSORRT.BATCH): lower it or rebuild the engine."
            )
    inputs, outputs = onnx_io(onnx_path or model_path)
    labels = class_labels(meta.get("class_names"), int(meta["num_classes"]))  # checked before anything is written
    folder = os.path.join(repo, name)
    os.makedirs(os.path.join(folder, "1"), exist_ok=True)
    shutil.copyfile(model_path, os.path.join(folder, "1", filename))
    write_labels(os.path.join(folder, LABELS_NAME), labels, len(labels))
    label_output = next((o.name for o in outputs if o.name in ("classes", "detection_classes")), None)
    text = triton_config_text(name, backend, platform, inputs, outputs, max_batch_size=max_batch_size,
                              instance_kind=instance_kind, max_queue_delay_us=max_queue_delay_us, label_output=label_output)
    path = os.path.join(folder, CONFIG_NAME)
    with open(path, "w") as f:
        f.write(text)
    return path
