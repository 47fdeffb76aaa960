"""TensorRT engine build and runtime.

Without TensorRT (CPU machines) the builder is driven through a recording stand-in of the
``tensorrt`` module: the calls (strongly typed network, profile, workspace, timing cache,
metadata) are checked up to the engine build. With TensorRT and a GPU the real engine is
built and compared with onnxruntime (marked ``tensorrt`` and ``cuda``).
"""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest


def _fake_trt(version: str = "10.13.0", parse_ok: bool = True) -> types.ModuleType:
    calls: dict = {"profiles": [], "pool": {}}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls

    class Logger:
        WARNING, VERBOSE = 2, 4

        def __init__(self, level):
            calls["log_level"] = level

    class Flags:
        STRONGLY_TYPED = 5

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"] = path
            return parse_ok

        def get_error(self, i):
            return "In node 7 (NonMaxSuppression): unsupported"

    class Cache:
        def __init__(self, blob):
            self.blob = blob

        def serialize(self):
            return self.blob + b"+timings"

    class Config:
        builder_optimization_level = 0

        def set_memory_pool_limit(self, pool, size):
            calls["pool"][pool] = size

        def add_optimization_profile(self, p):
            calls["profiles"].append(p.shapes)

        def create_timing_cache(self, blob):
            calls["cache_in"] = blob
            return Cache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Builder:
        def __init__(self, logger):
            pass

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
            return b"ENGINE"

    trt.Logger, trt.NetworkDefinitionCreationFlag, trt.OnnxParser, trt.Builder = Logger, Flags, Parser, Builder
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    return trt


def test_build_engine_calls_strongly_typed_api(monkeypatch, e2e_onnx, tmp_path):
    from retinakit.export.tensorrt import (
        ShapeProfile,
        build_engine,
        read_engine_metadata,
    )

    trt = _fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    profile = ShapeProfile(1, 2, 4, (64, 64), (160, 160), (320, 320))
    plan = build_engine(
        e2e_onnx, str(tmp_path / "m.plan"), profile=profile, workspace_mib=256, timing_cache=str(cache), optimization_level=4,
    )
    c = trt.calls
    assert c["network_flags"] == 1 << 5
    assert c["pool"] == {"workspace": 256 << 20} and c["opt_level"] == 4
    assert c["profiles"] == [{
        "images": ((1, 3, 64, 64), (2, 3, 160, 160), (4, 3, 320, 320)),
        "image_sizes": ((1, 2), (2, 2), (4, 2)),
    }]
    assert c["cache_in"] == b"old" and cache.read_bytes() == b"old+timings"
    with open(plan, "rb") as f:
        assert f.read() == b"ENGINE"
    meta = read_engine_metadata(plan)
    assert meta["mode"] == "e2e" and meta["tensorrt_version"] == "10.13.0" and meta["profile"]["max_batch"] == 4
    json.dumps(meta)


def test_build_engine_parse_errors_and_old_versions(monkeypatch, e2e_onnx, tmp_path):
    from retinakit.export import MissingDependencyError
    from retinakit.export.tensorrt import EngineBuildError, build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt(parse_ok=False))
    with pytest.raises(EngineBuildError, match="NonMaxSuppression"):
        build_engine(e2e_onnx, str(tmp_path / "m.plan"))
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt(version="8.6.1"))
    with pytest.raises(MissingDependencyError, match="TensorRT >= 10"):
        build_engine(e2e_onnx, str(tmp_path / "m.plan"))


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
    from retinakit.export import load_predictor
    from retinakit.export.tensorrt import ShapeProfile, TensorRTRunner, build_engine

    from .conftest import ort_run, random_images

    plan = build_engine(e2e_onnx, str(tmp_path / "m.plan"), profile=ShapeProfile(1, 2, 4, (64, 64), (160, 160), (256, 256)),
                        timing_cache=str(tmp_path / "timing.cache"))
    images, sizes = calibration_data["images"][:3], calibration_data["image_sizes"][:3]
    ref = ort_run(e2e_onnx, images, sizes)
    out = TensorRTRunner(plan)({"images": images, "image_sizes": sizes})
    np.testing.assert_array_equal(out["num_dets"], ref[0])
    np.testing.assert_allclose(out["scores"], ref[2], atol=1e-3)
    np.testing.assert_allclose(out["boxes"], ref[1], atol=0.1)
    pred = load_predictor(plan)
    inst = pred(random_images([(160, 160), (100, 180)]))
    assert pred.backend.name == "tensorrt" and len(inst) == 2 and inst[1].image_size == (100, 180)
