"""TensorRT engines from retinakit ONNX models, and a runtime on cuda-python.

Written for TensorRT 10 and 11: the network is strongly typed (precision comes from the
ONNX: FP32, typed FP16, or INT8 Q/DQ; no FP16/INT8 builder flags, no IInt8 calibrators,
which TensorRT 11 removed), NMS is parsed natively from ONNX ``NonMaxSuppression`` (no
plugin), batch/height/width are dynamic through one optimisation profile. Device memory
and the stream are managed with ``cuda.bindings.runtime`` and inference runs
``IExecutionContext.execute_async_v3``.

Install: ``pip install retinakit[tensorrt]`` (``tensorrt`` and ``cuda-python``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._deps import MissingDependencyError, require

__all__ = [
    "EngineBuildError",
    "ShapeProfile",
    "TensorRTBackend",
    "TensorRTRunner",
    "build_engine",
    "read_engine_metadata",
    "tensorrt_available",
]

logger = logging.getLogger(__name__)

MIN_TRT_MAJOR = 10


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX model or build the engine (message lists its errors)."""


@dataclass
class ShapeProfile:
    """Optimisation profile: batch and (padded) image sizes the engine accepts.

    ``min/opt/max_hw`` are ``(height, width)`` of the ``images`` input (multiples of the
    model's size divisibility); ``opt_*`` is what TensorRT tunes kernels for.
    """

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    min_hw: tuple[int, int] = (128, 128)
    opt_hw: tuple[int, int] = (800, 1344)
    max_hw: tuple[int, int] = (1344, 1344)

    def shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """``{input name: (min, opt, max)}`` for ``images [N, 3, H, W]`` and ``image_sizes [N, 2]``."""
        return {
            "images": ((self.min_batch, 3, *self.min_hw), (self.opt_batch, 3, *self.opt_hw), (self.max_batch, 3, *self.max_hw)),
            "image_sizes": ((self.min_batch, 2), (self.opt_batch, 2), (self.max_batch, 2)),
        }


def tensorrt_available() -> bool:
    """True when ``tensorrt`` (>= 10) and ``cuda.bindings`` import."""
    try:
        _trt()
        require("cuda.bindings.runtime")
        return True
    except MissingDependencyError:
        return False


def _trt() -> Any:
    trt = require("tensorrt", "TensorRT engines")
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TRT_MAJOR:
        raise MissingDependencyError(
            f"TensorRT {trt.__version__} is too old: retinakit needs TensorRT >= {MIN_TRT_MAJOR} "
            "(pip install -U retinakit[tensorrt])."
        )
    return trt


def _strongly_typed_flags(trt: Any) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def engine_metadata_path(engine_path: str) -> str:
    return engine_path + ".json"


