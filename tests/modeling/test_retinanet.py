"""RetinaNet built from configs: builds, trains a step, infers in image coordinates."""
import glob
import logging
import os

import pytest
import torch

from retinakit.checkpoint.model_loading import CheckpointMismatchError, load_model_weights
from retinakit.config import get_cfg
from retinakit.modeling import build_model
from retinakit.modeling.backbone import FrozenBatchNorm2d
from retinakit.structures import Boxes, Instances

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def small_cfg(depth=18, num_classes=3, **overrides):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", depth,
                         "MODEL.RETINANET.NUM_CLASSES", num_classes, "MODEL.FPN.OUT_CHANNELS", 64])
    for k, v in overrides.items():
        cfg.merge_from_list([k.replace("__", "."), v])
    return cfg


def _inputs(with_boxes=True):
    g = torch.Generator().manual_seed(0)
    a = {"image": torch.randint(0, 256, (3, 128, 160), generator=g, dtype=torch.uint8), "height": 256, "width": 320,
         "instances": Instances((128, 160), gt_boxes=Boxes([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 150.0, 110.0]]),
                                gt_classes=torch.tensor([0, 2]))}
    b = {"image": torch.randint(0, 256, (3, 96, 120), generator=g, dtype=torch.uint8),
         "instances": Instances((96, 120), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))}
    return [a, b] if with_boxes else [b]


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, ROOT) for p in CONFIGS])
def test_every_config_builds(path):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_resnet_depths_train_step(depth):
    torch.manual_seed(0)
    model = build_model(small_cfg(depth)).train()
    backward = depth in (18, 50)  # one basic-block and one bottleneck network; the others: losses only
    with torch.set_grad_enabled(backward):
        losses = model(_inputs())
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    if not backward:
        return
    sum(losses.values()).backward()
    grads = [p.grad for p in model.head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("reg_loss,norm", [("smooth_l1", ""), ("l1", "GN"), ("giou", "BN")])
def test_head_norms_and_losses(reg_loss, norm):
    model = build_model(small_cfg(MODEL__RETINANET__BBOX_REG_LOSS_TYPE=reg_loss, MODEL__RETINANET__NORM=norm,
                                  MODEL__FPN__NORM=norm, MODEL__RETINANET__NUM_CONVS=2)).train()
    losses = model(_inputs())
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_image_without_annotations_gives_zero_box_loss():
    model = build_model(small_cfg()).train()
    losses = model(_inputs(with_boxes=False))
    assert losses["loss_box_reg"].item() == 0.0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    sum(losses.values()).backward()


def test_crowd_regions_are_ignored():
    model = build_model(small_cfg()).train()
    anchors = torch.cat(model.anchor_generator([torch.zeros(1, 1, 16, 20)] * 0 or
                                               [torch.zeros(1, 1, 128 // s, 160 // s) for s in (8, 16, 32, 64, 128)],
                                               (128, 160)))
    crowd = Instances((128, 160), gt_boxes=Boxes([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 150.0, 110.0]]),
                      gt_classes=torch.tensor([0, 2]), gt_ignore=torch.tensor([False, True]))
    labels, _ = model.label_anchors(anchors, [crowd])
    no_crowd = Instances((128, 160), gt_boxes=Boxes([[10.0, 12.0, 60.0, 70.0]]), gt_classes=torch.tensor([0]))
    labels_ref, _ = model.label_anchors(anchors, [no_crowd])
    assert (labels == 2).sum() == 0  # the crowd box is never a target
    assert (labels == -1).sum() > (labels_ref == -1).sum()  # anchors on it are ignored
    assert torch.equal(labels == 0, labels_ref == 0)


def test_inference_in_original_image_coordinates():
    model = build_model(small_cfg(MODEL__RETINANET__SCORE_THRESH_TEST=0.0)).eval()
    with torch.no_grad():
        model.head.cls_score.bias.fill_(0.0)  # every anchor scores 0.5
        out = model(_inputs())
    a, b = out[0]["instances"], out[1]["instances"]
    assert a.image_size == (256, 320) and b.image_size == (96, 120)
    assert 0 < len(a) <= 100
    for inst, (h, w) in ((a, (256, 320)), (b, (96, 120))):
        boxes = inst.pred_boxes.tensor
        assert boxes.dtype == torch.float32
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w + 1e-3).all()
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= h + 1e-3).all()
        assert (inst.scores[:-1] >= inst.scores[1:]).all()
    assert a.pred_boxes.tensor[:, 2].max() > 160  # scaled x2 from the 160-wide network input


