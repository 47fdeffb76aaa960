"""DeepStream: the nvinfer config is a valid key file that describes the exported graph, and the graph
run on nvinfer-style inputs gives the eager model's detections in the stock parser's layout."""
from __future__ import annotations

import configparser
import math
import os

import numpy as np
import pytest
import torch

from retinakit.config import ConfigError
from retinakit.export.serving import DEEPSTREAM_OUTPUTS, deepstream_scale, export_deepstream_onnx, write_deepstream_config

from ..conftest import RANDOM_MODEL_SCORE_THRESH, model_testutils, random_images

SIZE = (128, 192)  # non-square: a swapped x/y normalisation would show


def read_keyfile(path: str) -> dict[str, dict[str, str]]:
    """GLib key-file rules as nvinfer reads them: ``[group]`` headers, ``key=value`` lines, ``#``
    comments, case-sensitive keys, no duplicates, no value outside a group."""
    p = configparser.ConfigParser(delimiters=("=",), comment_prefixes=("#",), interpolation=None, strict=True,
                                  empty_lines_in_values=False, default_section="\0none")
    p.optionxform = str  # keys are case-sensitive
    with open(path) as f:
        p.read_file(f)
    return {g: dict(p[g]) for g in p.sections()}


@pytest.fixture(scope="module")
def ds_export(random_setup, tmp_path_factory):
    """``(folder, config path, onnx path)``: the random model's DeepStream graph and config."""
    from retinakit.export import model_metadata, read_metadata

    cfg, model = random_setup
    folder = tmp_path_factory.mktemp("deepstream")
    onnx_path = export_deepstream_onnx(model, str(tmp_path_factory.mktemp("ds_onnx") / "model_deepstream.onnx"), SIZE,
                                       metadata=model_metadata(cfg, model))
    path = write_deepstream_config(str(folder), onnx_path, meta=read_metadata(onnx_path), pixel_mean=cfg.MODEL.PIXEL_MEAN,
                                   score_thresh=RANDOM_MODEL_SCORE_THRESH)
    return str(folder), path, os.path.join(str(folder), "model_deepstream.onnx")


def test_config_is_a_key_file_describing_the_model(random_setup, ds_export):
    import onnx

    cfg, model = random_setup
    folder, path, _ = ds_export
    groups = read_keyfile(path)
    assert set(groups) == {"property", "class-attrs-all"}
    prop = groups["property"]
    # Every file it names exists, relative to the config's folder (as nvinfer resolves them);
    # custom-lib-path is DeepStream's own library, in its install tree.
    for key in ("onnx-file", "labelfile-path"):
        assert os.path.isfile(os.path.join(folder, prop[key])), key
    assert prop["custom-lib-path"].endswith("/lib/libnvds_infercustomparser.so")
    assert prop["parse-bbox-func-name"] == "NvDsInferParseCustomBatchedNMSTLT"
    assert "model-engine-file" not in prop and "int8-calib-file" not in prop
    assert prop["network-mode"] == "0" and prop["network-type"] == "0" and prop["cluster-mode"] == "4"
    # The declared dims, classes and outputs are the graph's and the model's.
    g = onnx.load(os.path.join(folder, prop["onnx-file"])).graph
    assert [i.name for i in g.input] == ["images"]
    in_dims = [d.dim_value or d.dim_param for d in g.input[0].type.tensor_type.shape.dim]
    assert isinstance(in_dims[0], str), "batch stays dynamic"
    assert prop["infer-dims"].split(";") == [str(d) for d in in_dims[1:]] == ["3", str(SIZE[0]), str(SIZE[1])]
    assert int(prop["num-detected-classes"]) == model.num_classes
    with open(os.path.join(folder, prop["labelfile-path"])) as f:
        assert f.read().splitlines() == ["circle", "square", "triangle", "star"]
    assert prop["output-blob-names"].split(";") == [o.name for o in g.output] == list(DEEPSTREAM_OUTPUTS)
    d = model.postprocessor.max_detections
    want = {"num_detections": (6, ["batch", 1]), "detection_boxes": (1, ["batch", d, 4]),
            "detection_scores": (1, ["batch", d]), "detection_classes": (1, ["batch", d])}  # 6 int32, 1 float32
    for o in g.output:
        t = o.type.tensor_type
        assert (t.elem_type, [x.dim_value or "batch" for x in t.shape.dim]) == want[o.name], o.name
    assert groups["class-attrs-all"]["topk"] == str(d)
    # Scales: nvinfer computes (x - offsets[c]) * net-scale-factor in model-color-format order.
    assert prop["model-color-format"] == ("0" if cfg.INPUT.FORMAT == "RGB" else "1")
    assert [float(v) for v in prop["offsets"].split(";")] == [float(m) for m in cfg.MODEL.PIXEL_MEAN]
    # 1 / the geometric mean of the stds (the model holds them in float32: ~1e-7 relative)
    assert float(prop["net-scale-factor"]) == pytest.approx(1.0 / math.prod(cfg.MODEL.PIXEL_STD) ** (1 / 3), rel=1e-6)


