"""INT8 calibration cache: TensorRT's text format (``name: big-endian float32 hex`` per tensor).

A header line then one line per activation tensor with its symmetric INT8 scale
(``amax / 127``). NVIDIA Model Optimizer reads this format (``calibration_cache_path``) and
TensorRT users know it, so the file can also be inspected or edited with their tools.
"""
from __future__ import annotations

import struct

from ..utils.errors import UserInputError

__all__ = ["CacheError", "read_cache", "scales_from_qdq_model", "write_cache"]

HEADER = "TRT-10000-EntropyCalibration2"


class CacheError(ValueError, UserInputError):
    """The calibration cache file is missing, malformed or does not fit the model."""


def write_cache(path: str, scales: dict[str, float], header: str = HEADER) -> None:
    """Write ``{tensor_name: scale}``."""
    with open(path, "w") as f:
        f.write(header + "\n")
        f.writelines(f"{name}: {struct.pack('!f', float(scales[name])).hex()}\n" for name in sorted(scales))


def read_cache(path: str) -> dict[str, float]:
    """``{tensor_name: scale}`` of a cache file; :class:`CacheError` when unreadable."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CacheError(f"Cannot read calibration cache '{path}': {e.strerror}.") from None
    out = {}
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        try:
            out[name] = struct.unpack("!f", bytes.fromhex(value))[0]
        except ValueError:
            raise CacheError(f"Calibration cache '{path}' line {i} is not 'tensor: hexfloat': {line[:80]!r}.") from None
        if not sep:
            raise CacheError(f"Calibration cache '{path}' line {i} is not 'tensor: hexfloat': {line[:80]!r}.")
    if not out:
        raise CacheError(f"Calibration cache '{path}' holds no tensor scales.")
    return out


def scales_from_qdq_model(model) -> dict[str, float]:
    """Activation scales of a Q/DQ ``onnx.ModelProto``: ``{quantized tensor: scale}`` (weights excluded)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and node.input[1] in inits:
            arr = numpy_helper.to_array(inits[node.input[1]])
            if arr.size == 1:
                out[node.input[0]] = float(arr.reshape(-1)[0])
    return out