def build_engine(
    onnx_path: str,
    engine_path: str,
    *,
    profile: ShapeProfile | None = None,
    workspace_mib: int = 4096,
    timing_cache: str | None = None,
    optimization_level: int = 3,
    verbose: bool = False,
) -> str:
    """Parse ``onnx_path`` into a strongly typed network and write the serialized engine.

    Args:
        profile: dynamic-shape ranges (default :class:`ShapeProfile`).
        workspace_mib: ``MemoryPoolType.WORKSPACE`` limit.
        timing_cache: file read before and written after the build (kernel timings are
            reused by later builds on the same GPU/TensorRT version); ``None`` disables it.
        optimization_level: ``builder_optimization_level`` (0-5).

    Writes ``engine_path`` and ``engine_path + ".json"`` (the ONNX model's retinakit metadata,
    the profile and the TensorRT version) and returns ``engine_path``.
    """
    from .onnx import read_metadata

    trt = _trt()
    profile = profile or ShapeProfile()
    trt_logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(_strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(os.path.abspath(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT {trt.__version__} cannot parse '{onnx_path}':\n" + "\n".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    config.builder_optimization_level = int(optimization_level)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.shapes().items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    cache = None
    if timing_cache:
        blob = b""
        if os.path.isfile(timing_cache):
            with open(timing_cache, "rb") as f:
                blob = f.read()
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} failed to build an engine from '{onnx_path}' (see its log above).")
    os.makedirs(os.path.dirname(os.path.abspath(engine_path)), exist_ok=True)
    with open(engine_path, "wb") as f:
        f.write(memoryview(serialized))
    if cache is not None:
        with open(timing_cache, "wb") as f:
            f.write(memoryview(config.get_timing_cache().serialize()))
    meta = read_metadata(onnx_path)
    meta.update(tensorrt_version=str(trt.__version__), profile=asdict(profile))
    with open(engine_metadata_path(engine_path), "w") as f:
        json.dump(meta, f, indent=2)
    return engine_path


def read_engine_metadata(engine_path: str) -> dict[str, Any]:
    """The metadata written next to an engine by :func:`build_engine`."""
    side = engine_metadata_path(engine_path)
    if not os.path.isfile(side):
        raise FileNotFoundError(
            f"'{side}' is missing: retinakit predictors need the metadata file that build_engine writes next to the engine."
        )
    with open(side) as f:
        return json.load(f)


def _cuda_check(result: Any) -> Any:
    """Unpack a ``cuda.bindings.runtime`` call result ``(err, *values)``; raise on error."""
    cudart = require("cuda.bindings.runtime", "the TensorRT runtime")
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, msg = cudart.cudaGetErrorString(err)
        raise RuntimeError(f"CUDA error {int(err)}: {msg.decode() if isinstance(msg, bytes) else msg}")
    return values[0] if len(values) == 1 else values


class TensorRTRunner:
    """Deserialized engine + execution context + one CUDA stream; device buffers grow as needed.

    ``runner({"images": [N, 3, H, W] float32, "image_sizes": [N, 2] float32}) -> {output name: array}``.
    """

    def __init__(self, engine_path: str) -> None:
        trt = _trt()
        self.cudart = require("cuda.bindings.runtime", "the TensorRT runtime")
        self.trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        with open(engine_path, "rb") as f:
            self.engine = self.runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise EngineBuildError(
                f"TensorRT {trt.__version__} cannot load '{engine_path}' (built by another TensorRT version or GPU?)."
            )
        self.context = self.engine.create_execution_context()
        self.stream = _cuda_check(self.cudart.cudaStreamCreate())
        self.names: list[str] = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if nbytes > cap:
            if ptr:
                _cuda_check(self.cudart.cudaFree(ptr))
            ptr, cap = int(_cuda_check(self.cudart.cudaMalloc(max(nbytes, 1)))), max(nbytes, 1)
            self._buffers[name] = (ptr, cap)
        return ptr

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, trt = self.cudart, self.trt
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hosts = {}
        for name in self.inputs:
            arr = np.ascontiguousarray(feeds[name], dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            hosts[name] = arr
            self.context.set_input_shape(name, arr.shape)
            ptr = self._device_buffer(name, arr.nbytes)
            self.context.set_tensor_address(name, ptr)
            _cuda_check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream))
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            self.context.set_tensor_address(name, self._device_buffer(name, out.nbytes))
            results[name] = out
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log).")
        for name, out in results.items():
            _cuda_check(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name][0], out.nbytes, d2h, self.stream))
        _cuda_check(cudart.cudaStreamSynchronize(self.stream))
        return results

    def close(self) -> None:
        """Free device buffers and the stream."""
        for ptr, _ in self._buffers.values():
            self.cudart.cudaFree(ptr)
        self._buffers.clear()
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self) -> None:  # pragma: no cover - depends on interpreter shutdown order
        with contextlib.suppress(Exception):  # nothing to report during interpreter shutdown
            self.close()


class TensorRTBackend:
    """Predictor backend over :class:`TensorRTRunner` (same outputs as the ONNX backend)."""

    name = "tensorrt"

    def __init__(self, engine_path: str, divisibility: int, precision: str = "") -> None:
        self.runner = TensorRTRunner(engine_path)
        self.divisibility = divisibility
        self.precision = precision or "fp32"

    def run(self, tensors: Sequence[Any]) -> list[Any]:
        from .calibration import pad_batch
        from .predictor import unpack_e2e

        images, sizes = pad_batch(list(tensors), self.divisibility)
        out = self.runner({"images": images, "image_sizes": sizes})
        return unpack_e2e(out["num_dets"], out["boxes"], out["scores"], out["classes"])
