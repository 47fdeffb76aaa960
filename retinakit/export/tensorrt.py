"""TensorRT engines from retinakit ONNX models, and a runtime on cuda-python.

Written for TensorRT 10 and 11: the network is strongly typed (precision comes from the
ONNX: FP32, typed FP16, or INT8 Q/DQ; no FP16/INT8 builder flags, no IInt8 calibrators,
which TensorRT 11 removed), NMS is parsed natively from ONNX ``NonMaxSuppression`` (no
plugin), batch/height/width are dynamic through one optimisation profile. Device memory
and the stream are managed with ``cuda.bindings.runtime`` and inference runs
``IExecutionContext.execute_async_v3``.

Install: ``pip install retinakit[tensorrt]`` (``tensorrt`` and ``cuda-python >= 12.6.1``, the first
release with ``cuda.bindings``). TensorRT, cuda-python and the driver must share a CUDA major version.

Checked against the TensorRT 10/11 Python API: ``IBuilderConfig.set_timing_cache`` returns False
(and ``get_timing_cache`` then None) for a cache of another GPU or TensorRT version;
``IExecutionContext.set_input_shape`` returns False, it does not raise, for a shape outside the
profile; ``BuilderFlag.TF32`` is on in a new builder config; TensorRT treats its logger as a
process-wide singleton; ``ITopKLayer`` supports K up to 3840; ``INMSLayer`` considers at most 5000
boxes per image (2000 on SM 5.3 / 6.2 devices).
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

from ..utils.errors import UserInputError
from ._deps import MissingDependencyError, require

__all__ = [
    "EngineBuildError",
    "ShapeProfile",
    "TensorRTBackend",
    "TensorRTLimitError",
    "TensorRTRunner",
    "build_engine",
    "check_tensorrt_limits",
    "profile_from_cfg",
    "read_engine_metadata",
    "tensorrt_available",
]

logger = logging.getLogger(__name__)

MIN_TRT_MAJOR = 10
# ITopKLayer.setK: "Currently only values up to 3840 are supported" (TensorRT 10 and 11).
TOPK_MAX_K = 3840
# INMSLayer TopK box limit: boxes considered per batch item (image), all classes together.
NMS_MAX_BOXES = 5000
NMS_MAX_BOXES_SM53_62 = 2000  # Jetson TX1 (SM 5.3) / TX2 (SM 6.2)

# TensorRT treats its logger as a process-wide singleton: every Builder/Runtime gets this one.
_LOGGER: dict[str, Any] = {}


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX model or build the engine (message lists its errors)."""


class TensorRTLimitError(EngineBuildError, ValueError, UserInputError):
    """The exported graph exceeds a hard TensorRT layer limit (message names the config key to change)."""


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