def test_frozen_stages_and_p6_source():
    model = build_model(small_cfg(MODEL__BACKBONE__FREEZE_AT=2, MODEL__RESNETS__NORM="BN", MODEL__FPN__TOP_BLOCK_IN="c5"))
    bu = model.backbone.bottom_up
    assert not any(p.requires_grad for p in bu.conv1.parameters())
    assert not any(p.requires_grad for p in bu.layer1.parameters())
    assert all(p.requires_grad for p in bu.layer2.parameters())
    assert isinstance(bu.bn1, FrozenBatchNorm2d) and isinstance(bu.layer1[0].bn1, FrozenBatchNorm2d)
    assert isinstance(bu.layer2[0].bn1, torch.nn.BatchNorm2d)
    assert model.backbone.top_block.p6.in_channels == 512  # C5 of ResNet-18
    p5 = build_model(small_cfg(MODEL__FPN__TOP_BLOCK_IN="p5"))
    assert p5.backbone.top_block.p6.in_channels == 64


def test_imagenet_resnet_state_dict_loads_into_bottom_up():
    from torchvision.models import resnet18

    tv = resnet18()
    model = build_model(small_cfg())
    sd = {k: v.clone() for k, v in tv.state_dict().items()}
    report = load_model_weights(model, sd, source="resnet18.pth")
    assert report.converted_from == "torchvision"
    torch.testing.assert_close(model.backbone.bottom_up.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    torch.testing.assert_close(model.backbone.bottom_up.layer3[1].bn2.running_var, tv.layer3[1].bn2.running_var)
    assert all(k.startswith(("backbone.lateral", "backbone.output", "backbone.top", "head.")) for k in report.missing)
    # the bottom-up network alone loads torchvision's keys directly (fc.* aside)
    missing, unexpected = model.backbone.bottom_up.load_state_dict(sd, strict=False)
    assert missing == [] and set(unexpected) == {"fc.weight", "fc.bias"}


def test_other_architecture_is_named_and_class_count_is_skipped(caplog):
    source = build_model(small_cfg(depth=34, num_classes=5))
    with pytest.raises(CheckpointMismatchError) as e:
        load_model_weights(build_model(small_cfg(depth=50)), source.state_dict(), source="r34.pth")
    assert "backbone.bottom_up.layer1.0.conv1.weight" in str(e.value) and "r34.pth" in str(e.value)
    target = build_model(small_cfg(depth=34, num_classes=3))
    with caplog.at_level(logging.WARNING):
        report = load_model_weights(target, {"model": source.state_dict()}, source="r34.pth")
    assert [k for k, _, _ in report.skipped_class_specific] == ["head.cls_score.weight", "head.cls_score.bias"]
    assert "head.cls_score.weight" in caplog.text and "different class count" in caplog.text
    torch.testing.assert_close(target.head.bbox_pred.weight, source.head.bbox_pred.weight)


def test_in_features_error_names_available_features():
    with pytest.raises(ValueError, match=r"p2.*p3"):
        build_model(small_cfg(MODEL__RETINANET__IN_FEATURES="['p2', 'p3']"))


def test_resize_in_model_scales_ground_truth():
    model = build_model(small_cfg(INPUT__RESIZE_IN_MODEL=True, INPUT__MIN_SIZE_TRAIN="(256,)", INPUT__MAX_SIZE_TRAIN=1000)).train()
    item = _inputs()[0]
    images = model.preprocess_image([item])
    assert images.image_sizes == [(256, 320)]
    gt = model._ground_truth(item, images.image_sizes[0])
    torch.testing.assert_close(gt.gt_boxes.tensor, item["instances"].gt_boxes.tensor * 2)
    assert gt.image_size == (256, 320)
    losses = model([item])
    assert all(torch.isfinite(v) for v in losses.values())
