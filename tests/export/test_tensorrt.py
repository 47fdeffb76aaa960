"""TensorRT engine build and runtime.

Without TensorRT (CPU machines) the builder and the runner are driven through stand-ins of the
``tensorrt`` and ``cuda.bindings.runtime`` modules that follow the real APIs where retinakit's
code depends on them (checked against the TensorRT 10/11 Python API documentation):

* ``IBuilderConfig.set_timing_cache(cache, ignore_mismatch)`` returns False for a cache made on
  another GPU / TensorRT version, and ``get_timing_cache()`` then returns None;
* ``ITimingCache.serialize()`` and ``build_serialized_network`` return an ``IHostMemory``
  (a buffer with ``nbytes``/``dtype``, not ``bytes``);
* a new builder config has ``BuilderFlag.TF32`` set; enum values are TensorRT's
  (``BuilderFlag.TF32 == 6``, ``NetworkDefinitionCreationFlag.STRONGLY_TYPED == 1``, severities);
* ``IExecutionContext.set_input_shape`` returns False (does not raise) outside the profile, and
  output shapes then contain -1;
* cuda-python calls return ``(cudaError_t, *values)`` tuples; device memory is host memory here.

With TensorRT and a GPU the real engine is built and compared with onnxruntime (marked
``tensorrt`` and ``cuda``).
"""
from __future__ import annotations

import ctypes
import enum
import json
import logging
import os
import re
import sys
import types

import numpy as np
import pytest

TRT_VERSION = "10.13.0"
CACHE_HEADER = f"TRT-{TRT_VERSION}-sm90|".encode()  # what the stand-in's builder writes into its caches
D = 3  # detections per image of the stand-in engine


class _HostMemory(np.ndarray):
    """``IHostMemory``-like: buffer protocol, ``nbytes``, ``dtype``; not ``bytes``."""


def _host_memory(data: bytes) -> _HostMemory:
    return np.frombuffer(bytes(data), dtype=np.uint8).copy().view(_HostMemory)


class BuilderFlag(enum.IntEnum):  # TensorRT's values (NvInfer.h BuilderFlag)
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 4
    DISABLE_TIMING_CACHE = 5
    TF32 = 6
    SPARSE_WEIGHTS = 7


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


def _engine_outputs(images: np.ndarray, sizes: np.ndarray) -> dict:
    """What the stand-in engine computes: a fixed function of each image alone."""
    n = images.shape[0]
    mean = images.reshape(n, -1).mean(axis=1)
    return {
        "num_dets": (np.round(mean).astype(np.int64) % (D + 1)).astype(np.int32),
        "boxes": np.stack([images[:, j % 3, 0, :4] + sizes[:, :1] * j for j in range(D)], axis=1).astype(np.float32),
        "scores": (mean[:, None] / 255.0 / np.arange(1, D + 1)[None, :]).astype(np.float32),
        "classes": np.tile(np.arange(D, dtype=np.int32), (n, 1)),
    }


def _fake_cudart() -> types.ModuleType:
    """``cuda.bindings.runtime`` stand-in: device memory is ctypes host memory."""
    rt = types.ModuleType("cuda.bindings.runtime")
    ok = 0
    rt.cudaError_t = types.SimpleNamespace(cudaSuccess=ok)
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    rt.memory = {}

    class Stream:
        def __int__(self):
            return 7

    def malloc(n):
        buf = ctypes.create_string_buffer(n)
        rt.memory[ctypes.addressof(buf)] = buf
        return ok, ctypes.addressof(buf)

    def memcpy(dst, src, n, kind, stream):
        ctypes.memmove(dst, src, n)
        return (ok,)

    rt.cudaStreamCreate = lambda: (ok, Stream())
    rt.cudaMalloc = malloc
    def free(ptr):
        rt.memory.pop(ptr)
        return (ok,)

    rt.cudaFree = free
    rt.cudaMemcpyAsync = memcpy
    rt.cudaStreamSynchronize = lambda s: (ok,)
    rt.cudaStreamDestroy = lambda s: (ok,)
    rt.cudaGetErrorString = lambda e: (ok, b"error")
    return rt


