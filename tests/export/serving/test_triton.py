"""The Triton model repository: config.pbtxt parses into Triton's own ModelConfig and matches the ONNX graph."""
from __future__ import annotations

import filecmp
import os

import numpy as np
import pytest

# Triton's generated protobuf module (retinakit[dev] installs tritonclient[grpc]).
from tritonclient.grpc import model_config_pb2 as mc

from retinakit.config import ConfigError
from retinakit.export.serving import write_triton_repository

from ..conftest import random_images


def parse_config(path: str) -> mc.ModelConfig:
    from google.protobuf import text_format

    with open(path) as f:
        return text_format.Parse(f.read(), mc.ModelConfig())


# numpy dtype of an ONNX tensor -> Triton DataType name (Triton's documented table).
NUMPY_TO_TRITON = {np.dtype(np.float32): "TYPE_FP32", np.dtype(np.float16): "TYPE_FP16", np.dtype(np.int32): "TYPE_INT32",
                   np.dtype(np.int64): "TYPE_INT64", np.dtype(np.uint8): "TYPE_UINT8", np.dtype(np.bool_): "TYPE_BOOL"}


def graph_io(path: str) -> tuple[list, list]:
    """``[(name, triton type, full dims with -1 for symbolic)]`` of the graph's inputs and outputs."""
    import onnx
    from onnx import helper

    g = onnx.load(path).graph

    def row(v):
        t = v.type.tensor_type
        dims = [d.dim_value if d.dim_value > 0 else -1 for d in t.shape.dim]
        return v.name, NUMPY_TO_TRITON[np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))], dims

    return [row(v) for v in g.input], [row(v) for v in g.output]


def assert_matches_graph(entries, graph_rows, max_batch: int) -> None:
    """Each config entry has the graph tensor's name, type and dims (batch dim dropped; a
    per-request scalar as dims [1] reshaped to [])."""
    assert [e.name for e in entries] == [r[0] for r in graph_rows]
    for e, (name, dtype, dims) in zip(entries, graph_rows):
        assert mc.DataType.Name(e.data_type) == dtype, name
        assert dims[0] == -1, f"{name}: batch dimension must be dynamic"
        if max_batch > 0 and len(dims) == 1:
            assert list(e.dims) == [1] and e.HasField("reshape") and list(e.reshape.shape) == [], name
        else:
            assert list(e.dims) == dims[1:], name
            assert not e.HasField("reshape"), name


def test_onnx_repository_parses_and_matches_the_graph(random_setup, e2e_onnx, tmp_path):
    from retinakit.export import read_metadata

    meta = read_metadata(e2e_onnx)
    path = write_triton_repository(str(tmp_path), e2e_onnx, meta=meta, name="rk_shapes", max_batch_size=4, max_queue_delay_us=250)
    assert path == str(tmp_path / "rk_shapes" / "config.pbtxt")
    cfg = parse_config(path)
    assert cfg.name == "rk_shapes" and cfg.platform == "onnxruntime_onnx" and cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == 4
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
    assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == 1
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_AUTO
    inputs, outputs = graph_io(e2e_onnx)
    assert_matches_graph(cfg.input, inputs, cfg.max_batch_size)
    assert_matches_graph(cfg.output, outputs, cfg.max_batch_size)
    assert [o.name for o in cfg.output] == ["num_dets", "boxes", "scores", "classes"]
    assert list(cfg.output[1].dims) == [meta["max_detections"], 4]
    # Labels: referenced from the classes output, one line per class, in class-index order.
    labelled = [o for o in cfg.output if o.label_filename]
    assert [o.name for o in labelled] == ["classes"]
    with open(tmp_path / "rk_shapes" / labelled[0].label_filename) as f:
        assert f.read().splitlines() == ["circle", "square", "triangle", "star"] == meta["class_names"]
    # The version folder holds the very model, under the backend's default file name.
    assert filecmp.cmp(e2e_onnx, tmp_path / "rk_shapes" / "1" / "model.onnx", shallow=False)


