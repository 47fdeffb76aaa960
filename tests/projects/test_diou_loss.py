"""projects/DIoULoss: a box loss registered from outside retinakit, selected by config."""
from __future__ import annotations

import os

import pytest
import torch
from _project_helpers import ROOT, run_tool, tiny_shapes
from torchvision.ops import distance_box_iou_loss

from retinakit.config import get_cfg
from retinakit.modeling import LOSS_REGISTRY, DeltaXYWHBoxCoder, build_model
from retinakit.structures import Boxes, Instances

CFG = os.path.join(ROOT, "projects", "DIoULoss", "configs", "retinanet_R10_FPN_shapes_diou.yaml")


def random_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 50 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def test_loss_equals_torchvision_distance_box_iou_loss():
    get_cfg().merge_from_file(CFG)  # imports the projects
    g = torch.Generator().manual_seed(0)
    anchors, gt = random_boxes(300, g), random_boxes(300, g)
    gt[:20] = anchors[:20]  # identical boxes: loss 0
    gt[20:40] = anchors[20:40] + torch.tensor([-5.0, -5.0, 5.0, 5.0])  # containment: IoU < 1, centres equal
    deltas = torch.randn(300, 4, generator=g) * 0.3
    coder = DeltaXYWHBoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    loss = LOSS_REGISTRY.get("diou")(weight=1.5)
    got = loss(deltas, anchors, gt, coder)
    pred = coder.decode(deltas, anchors)
    ref = distance_box_iou_loss(pred, gt, reduction="sum", eps=1e-7)
    torch.testing.assert_close(got, 1.5 * ref, rtol=1e-5, atol=1e-4)
    assert float(loss(torch.zeros(20, 4), anchors[:20], gt[:20], coder)) == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="WEIGHT"):
        LOSS_REGISTRY.get("diou")(weight=0.0)


def test_config_selects_the_loss_and_the_model_trains_a_step():
    cfg = get_cfg()
    cfg.merge_from_file(CFG)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.DIOU_LOSS.WEIGHT == 2.0 and cfg.MODEL.RESNET10.NORM == "BN"
    model = build_model(cfg)
    assert type(model.reg_loss).__name__ == "DIoULoss" and model.reg_loss.weight == 2.0
    inst = Instances((96, 96), gt_boxes=Boxes(torch.tensor([[10.0, 12.0, 40.0, 44.0]])), gt_classes=torch.tensor([2]))
    losses = model([{"image": torch.randint(0, 255, (3, 96, 96), dtype=torch.uint8), "instances": inst}])
    assert torch.isfinite(losses["loss_box_reg"]) and losses["loss_box_reg"] > 0
    losses["loss_box_reg"].backward()


@pytest.mark.slow
def test_train_net_with_two_projects(tmp_path):
    data = tiny_shapes(tmp_path, num_images=4)
    out = str(tmp_path / "out")
    r = run_tool(["tools/train_net.py", "--config-file", CFG, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
                  "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", out, *data["train"], "DATASETS.TEST", "()"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