def profile_from_cfg(cfg: Any, divisibility: int) -> ShapeProfile:
    """The optimisation profile of ``cfg``: batches ``EXPORT.TENSORRT.BATCH``, sizes from
    ``EXPORT.TENSORRT.MIN_HW`` to ``INPUT.MAX_SIZE_TEST`` (tuned for ``MIN_SIZE_TEST`` x max),
    rounded up to multiples of ``divisibility``."""
    t = cfg.EXPORT.TENSORRT
    top = -(-int(cfg.INPUT.MAX_SIZE_TEST or 1344) // divisibility) * divisibility
    opt_short = -(-int(cfg.INPUT.MIN_SIZE_TEST or top) // divisibility) * divisibility
    return ShapeProfile(int(t.BATCH[0]), int(t.BATCH[1]), int(t.BATCH[2]), tuple(t.MIN_HW), (opt_short, top), (top, top))


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


def _trt_logger(trt: Any, verbose: bool | None = None) -> Any:
    """The one ``trt.Logger`` of the process; ``verbose`` True/False sets VERBOSE/WARNING, None keeps it."""
    if _LOGGER.get("module") is not trt:  # a different tensorrt module (only the tests swap it)
        _LOGGER.update(module=trt, logger=trt.Logger(trt.Logger.WARNING))
    log = _LOGGER["logger"]
    if verbose is not None:
        log.min_severity = trt.Logger.VERBOSE if verbose else trt.Logger.WARNING
    return log


def check_tensorrt_limits(num_levels: int, topk_candidates: int, max_detections: int) -> list[str]:
    """Check an end-to-end graph's TopK/NMS sizes against TensorRT's layer limits.

    The graph takes ``topk_candidates`` per level (``MODEL.RETINANET.TOPK_CANDIDATES_TEST``) from
    ``num_levels`` levels (``MODEL.RETINANET.IN_FEATURES``), runs NMS on those
    ``num_levels * topk_candidates`` boxes per image and keeps the top ``max_detections``
    (``TEST.DETECTIONS_PER_IMAGE``).

    Raises:
        TensorRTLimitError: a TopK with K > 3840, which TensorRT cannot build.
    Returns:
        warnings: NMS sees more boxes per image than TensorRT's NMS layer considers.
    """
    candidates = int(num_levels) * int(topk_candidates)
    final_k = min(int(max_detections), candidates)
    for key, k in (("MODEL.RETINANET.TOPK_CANDIDATES_TEST", int(topk_candidates)), ("TEST.DETECTIONS_PER_IMAGE", final_k)):
        if k > TOPK_MAX_K:
            raise TensorRTLimitError(
                f"{key} = {k}: TensorRT's TopK layer supports K <= {TOPK_MAX_K}, so no engine can be built from this "
                f"export. Set {key} to at most {TOPK_MAX_K} and export again."
            )
    if candidates <= NMS_MAX_BOXES:
        return []
    return [
        f"NMS input: {num_levels} levels (MODEL.RETINANET.IN_FEATURES) x {topk_candidates} candidates "
        f"(MODEL.RETINANET.TOPK_CANDIDATES_TEST) = {candidates} boxes per image, but TensorRT's NMS layer considers "
        f"only the {NMS_MAX_BOXES} highest-scoring boxes per image ({NMS_MAX_BOXES_SM53_62} on SM 5.3/6.2 Jetsons): "
        f"the engine may drop detections that onnxruntime and PyTorch keep. Set MODEL.RETINANET.TOPK_CANDIDATES_TEST "
        f"to at most {NMS_MAX_BOXES // max(int(num_levels), 1)} so that TensorRT sees every candidate."
    ]


def _check_metadata_limits(meta: dict[str, Any]) -> None:
    """Apply :func:`check_tensorrt_limits` to an e2e export's metadata (exports that record the sizes)."""
    keys = ("num_levels", "topk_candidates", "max_detections")
    if meta.get("mode") != "e2e" or any(k not in meta for k in keys):
        return
    for msg in check_tensorrt_limits(*(int(meta[k]) for k in keys)):
        logger.warning(msg)


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
    tf32: bool = False,
) -> str:
    """Parse ``onnx_path`` into a strongly typed network and write the serialized engine.

    Args:
        profile: dynamic-shape ranges (default :class:`ShapeProfile`).
        workspace_mib: ``MemoryPoolType.WORKSPACE`` limit.
        timing_cache: file read before and written after the build (kernel timings are
            reused by later builds on the same GPU/TensorRT version; a cache of another GPU or
            version is replaced by a fresh one, with a warning); ``None`` disables it.
        optimization_level: ``builder_optimization_level`` (0-5).
        tf32: let FP32 convolutions/matrix products use TF32 (10-bit mantissa inputs).
            TensorRT enables ``BuilderFlag.TF32`` by default; retinakit clears it so that the
            FP32 parts of an engine compute in FP32 like onnxruntime and PyTorch.

    Writes ``engine_path`` and ``engine_path + ".json"`` (the ONNX model's retinakit metadata,
    the profile and the TensorRT version) and returns ``engine_path``.
    """
    from .onnx import read_metadata

    trt = _trt()
    meta = read_metadata(onnx_path)
    _check_metadata_limits(meta)
    profile = profile or ShapeProfile()
    trt_logger = _trt_logger(trt, verbose)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(_strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(os.path.abspath(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT {trt.__version__} cannot parse '{onnx_path}':\n" + "\n".join(errors))
    config = _builder_config(trt, builder, profile, workspace_mib, optimization_level, tf32)
    cache = _attach_timing_cache(config, timing_cache) if timing_cache else None
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} failed to build an engine from '{onnx_path}' (see its log above).")
    os.makedirs(os.path.dirname(os.path.abspath(engine_path)), exist_ok=True)
    with open(engine_path, "wb") as f:
        f.write(memoryview(serialized))
    if cache is not None and timing_cache:
        _write_timing_cache(cache, timing_cache)
    meta.update(tensorrt_version=str(trt.__version__), profile=asdict(profile), tf32=bool(tf32))
    with open(engine_metadata_path(engine_path), "w") as f:
        json.dump(meta, f, indent=2)
    return engine_path


def _builder_config(trt: Any, builder: Any, profile: ShapeProfile, workspace_mib: int, optimization_level: int, tf32: bool) -> Any:
    """``IBuilderConfig`` with the workspace limit, optimisation level, TF32 choice and the profile."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    config.builder_optimization_level = int(optimization_level)
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
    if tf32_flag is not None:
        if tf32:
            config.set_flag(tf32_flag)
        else:
            config.clear_flag(tf32_flag)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.shapes().items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    return config


def _attach_timing_cache(config: Any, path: str) -> Any:
    """Attach the timing cache read from ``path`` (or a fresh one) to ``config``; returns it, or None.

    ``set_timing_cache`` returns False for a cache made on another GPU or TensorRT version;
    the build then starts from an empty cache, which replaces the file afterwards.
    """
    blob = b""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            blob = f.read()
    if blob:
        cache = config.create_timing_cache(blob)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return cache
        logger.warning(f"Timing cache '{path}' was made by another GPU or TensorRT version: building with a fresh cache, "
                       "which will replace it.")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        logger.warning("TensorRT refused an empty timing cache: building without one.")
        return None
    return cache


def _write_timing_cache(cache: Any, path: str) -> None:
    """Serialize ``cache`` (the object attached to the build, an ``IHostMemory``) to ``path`` atomically."""
    data = memoryview(cache.serialize())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


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

    ``runner({"images": [N, 3, H, W] float32, "image_sizes": [N, 2] float32}) -> {output name: array}``
    with every output's first dimension ``N``. Any ``N`` works: batches larger than the
    profile's maximum run in profile-sized chunks, smaller than its minimum are padded (the
    padding rows are dropped). Other dimensions outside the profile raise :class:`ValueError`.
    """

    def __init__(self, engine_path: str) -> None:
        trt = _trt()
        self.cudart = require("cuda.bindings.runtime", "the TensorRT runtime")
        self.trt = trt
        self.runtime = trt.Runtime(_trt_logger(trt))
        with open(engine_path, "rb") as f:
            self.engine = self.runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise EngineBuildError(
                f"TensorRT {trt.__version__} cannot load '{engine_path}' (built by another TensorRT version or GPU?)."
            )
        self.path = engine_path
        self.context = self.engine.create_execution_context()
        self.stream = _cuda_check(self.cudart.cudaStreamCreate())
        self.names: list[str] = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        # name -> (min shape, max shape) of optimisation profile 0
        self.profile: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for n in self.inputs:
            lo, _, hi = self.engine.get_tensor_profile_shape(n, 0)
            self.profile[n] = (tuple(int(d) for d in lo), tuple(int(d) for d in hi))
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)

    def batch_range(self) -> tuple[int, int]:
        """``(min, max)`` batch size one engine execution accepts (the profile's, over all inputs)."""
        return max(lo[0] for lo, _ in self.profile.values()), min(hi[0] for _, hi in self.profile.values())

    def _check_shapes(self, feeds: dict[str, np.ndarray]) -> int:
        """Batch size of ``feeds``; ValueError for an empty batch or non-batch dimensions outside the profile."""
        sizes = {int(np.shape(feeds[n])[0]) for n in self.inputs}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(f"TensorRT inputs {self.inputs} need one non-zero batch size, got {sorted(sizes)}.")
        for name in self.inputs:
            shape, (lo, hi) = tuple(np.shape(feeds[name])), self.profile[name]
            if len(shape) != len(lo) or any(not (a <= d <= b) for d, a, b in zip(shape[1:], lo[1:], hi[1:])):
                raise ValueError(
                    f"Input '{name}' of shape {list(shape)} is outside the optimisation profile of '{self.path}' "
                    f"(min {list(lo)}, max {list(hi)}; larger batches are split, smaller ones padded): rebuild the engine with a "
                    "profile that covers this size (EXPORT.TENSORRT.MIN_HW, INPUT.MAX_SIZE_TEST)."
                )
        return sizes.pop()

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = self._check_shapes(feeds)
        lo, hi = self.batch_range()
        parts = []
        for start in range(0, n, hi):
            chunk = {name: np.asarray(feeds[name])[start:start + hi] for name in self.inputs}
            m = len(chunk[self.inputs[0]])
            if m < lo:  # pad with copies of the last row up to the profile's minimum batch
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], lo - m, axis=0)]) for k, v in chunk.items()}
            parts.append({k: v[:m] for k, v in self._execute(chunk).items()})
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.outputs}

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if nbytes > cap:
            if ptr:
                _cuda_check(self.cudart.cudaFree(ptr))
            ptr, cap = int(_cuda_check(self.cudart.cudaMalloc(max(nbytes, 1)))), max(nbytes, 1)
            self._buffers[name] = (ptr, cap)
        return ptr

    def _set_input(self, name: str, arr: np.ndarray) -> None:
        """Set ``name``'s shape (checked: ``set_input_shape`` returns False, it does not raise) and copy it."""
        if not self.context.set_input_shape(name, arr.shape):
            lo, hi = self.profile[name]
            raise ValueError(
                f"TensorRT refused shape {list(arr.shape)} for input '{name}' of '{self.path}' (profile min {list(lo)}, "
                f"max {list(hi)})."
            )
        ptr = self._device_buffer(name, arr.nbytes)
        self.context.set_tensor_address(name, ptr)
        h2d = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _cuda_check(self.cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream))

    def _execute(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One engine execution on a batch within the profile."""
        cudart, trt = self.cudart, self.trt
        hosts = {}  # keeps the host inputs alive until the stream is synchronised
        for name in self.inputs:
            hosts[name] = np.ascontiguousarray(feeds[name], dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            self._set_input(name, hosts[name])
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"TensorRT could not infer the shape of output '{name}' ({list(shape)}) of '{self.path}'.")
            out = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            self.context.set_tensor_address(name, self._device_buffer(name, out.nbytes))
            results[name] = out
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log).")
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
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