def _fake_trt(version: str = TRT_VERSION, parse_ok: bool = True, batch=(1, 1, 8), hw=((64, 64), (256, 256))) -> types.ModuleType:
    calls: dict = {"profiles": [], "pool": {}, "loggers": [], "users": [], "shapes": []}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls
    trt.refuse_shapes = False

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = 0, 1, 2, 3, 4

        def __init__(self, min_severity=2):
            self.min_severity = min_severity
            calls["loggers"].append(self)

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            calls["users"].append(("parser", logger))

        def parse_from_file(self, path):
            calls["parsed"] = path
            return parse_ok

        def get_error(self, i):
            return "In node 7 (NonMaxSuppression): unsupported"

    class TimingCache:
        def __init__(self, blob):
            self.entries = bytes(blob) or CACHE_HEADER

        def serialize(self):
            return _host_memory(self.entries)

    class Config:
        def __init__(self):
            self.builder_optimization_level = 3
            self.flags = 1 << int(BuilderFlag.TF32)  # TF32 is on in a new builder config
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            calls["pool"][pool] = size

        def set_flag(self, flag):
            self.flags |= 1 << int(flag)

        def clear_flag(self, flag):
            self.flags &= ~(1 << int(flag))

        def get_flag(self, flag):
            return bool(self.flags >> int(flag) & 1)

        def add_optimization_profile(self, p):
            calls["profiles"].append(p.shapes)
            return 0

        def create_timing_cache(self, blob):
            calls.setdefault("cache_in", []).append(bytes(blob))
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            if not cache.entries.startswith(CACHE_HEADER) and not ignore_mismatch:
                return False  # another GPU / TensorRT version: not attached
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Builder:
        def __init__(self, logger):
            calls["users"].append(("builder", logger))

        def create_network(self, flags):
            calls["network_flags"] = flags
            return object()

        def create_builder_config(self):
            calls["config"] = Config()
            return calls["config"]

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls["opt_level"] = config.builder_optimization_level
            calls["tf32"] = config.get_flag(BuilderFlag.TF32)
            if config.cache is not None:
                config.cache.entries += b"conv-timings;"
            return _host_memory(b"ENGINE")

    (lo_hw, hi_hw) = hw
    profile = {
        "images": ((batch[0], 3, *lo_hw), (batch[1], 3, *lo_hw), (batch[2], 3, *hi_hw)),
        "image_sizes": ((batch[0], 2), (batch[1], 2), (batch[2], 2)),
    }
    names = ["images", "image_sizes", "num_dets", "boxes", "scores", "classes"]
    DataType = types.SimpleNamespace(FLOAT="float", INT32="int32")
    TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")

    class Context:
        def __init__(self):
            self.shapes, self.addresses = {}, {}

        def set_input_shape(self, name, shape):
            lo, _, hi = profile[name]
            shape = tuple(int(d) for d in shape)
            if trt.refuse_shapes or len(shape) != len(lo) or any(not a <= d <= b for d, a, b in zip(shape, lo, hi)):
                return False
            self.shapes[name] = shape
            calls["shapes"].append((name, shape))
            return True

        def get_tensor_shape(self, name):
            n = self.shapes.get("images", (-1,))[0]
            if self.shapes.get("image_sizes", (-2,))[0] != n:
                n = -1
            return {"num_dets": (n,), "boxes": (n, D, 4), "scores": (n, D), "classes": (n, D)}[name]

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def _array(self, name, shape, dtype):
            count = int(np.prod(shape)) * np.dtype(dtype).itemsize
            return np.frombuffer((ctypes.c_char * count).from_address(self.addresses[name]), dtype=dtype).reshape(shape)

        def execute_async_v3(self, stream):
            images = self._array("images", self.shapes["images"], np.float32)
            sizes = self._array("image_sizes", self.shapes["image_sizes"], np.float32)
            for name, value in _engine_outputs(images, sizes).items():
                ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
            return True

    class Engine:
        num_io_tensors = len(names)

        def get_tensor_name(self, i):
            return names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name in profile else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return DataType.INT32 if name in ("num_dets", "classes") else DataType.FLOAT

        def get_tensor_profile_shape(self, name, index):
            assert index == 0
            return list(profile[name])

        def create_execution_context(self):
            calls["context"] = Context()
            return calls["context"]

    class Runtime:
        def __init__(self, logger):
            calls["users"].append(("runtime", logger))

        def deserialize_cuda_engine(self, data):
            return Engine() if bytes(data) == b"ENGINE" else None

    trt.Logger, trt.OnnxParser, trt.Builder, trt.Runtime = Logger, Parser, Builder, Runtime
    trt.BuilderFlag, trt.NetworkDefinitionCreationFlag = BuilderFlag, NetworkDefinitionCreationFlag
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.DataType, trt.TensorIOMode = DataType, TensorIOMode
    trt.nptype = lambda t: {"float": np.float32, "int32": np.int32}[t]
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    """Install the stand-ins; returns a factory ``make(**kwargs) -> tensorrt module``."""
    def make(**kwargs):
        trt = _fake_trt(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        rt = _fake_cudart()
        bindings = types.ModuleType("cuda.bindings")
        bindings.runtime = rt
        cuda = types.ModuleType("cuda")
        cuda.bindings = bindings
        for name, mod in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
            monkeypatch.setitem(sys.modules, name, mod)
        return trt

    return make


def _plan(tmp_path, e2e_onnx, **kwargs):
    from retinakit.export.tensorrt import ShapeProfile, build_engine

    profile = ShapeProfile(1, 2, 4, (64, 64), (160, 160), (320, 320))
    return build_engine(e2e_onnx, str(tmp_path / "m.plan"), profile=profile, **kwargs)


def test_build_engine_calls_strongly_typed_api(fake_trt, e2e_onnx, tmp_path):
    from retinakit.export.tensorrt import read_engine_metadata

    trt = fake_trt()
    cache = tmp_path / "timing.cache"
    cache.write_bytes(CACHE_HEADER + b"old;")
    plan = _plan(tmp_path, e2e_onnx, workspace_mib=256, timing_cache=str(cache), optimization_level=4)
    c = trt.calls
    assert c["network_flags"] == 1 << 1  # STRONGLY_TYPED
    assert c["pool"] == {"workspace": 256 << 20} and c["opt_level"] == 4
    assert c["profiles"] == [{
        "images": ((1, 3, 64, 64), (2, 3, 160, 160), (4, 3, 320, 320)),
        "image_sizes": ((1, 2), (2, 2), (4, 2)),
    }]
    # the loaded cache was attached, updated by the build and written back
    assert c["cache_in"] == [CACHE_HEADER + b"old;"] and cache.read_bytes() == CACHE_HEADER + b"old;conv-timings;"
    with open(plan, "rb") as f:
        assert f.read() == b"ENGINE"
    meta = read_engine_metadata(plan)
    assert meta["mode"] == "e2e" and meta["tensorrt_version"] == TRT_VERSION and meta["profile"]["max_batch"] == 4
    assert meta["tf32"] is False
    json.dumps(meta)


def test_fp32_builds_clear_the_default_tf32_flag(fake_trt, e2e_onnx, tmp_path):
    trt = fake_trt()
    _plan(tmp_path, e2e_onnx)
    assert trt.calls["tf32"] is False  # on by default in a new config: cleared
    _plan(tmp_path, e2e_onnx, tf32=True)
    assert trt.calls["tf32"] is True


def test_timing_cache_of_another_gpu_is_replaced(fake_trt, e2e_onnx, tmp_path, caplog):
    from retinakit.export.tensorrt import read_engine_metadata

    trt = fake_trt()
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"TRT-10.9.0-sm86|old;")  # set_timing_cache returns False for it
    with caplog.at_level(logging.WARNING, logger="retinakit.export.tensorrt"):
        plan = _plan(tmp_path, e2e_onnx, timing_cache=str(cache))
    assert "another GPU or TensorRT version" in caplog.text
    assert trt.calls["cache_in"] == [b"TRT-10.9.0-sm86|old;", b""]
    assert cache.read_bytes() == CACHE_HEADER + b"conv-timings;"  # the fresh cache the build used
    assert read_engine_metadata(plan)["mode"] == "e2e"  # metadata written after the engine
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_a_new_timing_cache_file_is_created(fake_trt, e2e_onnx, tmp_path):
    fake_trt()
    cache = tmp_path / "sub" / "timing.cache"
    _plan(tmp_path, e2e_onnx, timing_cache=str(cache))
    assert cache.read_bytes() == CACHE_HEADER + b"conv-timings;"


