"""tools/deploy.py --triton-repo / --deepstream as a user runs them (random quickstart weights)."""
from __future__ import annotations

import configparser

import numpy as np
import pytest
from test_deploy_helpers import R18, assert_clean_error, random_checkpoint, run_tool, tiny_shapes

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "model.pth"))


def _keyfile(path: str) -> dict:
    p = configparser.ConfigParser(delimiters=("=",), comment_prefixes=("#",), interpolation=None, strict=True)
    p.optionxform = str
    with open(path) as f:
        p.read_file(f)
    return {g: dict(p[g]) for g in p.sections()}


@pytest.mark.slow
def test_triton_and_int8_deepstream_from_one_command(ckpt, tmp_path):
    """One run writes the Triton repository (FP32 ONNX, onnxruntime backend) and the INT8 DeepStream
    bundle: a Q/DQ copy of the DeepStream graph calibrated on nvinfer-style inputs, with its cache."""
    pytest.importorskip("modelopt.onnx.quantization", reason="NVIDIA Model Optimizer (retinakit[deploy]) not installed")
    import onnx
    import onnxruntime as ort
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from retinakit.export.calib_cache import read_cache

    _, images = tiny_shapes(str(tmp_path / "data"), num_images=4)
    out, repo, ds = tmp_path / "out", tmp_path / "repo", tmp_path / "ds"
    r = run_tool(["tools/deploy.py", "--config-file", R18, "--weights", ckpt, "--output", str(out), "--int8",
                  "--calibration-images", images, "--triton-repo", str(repo), "--triton-name", "shapes", "--max-batch", "2",
                  "--deepstream", str(ds), "EXPORT.DEEPSTREAM.INPUT_SIZE", "(128, 192)", "EXPORT.DEEPSTREAM.BATCH_SIZE", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"wrote {repo / 'shapes' / 'config.pbtxt'} (triton)" in r.stdout
    # Triton: the FP32 ONNX (no engine was built), batch 2.
    cfg = text_format.Parse((repo / "shapes" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert (cfg.name, cfg.platform, cfg.max_batch_size) == ("shapes", "onnxruntime_onnx", 2)
    assert (repo / "shapes" / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    # DeepStream: INT8 network-mode with the DeepStream graph's own calibration cache.
    prop = _keyfile(str(ds / "config_infer_primary_retinakit.txt"))["property"]
    assert (prop["network-mode"], prop["batch-size"], prop["infer-dims"]) == ("1", "2", "3;128;192")
    assert prop["onnx-file"] == "model_deepstream_int8.onnx"
    scales = read_cache(str(ds / prop["int8-calib-file"]))
    q = onnx.load(str(ds / prop["onnx-file"]))
    quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert set(scales) <= quantized and len(scales) > 10, "the cache holds the Q/DQ graph's activation scales"
    sess = ort.InferenceSession(str(ds / prop["onnx-file"]), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"images": np.zeros((2, 3, 128, 192), np.float32)})
    assert [o.name for o in sess.get_outputs()] == prop["output-blob-names"].split(";")
    assert [x.shape[:2] for x in outs] == [(2, 1), (2, 100), (2, 100), (2, 100)]


def test_serving_flag_errors(ckpt, tmp_path):
    r = run_tool(["tools/deploy.py", "--config-file", R18, "--weights", ckpt, "--output", str(tmp_path / "o"), "--max-batch", "4"])
    assert_clean_error(r, "--max-batch", "--triton-repo")
    r = run_tool(["tools/deploy.py", "--config-file", R18, "--weights", ckpt, "--output", str(tmp_path / "o"),
                  "--triton-repo", str(tmp_path / "r"), "--max-batch", "0"])
    assert_clean_error(r, "--max-batch must be >= 1")
    cache = tmp_path / "calibration.cache"
    cache.write_text("TRT-10000-EntropyCalibration2\nx: 3c000000\n")
    r = run_tool(["tools/deploy.py", "--config-file", R18, "--weights", ckpt, "--output", str(tmp_path / "o"), "--int8",
                  "--calibration-cache", str(cache), "--deepstream", str(tmp_path / "ds")])
    assert_clean_error(r, "--deepstream with --int8", "--calibration-images")
    r = run_tool(["tools/deploy.py", "--config-file", R18, "--weights", ckpt, "--output", str(tmp_path / "o"),
                  "--deepstream", str(tmp_path / "ds"), "EXPORT.DEEPSTREAM.INPUT_SIZE", "(100, 160)"])
    assert_clean_error(r, "EXPORT.DEEPSTREAM.INPUT_SIZE")