def test_graph_on_nvinfer_inputs_gives_the_eager_detections(random_setup, ds_export):
    """Frames of exactly infer-dims, prepared with the config's own offsets and scale, give the
    eager model's detections (boxes in the parser's [0, 1] units, classes as floats)."""
    import onnxruntime as ort

    from retinakit.structures import Boxes, Instances

    cfg, model = random_setup
    _, path, onnx_path = ds_export
    prop = read_keyfile(path)["property"]
    frames = random_images([SIZE] * 3, seed=7)
    offsets = torch.tensor([float(v) for v in prop["offsets"].split(";")]).view(3, 1, 1)
    batch = torch.stack([(f.float() - offsets) * float(prop["net-scale-factor"]) for f in frames]).numpy()
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    num, boxes, scores, classes = sess.run(None, {"images": batch})
    assert num.dtype == np.int32 and num.shape == (3, 1)
    assert boxes.dtype == scores.dtype == classes.dtype == np.float32
    with torch.no_grad():
        ref = [r["instances"] for r in model([{"image": f} for f in frames])]
    h, w = SIZE
    tu = model_testutils()
    nms = tu.NmsSettings(score_thresh=RANDOM_MODEL_SCORE_THRESH, nms_thresh=cfg.MODEL.RETINANET.NMS_THRESH_TEST,
                         max_detections=model.postprocessor.max_detections)
    for i, r in enumerate(ref):
        n = int(num[i, 0])
        assert (boxes[i, :n] >= 0).all() and (boxes[i, :n] <= 1).all(), "the parser expects boxes normalised to [0, 1]"
        assert (boxes[i, :n, 2] >= boxes[i, :n, 0]).all() and (boxes[i, :n, 3] >= boxes[i, :n, 1]).all()
        assert (classes[i, n:] == -1).all() and (classes[i, :n] == np.round(classes[i, :n])).all()
        got = Instances((h, w))
        got.pred_boxes = Boxes(torch.from_numpy(boxes[i, :n]) * torch.tensor([w, h, w, h], dtype=torch.float32))
        got.scores = torch.from_numpy(scores[i, :n])
        got.pred_classes = torch.from_numpy(classes[i, :n]).long()
        tu.assert_same_detections(tu.Detections.of(got), tu.Detections.of(r), nms, score_tol=1e-4, box_rtol=1e-4)


def test_scale_split_between_nvinfer_and_the_graph():
    """net-scale-factor x the graph's channel factor = 1 / std; equal stds need no in-graph multiply."""
    std = [58.395, 57.12, 57.375]
    scale, factors = deepstream_scale(std)
    for s, f in zip(std, factors):
        assert scale * f == pytest.approx(1.0 / s, rel=1e-12)
    assert deepstream_scale([1.0, 1.0, 1.0]) == (1.0, [1.0, 1.0, 1.0])
    assert deepstream_scale([57.0] * 3) == (1.0 / 57.0, [1.0] * 3)
    with pytest.raises(ConfigError, match="PIXEL_STD"):
        deepstream_scale([1.0, 0.0, 1.0])


def test_int8_and_fp16_configs(ds_export, tmp_path):
    """network-mode per precision; INT8 carries the calibration cache, copied next to the config."""
    from retinakit.export import read_metadata

    _, _, onnx_path = ds_export
    meta = read_metadata(onnx_path)
    cache = tmp_path / "calibration.cache"
    cache.write_text("TRT-10000-EntropyCalibration2\n")
    for precision, mode in (("fp16", "2"), ("int8", "1")):
        out = tmp_path / precision
        prop = read_keyfile(write_deepstream_config(str(out), onnx_path, meta=meta, pixel_mean=[0, 0, 0], precision=precision,
                                                    calibration_cache=str(cache)))["property"]
        assert prop["network-mode"] == mode
        assert ("int8-calib-file" in prop) == (precision == "int8")
        for key in ("onnx-file", "labelfile-path", "int8-calib-file"):
            assert key not in prop or os.path.isfile(out / prop[key]), key
    with pytest.raises(ConfigError, match="int8-calib-file"):
        write_deepstream_config(str(tmp_path / "x"), onnx_path, meta=meta, pixel_mean=[0, 0, 0], precision="int8")


def test_input_size_must_fit_the_backbone(random_setup, tmp_path):
    _, model = random_setup
    with pytest.raises(ConfigError, match=r"EXPORT\.DEEPSTREAM\.INPUT_SIZE .* divisibility 32"):
        export_deepstream_onnx(model, str(tmp_path / "m.onnx"), (100, 160))
    assert not os.path.exists(tmp_path / "m.onnx")