def test_one_logger_for_builders_and_runtimes(fake_trt, e2e_onnx, tmp_path):
    from retinakit.export.tensorrt import TensorRTRunner

    trt = fake_trt()
    plan = _plan(tmp_path, e2e_onnx, verbose=True)
    (log,) = trt.calls["loggers"]
    assert log.min_severity == trt.Logger.VERBOSE
    _plan(tmp_path, e2e_onnx)
    TensorRTRunner(plan)
    assert trt.calls["loggers"] == [log] and log.min_severity == trt.Logger.WARNING
    assert {kind for kind, _ in trt.calls["users"]} == {"builder", "parser", "runtime"}
    assert all(user is log for _, user in trt.calls["users"])


def test_build_engine_parse_errors_and_old_versions(fake_trt, e2e_onnx, tmp_path):
    from retinakit.export import MissingDependencyError
    from retinakit.export.tensorrt import EngineBuildError, build_engine

    fake_trt(parse_ok=False)
    with pytest.raises(EngineBuildError, match="NonMaxSuppression"):
        build_engine(e2e_onnx, str(tmp_path / "m.plan"))
    fake_trt(version="8.6.1")
    with pytest.raises(MissingDependencyError, match="TensorRT >= 10"):
        build_engine(e2e_onnx, str(tmp_path / "m.plan"))


