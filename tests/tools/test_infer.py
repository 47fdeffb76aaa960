"""tools/infer.py: COCO results JSON, drawings and AP from an ONNX model or a .pth; clear errors."""
from __future__ import annotations

import json
import os

import pytest
from test_deploy_helpers import (
    R18,
    assert_clean_error,
    random_checkpoint,
    run_tool,
    tiny_shapes,
)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("infer")
    ckpt = random_checkpoint(str(d / "model.pth"))
    js, images = tiny_shapes(str(d))
    return ckpt, js, images, d


def test_infer_pth_and_onnx_give_the_same_detections(setup):
    import torch

    from retinakit.config import get_cfg
    from retinakit.export import export_onnx, load_model, model_metadata

    ckpt, js, images, d = setup
    opts = ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.011"]
    cfg = get_cfg()
    cfg.merge_from_file(R18)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    model = load_model(cfg, ckpt)
    onnx_path = str(d / "model.onnx")
    export_onnx(model, onnx_path, example_size=(1, 160, 160), metadata=model_metadata(cfg, model))
    out_pth, out_onnx = str(d / "pth.json"), str(d / "onnx.json")
    r = run_tool(["tools/infer.py", "--model", ckpt, "--config-file", R18, "--images", images, "--output", out_pth,
                  "--annotations", js, "--batch-size", "3", *opts])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "COCO box AP" in r.stdout
    r = run_tool(["tools/infer.py", "--model", onnx_path, "--images", images, "--output", out_onnx, "--annotations", js,
                  "--visualize", str(d / "vis"), "--score-thresh", "0.0", "--batch-size", "4"])
    assert r.returncode == 0, r.stderr[-2000:]
    with open(out_pth) as f, open(out_onnx) as g:
        a, b = json.load(f), json.load(g)
    assert len(a) == len(b) > 0
    assert {x["image_id"] for x in a} == {x["image_id"] for x in b}

    def key(x):
        return x["image_id"], -x["score"]

    for x, y in zip(sorted(a, key=key)[:50], sorted(b, key=key)[:50]):
        assert x["category_id"] == y["category_id"]
        assert torch.allclose(torch.tensor(x["bbox"]), torch.tensor(y["bbox"]), atol=0.2)
    assert len([f for f in os.listdir(d / "vis") if f.endswith(".png")]) == len(os.listdir(images))


def test_infer_bad_inputs(setup, tmp_path):
    ckpt, _, images, _ = setup
    r = run_tool(["tools/infer.py", "--model", str(tmp_path / "none.onnx"), "--images", images, "--output", str(tmp_path / "o.json")])
    assert_clean_error(r, "none.onnx")
    r = run_tool(["tools/infer.py", "--model", ckpt, "--images", images, "--output", str(tmp_path / "o.json")])
    assert_clean_error(r, "--config-file")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("x")
    r = run_tool(["tools/infer.py", "--model", ckpt, "--config-file", R18, "--images", str(junk), "--output", str(tmp_path / "o.json")])
    assert_clean_error(r, "No images found")
    (junk / "b.png").write_text("not a png")
    r = run_tool(["tools/infer.py", "--model", ckpt, "--config-file", R18, "--images", str(junk), "--output", str(tmp_path / "o.json")])
    assert_clean_error(r, "b.png")
