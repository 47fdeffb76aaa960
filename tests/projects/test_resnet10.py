"""projects/ResNet10: a backbone registered from outside retinakit, trained, evaluated and
exported with the library's own tools (tools/train_net.py, tools/deploy.py)."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torchvision
from _project_helpers import ROOT, run_tool, tiny_shapes

from retinakit.config import ConfigError, get_cfg
from retinakit.modeling import BACKBONE_REGISTRY, build_backbone, build_model

CFG = os.path.join(ROOT, "projects", "ResNet10", "configs", "retinanet_R10_FPN_shapes.yaml")


def project_cfg(*overrides):
    cfg = get_cfg()
    cfg.merge_from_file(CFG)
    cfg.merge_from_list(list(overrides))
    return cfg


def test_config_registers_backbone_and_config_node():
    cfg = project_cfg()
    assert "build_resnet10_backbone" in BACKBONE_REGISTRY
    assert cfg.MODEL.RESNET10.BLOCKS_PER_STAGE == [1, 1, 1, 1]
    assert "RESNET10" in get_cfg().MODEL  # every new config gets the node once the project is imported
    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    assert list(shapes) == ["p3", "p4", "p5", "p6", "p7"]
    assert [s.stride for s in shapes.values()] == [8, 16, 32, 64, 128]
    out = backbone(torch.zeros(2, 3, 96, 160))
    assert out["p3"].shape == (2, 64, 12, 20) and out["p7"].shape == (2, 64, 1, 2)
    bottom = backbone.bottom_up
    assert type(bottom).__name__ == "ResNet10"
    assert sum(len(getattr(bottom, f"layer{i}")) for i in range(1, 5)) == 4
    assert bottom.output_shape()["res5"].channels == 256  # STAGE_CHANNELS of the config


def test_keys_and_shapes_match_torchvision_resnet18_first_blocks():
    from projects.ResNet10.resnet10 import ResNet10

    net = ResNet10(norm="BN")  # keyword construction, no config
    ref = torchvision.models.resnet18().state_dict()
    own = net.state_dict()
    for k, v in own.items():
        assert k in ref and ref[k].shape == v.shape, k
    assert sum(p.numel() for p in net.parameters()) < 0.5 * sum(v.numel() for k, v in ref.items() if not k.startswith("fc"))
    net.load_state_dict({k: ref[k] for k in own})  # ImageNet ResNet-18 first blocks load as they are


def test_freeze_at_and_bad_values():
    from projects.ResNet10.resnet10 import ResNet10

    net = ResNet10(freeze_at=2, norm="BN")
    assert not any(p.requires_grad for p in net.conv1.parameters())
    assert not any(p.requires_grad for p in net.layer1.parameters())
    assert all(p.requires_grad for p in net.layer2.parameters())
    assert type(net.bn1).__name__ == "FrozenBatchNorm2d"
    with pytest.raises(ValueError, match="4 entries"):
        ResNet10(stage_channels=[8, 16, 32])
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        ResNet10(out_features=["res6"])


def test_project_keys_without_custom_imports_fail_clearly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  RESNET10X:\n    NORM: BN\n")
    with pytest.raises(ConfigError, match="CUSTOM_IMPORTS"):
        get_cfg().merge_from_file(str(bad))
    missing = tmp_path / "missing.yaml"
    missing.write_text('CUSTOM_IMPORTS: ["projects.NoSuchProject.pkg"]\n')
    with pytest.raises(ConfigError, match="cannot be imported"):
        get_cfg().merge_from_file(str(missing))


def test_model_trains_one_step_from_python():
    cfg = project_cfg("MODEL.DEVICE", "cpu")
    model = build_model(cfg)
    from retinakit.structures import Boxes, Instances

    inst = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[8.0, 8.0, 30.0, 30.0]])), gt_classes=torch.tensor([1]))
    losses = model([{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8), "instances": inst}])
    sum(losses.values()).backward()
    assert model.backbone.bottom_up.conv1.weight.grad is not None


@pytest.mark.slow
def test_train_eval_export_with_the_library_tools(tmp_path):
    data = tiny_shapes(tmp_path)
    out = str(tmp_path / "out")
    common = ["SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", out, "SOLVER.LOG_PERIOD", "1"]
    r = run_tool(["tools/train_net.py", "--config-file", CFG, "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
                  *data["train"], *data["test"], *common])
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(x) for x in f]
    assert any("bbox/AP" in row for row in rows), rows[-1]
    # the dumped config names the project and its keys: it reloads on its own
    dumped = os.path.join(out, "config.yaml")
    r = run_tool(["tools/train_net.py", "--config-file", dumped, "--eval-only", "MODEL.WEIGHTS",
                  os.path.join(out, "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Evaluation of cfg_test (bbox)" in r.stdout + r.stderr
    # export with tools/deploy.py and check the ONNX model against PyTorch on the same images
    export = str(tmp_path / "export")
    r = run_tool(["tools/deploy.py", "--config-file", dumped, "--weights", os.path.join(out, "model_final.pth"),
                  "--output", export, "--verify", "--val-images", data["images"], "--val-annotations", data["json"],
                  "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert os.path.isfile(os.path.join(export, "model.onnx"))
    with open(os.path.join(export, "verify.json")) as f:
        results = json.load(f)["results"]
    assert len(results) == 2
    assert results[1]["max_box_diff"] < 1e-2, results
    assert abs(results[1]["delta_ap"]) < 1e-3, results