def _images(n, h=64, w=96, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (n, 3, h, w)).astype(np.float32)
    sizes = np.tile(np.array([[h, w]], dtype=np.float32), (n, 1)) - np.arange(n, dtype=np.float32)[:, None]
    return images, sizes


def _assert_outputs(out, images, sizes):
    for i in range(len(images)):
        ref = _engine_outputs(images[i:i + 1], sizes[i:i + 1])
        for name, value in ref.items():
            np.testing.assert_array_equal(out[name][i:i + 1], value, err_msg=f"{name} of image {i}")
    assert {k: v.shape[0] for k, v in out.items()} == dict.fromkeys(ref, len(images))


def test_runner_splits_batches_above_the_profile_maximum(fake_trt, e2e_onnx, tmp_path):
    from retinakit.export.tensorrt import TensorRTRunner

    trt = fake_trt(batch=(1, 1, 2))
    runner = TensorRTRunner(_plan(tmp_path, e2e_onnx))
    assert runner.batch_range() == (1, 2)
    images, sizes = _images(5)
    out = runner({"images": images, "image_sizes": sizes})
    _assert_outputs(out, images, sizes)
    assert [s[0] for name, s in trt.calls["shapes"] if name == "images"] == [2, 2, 1]
    runner.close()


def test_runner_pads_batches_below_the_profile_minimum(fake_trt, e2e_onnx, tmp_path):
    from retinakit.export.tensorrt import TensorRTRunner

    trt = fake_trt(batch=(2, 2, 4))
    runner = TensorRTRunner(_plan(tmp_path, e2e_onnx))
    images, sizes = _images(5, seed=3)
    out = runner({"images": images, "image_sizes": sizes})
    _assert_outputs(out, images, sizes)
    assert [s[0] for name, s in trt.calls["shapes"] if name == "images"] == [4, 2]  # 4 + (1 padded to 2)
    out1 = runner({"images": images[:1], "image_sizes": sizes[:1]})
    _assert_outputs(out1, images[:1], sizes[:1])


def test_runner_rejects_shapes_outside_the_profile(fake_trt, e2e_onnx, tmp_path):
    from retinakit.export.tensorrt import TensorRTRunner

    trt = fake_trt(hw=((64, 64), (128, 128)))
    runner = TensorRTRunner(_plan(tmp_path, e2e_onnx))
    with pytest.raises(ValueError, match=r"outside the optimisation profile.*max \[8, 3, 128, 128\].*INPUT.MAX_SIZE_TEST"):
        runner({"images": np.zeros((1, 3, 160, 96), np.float32), "image_sizes": np.ones((1, 2), np.float32)})
    with pytest.raises(ValueError, match=r"min \[1, 3, 64, 64\]"):
        runner(dict(zip(("images", "image_sizes"), _images(1, h=32))))
    trt.refuse_shapes = True  # set_input_shape returns False: reported, not turned into -1 dimensions
    with pytest.raises(ValueError, match="TensorRT refused shape"):
        runner(dict(zip(("images", "image_sizes"), _images(1))))


def test_tensorrt_limits_of_the_e2e_graph():
    from retinakit.export.tensorrt import TensorRTLimitError, check_tensorrt_limits

    assert check_tensorrt_limits(5, 1000, 100) == []  # 5000 boxes: TensorRT's NMS limit exactly
    (msg,) = check_tensorrt_limits(5, 1001, 100)
    assert "5005 boxes per image" in msg and "MODEL.RETINANET.TOPK_CANDIDATES_TEST" in msg and "at most 1000" in msg
    assert check_tensorrt_limits(1, 3840, 3840) == []  # ITopKLayer: K up to 3840
    with pytest.raises(TensorRTLimitError, match=r"MODEL\.RETINANET\.TOPK_CANDIDATES_TEST = 3841"):
        check_tensorrt_limits(1, 3841, 100)
    with pytest.raises(TensorRTLimitError, match=r"TEST\.DETECTIONS_PER_IMAGE = 4000"):
        check_tensorrt_limits(3, 2000, 4000)
    assert check_tensorrt_limits(1, 1000, 4000) == []  # final K = min(detections, candidates) = 1000


