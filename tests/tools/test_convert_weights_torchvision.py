"""tools/convert_weights.py --source torchvision: v1/v2 detected, loads with weights_only=True."""
import os
import subprocess
import sys

import pytest
import torch
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2

from retinakit.checkpoint.model_loading import load_model_weights
from retinakit.config import get_cfg
from retinakit.modeling import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("version,factory", [("v1", retinanet_resnet50_fpn), ("v2", retinanet_resnet50_fpn_v2)])
def test_cli_converts_and_names_matching_config(tmp_path, version, factory):
    tv = factory(weights=None, weights_backbone=None, num_classes=4)
    src, dst = tmp_path / "tv.pth", tmp_path / "out" / "rk.pth"
    torch.save(tv.state_dict(), src)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_weights.py"), "--source", "torchvision",
                        str(src), str(dst)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(dst, weights_only=True)
    info = ckpt["__retinakit__"]
    assert info["version"] == version and info["num_classes"] == 4
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, info["config"]))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RETINANET.NUM_CLASSES", 4])
    model = build_model(cfg)
    report = load_model_weights(model, ckpt, source=str(dst))
    assert report.missing == [] and report.converted_from == ""
    torch.testing.assert_close(model.head.cls_score.weight, tv.head.classification_head.cls_logits.weight)
    torch.testing.assert_close(model.backbone.top_block.p6.weight, tv.backbone.fpn.extra_blocks.p6.weight)


def test_cli_reports_bad_input(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_weights.py"), "--source", "torchvision",
                        str(tmp_path / "missing.pth"), str(tmp_path / "o.pth")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "not found" in r.stderr and "Traceback" not in r.stderr
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "odd.pth")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_weights.py"), "--source", "torchvision",
                        str(tmp_path / "odd.pth"), str(tmp_path / "o.pth")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "foo.weight" in r.stderr and "Traceback" not in r.stderr