def test_repository_model_runs_with_the_declared_inputs(e2e_onnx, tmp_path):
    """Feeds built only from the config (names, types, dims with the dynamic ones chosen) run the
    repository's model in onnxruntime, and the outputs have the declared shapes."""
    import onnxruntime as ort

    from retinakit.export import read_metadata

    path = write_triton_repository(str(tmp_path), e2e_onnx, meta=read_metadata(e2e_onnx), max_batch_size=2)
    cfg = parse_config(path)
    np_type = {v: k for k, v in NUMPY_TO_TRITON.items()}
    img = np.stack([im.numpy() for im in random_images([(160, 160), (160, 160)])]).astype(np.float32)
    feeds = {"images": img, "image_sizes": np.array([[160, 160], [120, 150]], np.float32)}
    for e in cfg.input:
        want = [cfg.max_batch_size] + [d if d > 0 else 160 for d in e.dims]
        assert list(feeds[e.name].shape) == want and feeds[e.name].dtype == np_type[mc.DataType.Name(e.data_type)]
    sess = ort.InferenceSession(str(tmp_path / "retinakit" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    for o in cfg.output:
        shape = list(o.reshape.shape) if o.HasField("reshape") else list(o.dims)
        assert list(got[o.name].shape) == [cfg.max_batch_size, *shape], o.name
        assert got[o.name].dtype == np_type[mc.DataType.Name(o.data_type)], o.name


def test_engine_repository_uses_the_tensorrt_backend_on_gpu(e2e_onnx, tmp_path):
    """An engine is served by the tensorrt backend (GPU instances), its IO read from its ONNX."""
    from retinakit.export import read_metadata

    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized engine bytes")  # copied as is; Triton deserialises it, not the writer
    path = write_triton_repository(str(tmp_path / "repo"), str(plan), meta=read_metadata(e2e_onnx), onnx_path=e2e_onnx,
                                   max_batch_size=8, engine_max_batch=8)
    cfg = parse_config(path)
    assert cfg.platform == "tensorrt_plan" and cfg.backend == "tensorrt"
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert (tmp_path / "repo" / "retinakit" / "1" / "model.plan").read_bytes() == b"serialized engine bytes"
    inputs, outputs = graph_io(e2e_onnx)
    assert_matches_graph(cfg.input, inputs, cfg.max_batch_size)
    assert_matches_graph(cfg.output, outputs, cfg.max_batch_size)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_batch_size": 0}, "MAX_BATCH_SIZE"),
        ({"name": "a/b"}, "EXPORT.TRITON.NAME"),
        ({"instance_kind": "tpu"}, "EXPORT.TRITON.INSTANCE_KIND"),
        ({"plan": True, "instance_kind": "cpu"}, "cannot serve a TensorRT engine"),
        ({"plan": True, "max_batch_size": 16, "engine_max_batch": 8}, "EXPORT.TENSORRT.BATCH"),
    ],
)
def test_bad_settings_are_config_errors(e2e_onnx, tmp_path, kwargs, message):
    from retinakit.export import read_metadata

    model = e2e_onnx
    if kwargs.pop("plan", False):
        model = str(tmp_path / "model.plan")
        open(model, "wb").close()
        kwargs["onnx_path"] = e2e_onnx
    with pytest.raises(ConfigError, match=message):
        write_triton_repository(str(tmp_path / "repo"), model, meta=read_metadata(e2e_onnx), **kwargs)
    assert not os.path.exists(tmp_path / "repo"), "nothing is written when a setting is rejected"


def test_class_names_that_do_not_fit_the_model(e2e_onnx, tmp_path):
    from retinakit.export import read_metadata

    meta = dict(read_metadata(e2e_onnx), class_names=["a", "b"])
    with pytest.raises(ConfigError, match=r"2 class names but MODEL\.RETINANET\.NUM_CLASSES is 4"):
        write_triton_repository(str(tmp_path), e2e_onnx, meta=meta)


def test_deploy_serves_the_lowest_precision_engine_else_fp32_onnx(random_setup, e2e_onnx, tmp_path):
    """tools/deploy.py's choice: an engine when one was built (INT8 before FP16 before FP32, its IO
    from its own ONNX), otherwise the FP32 ONNX even when FP16/INT8 ONNX models were written."""
    import shutil

    from retinakit.export.serving.bundle import triton_bundle

    cfg, _ = random_setup
    files = {}
    for name in ("model.onnx", "model_fp16.onnx", "model_int8.onnx", "model.plan", "model_int8.plan"):
        files[name] = str(tmp_path / name)
        if name.endswith(".onnx"):
            shutil.copyfile(e2e_onnx, files[name])
        else:
            with open(files[name], "wb") as f:
                f.write(name.encode())
    onnx_only = [("fp32", files["model.onnx"]), ("fp16", files["model_fp16.onnx"]), ("int8", files["model_int8.onnx"])]
    parse_config(triton_bundle(cfg, onnx_only, str(tmp_path / "a")))
    assert filecmp.cmp(tmp_path / "a" / "retinakit" / "1" / "model.onnx", e2e_onnx, shallow=False)
    with_engines = [*onnx_only, ("fp32", files["model.plan"]), ("int8", files["model_int8.plan"])]
    c = parse_config(triton_bundle(cfg, with_engines, str(tmp_path / "b"), name="rk", max_batch_size=8))
    assert (c.name, c.platform, c.max_batch_size) == ("rk", "tensorrt_plan", 8)
    assert (tmp_path / "b" / "rk" / "1" / "model.plan").read_bytes() == b"model_int8.plan"
    with pytest.raises(ConfigError, match=r"EXPORT\.TENSORRT\.BATCH"):
        triton_bundle(cfg, with_engines, str(tmp_path / "c"), max_batch_size=int(cfg.EXPORT.TENSORRT.BATCH[2]) + 1)