def test_build_engine_checks_the_exported_sizes(fake_trt, random_setup, e2e_onnx, tmp_path, caplog):
    import onnx

    from retinakit.export.onnx import read_metadata, write_metadata
    from retinakit.export.tensorrt import TensorRTLimitError, build_engine

    _, model = random_setup
    meta = read_metadata(e2e_onnx)
    assert meta["num_levels"] == len(model.head_in_features)
    assert meta["topk_candidates"] == model.postprocessor.topk_candidates
    assert meta["max_detections"] == model.postprocessor.max_detections
    fake_trt()
    proto = onnx.load(e2e_onnx)
    for topk, expect in ((6000 // meta["num_levels"] + 1, "boxes per image"), (4000, None)):
        write_metadata(proto, {**meta, "topk_candidates": topk})
        path = str(tmp_path / f"k{topk}.onnx")
        onnx.save(proto, path)
        if expect:
            with caplog.at_level(logging.WARNING, logger="retinakit.export.tensorrt"):
                build_engine(path, str(tmp_path / "m.plan"))
            assert expect in caplog.text
        else:
            with pytest.raises(TensorRTLimitError, match="TOPK_CANDIDATES_TEST = 4000"):
                build_engine(path, str(tmp_path / "m.plan"))


def test_deploy_refuses_a_topk_tensorrt_cannot_build(random_weights, tmp_path):
    import subprocess

    from .conftest import QUICKSTART, ROOT

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "tools/deploy.py", "--config-file", QUICKSTART, "--weights", random_weights, "--output", str(tmp_path / "out"),
         "--tensorrt", "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "4000"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    text = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in text, text[-2000:]
    assert "MODEL.RETINANET.TOPK_CANDIDATES_TEST = 4000" in text and "3840" in text
    assert not os.path.exists(tmp_path / "out" / "model.onnx")  # refused before the export


def test_tensorrt_extra_needs_cuda_python_with_cuda_bindings():
    from packaging.requirements import Requirement

    from .conftest import ROOT

    with open(os.path.join(ROOT, "setup.py")) as f:
        line = next(x for x in f if x.strip().startswith('"tensorrt":'))
    (spec,) = [Requirement(r) for r in re.findall(r'"(cuda-python[^"]*)"', line)]
    assert not spec.specifier.contains("12.6.0") and spec.specifier.contains("12.6.1")


def _real_tensorrt_usable() -> bool:
    try:
        import torch

        from retinakit.export.tensorrt import tensorrt_available

        return tensorrt_available() and torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.tensorrt
@pytest.mark.cuda
@pytest.mark.skipif(not _real_tensorrt_usable(), reason="needs TensorRT >= 10, cuda-python and a GPU")
def test_engine_matches_onnxruntime(e2e_onnx, calibration_data, tmp_path):
    import torch

    from retinakit.export import load_predictor
    from retinakit.export.tensorrt import ShapeProfile, TensorRTRunner, build_engine

    from .conftest import RANDOM_MODEL_SCORE_THRESH, model_testutils, ort_run, random_images

    plan = build_engine(e2e_onnx, str(tmp_path / "m.plan"), profile=ShapeProfile(1, 2, 4, (64, 64), (160, 160), (256, 256)),
                        timing_cache=str(tmp_path / "timing.cache"))
    images, sizes = calibration_data["images"][:3], calibration_data["image_sizes"][:3]
    ref = ort_run(e2e_onnx, images, sizes)
    out = TensorRTRunner(plan)({"images": images, "image_sizes": sizes})
    # Matched detection by detection (float rounding may flip an NMS near-tie, which the
    # helper excuses and counts), not position by position.
    tu = model_testutils()
    nms = tu.NmsSettings(score_thresh=RANDOM_MODEL_SCORE_THRESH, nms_thresh=0.5, max_detections=100)

    def dets(num, boxes, scores, classes, i):
        n = int(np.asarray(num).reshape(-1)[i])
        return tu.Detections(torch.as_tensor(boxes[i, :n]).float(), torch.as_tensor(scores[i, :n]).float(),
                             torch.as_tensor(classes[i, :n]).long())

    for i in range(len(images)):
        got = dets(out["num_dets"], out["boxes"], out["scores"], out["classes"], i)
        tu.assert_same_detections(got, dets(*ref, i), nms, score_tol=1e-3, box_rtol=6e-4)  # 0.1 px at 160 px
    pred = load_predictor(plan)
    inst = pred(random_images([(160, 160), (100, 180)]))
    assert pred.backend.name == "tensorrt" and len(inst) == 2 and inst[1].image_size == (100, 180)
