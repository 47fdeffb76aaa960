"""MobileNetV3 backbone: torchvision ImageNet weights import (features equal torchvision's at the
documented layers), output strides/channels, FPN with P2, freeze policy, config errors, training."""
from __future__ import annotations

import importlib.util
import os
import re
import sys

import pytest
import torch
from torch import nn

from retinakit.config import get_cfg
from retinakit.modeling.backbone import FPN, MobileNetV3, build_backbone
from retinakit.modeling.backbone.norm import FrozenBatchNorm2d

torchvision = pytest.importorskip("torchvision")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
QUICKSTART = os.path.join(REPO, "configs", "quickstart", "retinanet_MNV3_Large_shapes.yaml")
# Output -> index of torchvision's ``features`` whose output it is (module docstring of mobilenet.py).
TV_LAYER = {
    "large": {"res2": 3, "res3": 6, "res4": 12, "res5": 16},
    "small": {"res2": 1, "res3": 3, "res4": 8, "res5": 12},
}
TV_LAST_BLOCK = {"large": 15, "small": 11}  # res5 with last_conv=False
CHANNELS = {"large": (24, 40, 112, 960), "small": (16, 24, 48, 576)}
ALL = ["res2", "res3", "res4", "res5"]


def _testutils():
    name = "rk_model_testutils"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tests", "modeling", name + ".py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _images(n: int = 2, h: int = 96, w: int = 128, seed: int = 0) -> torch.Tensor:
    """Normalised image-like inputs ``[n, 3, h, w]``: smooth blobs plus noise, O(1) values."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, h // 16, w // 16, generator=g)
    smooth = nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return smooth + 0.3 * torch.randn(n, 3, h, w, generator=g)


def _conditioned_torchvision(variant: str, seed: int = 0) -> nn.Module:
    """torchvision mobilenet_v3_<variant> (random weights, eval) with seeded BN affine parameters,
    damped residual branches and running statistics calibrated on image-like inputs: O(1)
    activations, and every block changes its input (so a wrong layer cannot pass for the right one)."""
    tu = _testutils()
    torch.manual_seed(seed)
    tv = getattr(torchvision.models, f"mobilenet_v3_{variant}")(weights=None).eval()
    residual_ends = [m.block[-1][1] for m in tv.features.modules() if getattr(m, "use_res_connect", False)]
    norms = [m for m in tv.modules() if isinstance(m, nn.BatchNorm2d)]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tu.randomize_norm_affine_(norms, g, damped=residual_ends, damping=0.5)
        for m in tv.modules():  # SE biases: gates spread around 0.5 instead of all ~0.5
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    tu.calibrate_norms_(tv, lambda: tv.features(_images(4, seed=seed + 1)))
    return tv


def _tv_features(tv: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    for layer in tv.features:
        x = layer(x)
        outs.append(x)
    return outs


def _cfg(*opts: object):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", "build_mobilenet_v3_backbone", "MODEL.DEVICE", "cpu", *opts])
    return cfg


@pytest.fixture(scope="module", params=["large", "small"])
def tv_weights(request, tmp_path_factory):
    """``(variant, torchvision model, path of its saved state dict)``."""
    tv = _conditioned_torchvision(request.param)
    path = tmp_path_factory.mktemp("tv") / f"mobilenet_v3_{request.param}.pth"
    torch.save(tv.state_dict(), path)
    return request.param, tv, str(path)


@torch.no_grad()
def test_torchvision_weights_give_torchvision_features(tv_weights):
    variant, tv, path = tv_weights
    tu = _testutils()
    backbone = build_backbone(_cfg("MODEL.MOBILENETV3.VARIANT", variant, "MODEL.MOBILENETV3.OUT_FEATURES", ALL)).eval()
    backbone.load_torchvision_state_dict(torch.load(path, weights_only=True))
    x = _images(seed=7)
    ours, ref = backbone(x), _tv_features(tv, x)
    for name, idx in TV_LAYER[variant].items():
        expected = ref[idx]
        assert 0.3 < float(expected.std()) < 10, f"{name}: badly conditioned reference (std {float(expected.std()):.3g})"
        tu.assert_close_to_scale(ours[name], expected, rtol=1e-4, name=f"{variant} {name}")
        before = ref[idx - 1]  # the layer before differs clearly: the comparison pins the layer
        if before.shape == expected.shape:
            assert float((before - expected).abs().max()) > 0.05 * float(expected.abs().max())


@torch.no_grad()
def test_model_weights_file_loads_into_retinanet(tv_weights):
    """MODEL.WEIGHTS = torchvision's .pth: converted on the fly (Checkpointer path) into the FPN's bottom-up network."""
    from retinakit.checkpoint import Checkpointer
    from retinakit.modeling import build_model

    variant, tv, path = tv_weights
    tu = _testutils()
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "COCO-Detection", f"retinanet_MNV3_{variant.capitalize()}_FPN_1x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", path, "MODEL.RETINANET.NUM_CLASSES", 3])
    model = build_model(cfg).eval()
    Checkpointer(model).load(path, checkpointables=[])
    x = _images(seed=8)
    ours, ref = model.backbone.bottom_up(x), _tv_features(tv, x)
    for name in ("res3", "res4", "res5"):
        tu.assert_close_to_scale(ours[name], ref[TV_LAYER[variant][name]], rtol=1e-4, name=name)


@torch.no_grad()
def test_last_conv_off_ends_res5_at_the_last_block(tv_weights):
    variant, tv, path = tv_weights
    backbone = MobileNetV3(variant=variant, out_features=["res5"], norm="FrozenBN", last_conv=False).eval()
    sd = {k: v for k, v in torch.load(path, weights_only=True).items() if not k.startswith(f"features.{TV_LAST_BLOCK[variant] + 1}.")}
    backbone.load_torchvision_state_dict(sd)
    assert backbone.output_shape()["res5"].channels == {"large": 160, "small": 96}[variant]
    x = _images(seed=9)
    _testutils().assert_close_to_scale(backbone(x)["res5"], _tv_features(tv, x)[TV_LAST_BLOCK[variant]], rtol=1e-4)


def test_other_architecture_names_missing_and_unexpected_keys(tmp_path):
    from retinakit.checkpoint.model_loading import CheckpointMismatchError, load_model_weights
    from retinakit.modeling import build_model

    resnet = torchvision.models.resnet18(weights=None).state_dict()
    backbone = MobileNetV3(variant="large", out_features=ALL)
    with pytest.raises(ValueError, match=r"not a torchvision mobilenet_v3_large.*missing keys \['blocks\.0\..*unexpected keys \['bn1\."):
        backbone.load_torchvision_state_dict(resnet)
    small = torchvision.models.mobilenet_v3_small(weights=None).state_dict()
    with pytest.raises(ValueError, match=r"[1-9]\d* missing keys .*[1-9]\d* unexpected keys .*shape mismatches"):
        backbone.load_torchvision_state_dict(small)
    # Through MODEL.WEIGHTS (the generic loader): the ResNet keys are named as unknown to the model.
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "COCO-Detection", "retinanet_MNV3_Large_FPN_1x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    with pytest.raises(CheckpointMismatchError) as err:
        load_model_weights(build_model(cfg), resnet, source="resnet18.pth")
    message = str(err.value)
    assert "resnet18.pth" in message
    assert re.search(r"keys the model does not have: .*backbone\.bottom_up\.layer1\.\* \(\d+\)", message), message
    assert re.search(r"the checkpoint lacks .*: backbone\.bottom_up\.blocks\.\* \(\d+\), .*backbone\.bottom_up\.stem", message), message
    assert "backbone.fpn" not in message and "head." not in message.split("lacks")[1], "FPN/head are not in an ImageNet file"


@pytest.mark.parametrize("variant", ["large", "small"])
def test_output_strides_channels_and_shapes(variant):
    backbone = build_backbone(_cfg("MODEL.MOBILENETV3.VARIANT", variant, "MODEL.MOBILENETV3.OUT_FEATURES", ALL,
                                   "MODEL.MOBILENETV3.NORM", "BN")).eval()
    shapes = backbone.output_shape()
    assert list(shapes) == ALL
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    assert tuple(s.channels for s in shapes.values()) == CHANNELS[variant]
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 100, 132))
    for name, s in shapes.items():
        assert tuple(out[name].shape) == (1, s.channels, -(-100 // s.stride), -(-132 // s.stride)), name


def test_fpn_from_cfg_with_p2():
    cfg = get_cfg()
    cfg.merge_from_file(QUICKSTART)
    cfg.merge_from_list(["MODEL.MOBILENETV3.OUT_FEATURES", ALL, "MODEL.FPN.IN_FEATURES", ALL])
    fpn = build_backbone(cfg)
    assert isinstance(fpn, FPN) and isinstance(fpn.bottom_up, MobileNetV3)
    assert {k: s.stride for k, s in fpn.output_shape().items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    assert [c.conv.in_channels for c in fpn.lateral_convs] == [24, 40, 112, 960]
    with torch.no_grad():
        out = fpn.eval()(torch.randn(1, 3, 64, 96))
    assert tuple(out["p2"].shape) == (1, 64, 16, 24) and tuple(out["p7"].shape) == (1, 64, 1, 1)


def _stage_index(name: str, variant: str) -> int:
    """Stage unit of a parameter: 0 stem (stride 2), 1..4 = res2..res5 (per torchvision's strides)."""
    if name.startswith("stem."):
        return 0
    if name.startswith("last."):
        return 4
    block = int(name.split(".")[1])
    ends = [TV_LAYER[variant][n] - 1 for n in ("res2", "res3", "res4")]  # last block index of res2..res4
    first_res2 = {"large": 1, "small": 0}[variant]
    if block < first_res2:
        return 0
    return 1 + sum(block > e for e in ends)


@pytest.mark.parametrize("variant", ["large", "small"])
@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_freeze_at_policy(variant, freeze_at):
    backbone = MobileNetV3(variant=variant, out_features=ALL, norm="BN", freeze_at=freeze_at)
    backbone.train()
    for name, p in backbone.named_parameters():
        frozen = _stage_index(name, variant) < freeze_at
        assert p.requires_grad is not frozen, f"freeze_at={freeze_at}: {name}"
    for name, m in backbone.named_modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            frozen = _stage_index(name + ".weight", variant) < freeze_at
            assert isinstance(m, FrozenBatchNorm2d) is frozen, f"freeze_at={freeze_at}: {name} is {type(m).__name__}"
            assert m.eps == pytest.approx(1e-3)
            if not frozen:
                assert m.training and m.momentum == pytest.approx(0.01)
    if freeze_at >= 1:  # frozen stem: same output in train and eval mode, no running-stat updates
        x = _images(2, 64, 64)
        with torch.no_grad():
            train_out = backbone.stem(x)
            assert torch.equal(train_out, backbone.eval().stem(x))


def test_frozen_bn_default_keeps_every_norm_frozen_but_trains_convs():
    backbone = build_backbone(_cfg("MODEL.BACKBONE.FREEZE_AT", 0))
    assert all(not isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert all(p.requires_grad for p in backbone.parameters())


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.MOBILENETV3.VARIANT", "medium"], r"MODEL\.MOBILENETV3\.VARIANT='medium' is unknown"),
        (["MODEL.MOBILENETV3.OUT_FEATURES", ["res1"]], r"MODEL\.MOBILENETV3\.OUT_FEATURES=\['res1'\]"),
        (["MODEL.MOBILENETV3.NORM", "LN"], r"Unknown norm 'LN'"),
    ],
)
def test_config_errors(opts, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(_cfg(*opts))


def test_real_trainer_on_shapes(tmp_path):
    """A few iterations of DefaultTrainer with the quickstart config: finite losses, weights move."""
    from retinakit.data.datasets import ShapesSpec, generate_shapes
    from retinakit.engine import DefaultTrainer

    root = generate_shapes("tiny_mnv3", ShapesSpec(num_images=4, image_size=96, seed=3), root=str(tmp_path / "shapes"))
    cfg = get_cfg()
    cfg.merge_from_file(QUICKSTART)
    cfg.merge_from_list([
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "DATASETS.TRAIN_JSON", os.path.join(root, "annotations.json"),
        "DATASETS.TRAIN_IMAGES", os.path.join(root, "images"), "MODEL.DEVICE", "cpu", "SEED", "3",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", 96, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 3,
        "SOLVER.WARMUP_ITERS", 1, "SOLVER.CHECKPOINT_PERIOD", 0, "OUTPUT_DIR", str(tmp_path / "out"),
        "MODEL.BACKBONE.FREEZE_AT", 2,
    ])
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    bottom_up = trainer.model.backbone.bottom_up
    before = {k: v.detach().clone() for k, v in bottom_up.state_dict().items()}
    trainer.train()
    after = bottom_up.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith(("stem.", "blocks.0.", "blocks.1.", "blocks.2.")) for k in changed), "frozen stages changed"
    assert any(k.startswith("blocks.14.") for k in changed) and any(k.startswith("last.") for k in changed)
    assert any(k.endswith("running_mean") and k.startswith("blocks.5.") for k in changed), "trainable BN stats not updated"
    losses = {k: h.latest() for k, h in trainer.storage.histories().items() if k.startswith("loss")}
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses


