"""retinakit train/infer/export end to end with ODTK-style flags on built-in shapes data.

Train a few iterations, re-run to resume, infer to detections.json (ids checked against the
annotations, which use non-contiguous ids), and an ODTK-layout checkpoint built here accepted
by all three subcommands: fine-tuned with another class count, and exported to ONNX whose
detections match the .pth's. Everything runs in-process through ``retinakit.cli.main``.
"""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from retinakit.checkpoint.converters import convert
from retinakit.cli import main
from retinakit.config import get_cfg
from retinakit.data.datasets.shapes import ShapesSpec, generate_shapes

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))


def _odtk_model_class():
    """tests/checkpoint/test_converters_equivalence.py's ODTK state-dict layout (imported by path)."""
    path = os.path.join(HERE, "..", "checkpoint", "test_converters_equivalence.py")
    spec = importlib.util.spec_from_file_location("rk_odtk_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.OdtkRetinaNet


def _dataset(tmp_path, image_size=64):
    """4 shapes images; the COCO JSON re-numbered with non-contiguous image and category ids."""
    d = generate_shapes("cli_e2e", ShapesSpec(num_images=4, image_size=image_size, min_object=10, max_objects=3, seed=7),
                        root=str(tmp_path / "ds"))
    with open(os.path.join(d, "annotations.json")) as f:
        data = json.load(f)
    cat = {c["id"]: 10 * c["id"] + 3 for c in data["categories"]}
    img = {im["id"]: 1000 + 7 * im["id"] for im in data["images"]}
    for c in data["categories"]:
        c["id"] = cat[c["id"]]
    for im in data["images"]:
        im["id"] = img[im["id"]]
    for a in data["annotations"]:
        a["category_id"], a["image_id"] = cat[a["category_id"]], img[a["image_id"]]
    ann = str(tmp_path / "ann.json")
    with open(ann, "w") as f:
        json.dump(data, f)
    return os.path.join(d, "images"), ann, data


def _run(capsys, argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert code == 0, out.out[-3000:] + out.err[-3000:]
    return out.out


def _iteration(path):
    return int(torch.load(path, weights_only=True)["iteration"])


def _check_detections(path, data):
    with open(path) as f:
        rows = json.load(f)
    assert rows, "no detections"
    images, cats = {im["id"] for im in data["images"]}, {c["id"] for c in data["categories"]}
    for r in rows:
        assert r["image_id"] in images and r["category_id"] in cats
        assert len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0 and 0.0 <= r["score"] <= 1.0
    return rows


def test_train_resume_infer_and_odtk_fine_tune(tmp_path, capsys):
    images, ann, data = _dataset(tmp_path)
    model = tmp_path / "out" / "model.pth"
    common = ["--backbone", "ResNet18FPN", "--images", images, "--annotations", ann, "--classes", 4, "--batch", 2,
              "--resize", 64, "--max-size", 64, "--jitter", 64, 64, "--full-precision", "--warmup", 1, "--milestones", 100]
    fast = ["--opts", "MODEL.WEIGHTS", "", "DATALOADER.NUM_WORKERS", 0, "MODEL.FPN.OUT_CHANNELS", 32]

    out = _run(capsys, ["train", model, *common, "--iters", 2, *fast])
    side = tmp_path / "out" / "model.yaml"
    assert f"equivalent: python tools/train_net.py --config-file {side}\n" in out
    assert _iteration(model) == 1  # two iterations: 0 and 1
    cfg = get_cfg()
    cfg.merge_from_file(str(side))  # the resolved config is a valid config of this run
    assert cfg.SOLVER.MAX_ITER == 2 and cfg.OUTPUT_DIR == str(tmp_path / "out" / "model_logs") and cfg.SEED >= 0

    out = _run(capsys, ["train", model, *common, "--iters", 3, *fast])  # MODEL exists: resume
    assert f"--config-file {side} --resume" in out
    assert _iteration(model) == 2
    with open(tmp_path / "out" / "model_logs" / "log.txt") as f:
        assert "Starting training from iteration 2 to 3" in f.read()

    det = tmp_path / "out" / "detections.json"
    out = _run(capsys, ["infer", model, "--images", images, "--annotations", ann, "--output", det,
                        "--opts", "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0])
    assert "equivalent: python tools/infer.py --model" in out and "Average Precision" in out
    assert {r["image_id"] for r in _check_detections(det, data)} == {im["id"] for im in data["images"]}

    # An ODTK checkpoint with 4 classes, fine-tuned for 3 (lr 0: the loaded weights stay as converted).
    odtk = _odtk_model_class()("ResNet18FPN", classes=4)
    ckpt = odtk.checkpoint()
    torch.save(ckpt, tmp_path / "odtk.pth")
    ft = tmp_path / "ft" / "ft.pth"
    out = _run(capsys, ["train", ft, *common, "--classes", 3, "--iters", 1, "--lr", 0, "--fine-tune", tmp_path / "odtk.pth",
                        "--opts", "DATALOADER.NUM_WORKERS", 0])
    notices = [line for line in out.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "4 classes, --classes is 3: the classifier is re-initialised" in notices[0]
    converted, _ = convert("odtk", ckpt["state_dict"], checkpoint=ckpt)
    tuned = torch.load(ft, weights_only=True)["model"]
    assert tuned["head.cls_score.weight"].shape[0] == 3 * 9
    for key in ("backbone.bottom_up.layer1.0.conv1.weight", "backbone.output_convs.2.conv.weight", "head.bbox_pred.weight"):
        torch.testing.assert_close(tuned[key], converted[key], rtol=0, atol=0)


def _by_image(rows, top):
    out = {}
    for r in sorted(rows, key=lambda r: -r["score"]):
        out.setdefault(r["image_id"], [])
        if len(out[r["image_id"]]) < top:
            out[r["image_id"]].append(r)
    return out


def test_odtk_checkpoint_infers_and_exports_to_matching_onnx(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    images, ann, data = _dataset(tmp_path)
    odtk = _odtk_model_class()("ResNet18FPN", classes=4).randomize(0)
    torch.save(odtk.checkpoint(), tmp_path / "odtk.pth")
    onnx_path = tmp_path / "odtk.onnx"
    out = _run(capsys, ["export", tmp_path / "odtk.pth", onnx_path, "--full-precision", "--size", 128])
    assert "equivalent: python tools/deploy.py --config-file" in out and onnx_path.is_file()
    size = ["--resize", 128, "--max-size", 128]
    _run(capsys, ["infer", tmp_path / "odtk.pth", "--images", images, "--annotations", ann, "--output", tmp_path / "pth.json", *size])
    _run(capsys, ["infer", onnx_path, "--images", images, "--annotations", ann, "--output", tmp_path / "onnx.json", *size])
    ref = _by_image(_check_detections(tmp_path / "pth.json", data), 10)
    got = _by_image(_check_detections(tmp_path / "onnx.json", data), 20)
    assert ref.keys() == got.keys()
    for img, dets in ref.items():
        for r in dets:  # the same detection in the ONNX model's top 20 (order among near-ties may differ)
            match = [g for g in got[img] if g["category_id"] == r["category_id"] and abs(g["score"] - r["score"]) <= 1e-4
                     and max(abs(a - b) for a, b in zip(g["bbox"], r["bbox"])) <= 1e-2]
            assert match, f"image {img}: {r} not in the ONNX detections"