def test_retinanet_with_p2_level_trains_and_infers():
    """P2 from MobileNetV3's stride-4 output through the whole RetinaNet: losses and detections."""
    from retinakit.modeling import build_model
    from retinakit.structures import Boxes, Instances

    cfg = get_cfg()
    cfg.merge_from_file(QUICKSTART)
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.MOBILENETV3.OUT_FEATURES", ALL, "MODEL.FPN.IN_FEATURES", ALL,
        "MODEL.RETINANET.IN_FEATURES", ["p2", "p3", "p4", "p5", "p6", "p7"],
        "MODEL.ANCHOR_GENERATOR.SIZES", [[7], [14], [29], [58], [115], [230]],
    ])
    torch.manual_seed(0)
    model = build_model(cfg)
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    inst = Instances((96, 128))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 18.0, 19.0], [40.0, 30.0, 90.0, 80.0]]))
    inst.gt_classes = torch.tensor([0, 2])
    losses = model.train()([{"image": image, "instances": inst, "height": 96, "width": 128}])
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.bottom_up.blocks[1].depthwise.conv.weight.grad is not None  # res2 block gets gradients
    with torch.no_grad():
        out = model.eval()([{"image": image, "height": 96, "width": 128}])
    assert out[0]["instances"].image_size == (96, 128)
