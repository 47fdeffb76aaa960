"""Weight converters (detectron2, ODTK): key mapping, anchor order, configs, CLI, safety.

Numerical equivalence with the source models is in test_converters_equivalence.py; these
tests check the pieces: every ResNet depth's keys load with nothing missing, the anchor
permutation matches the two projects' anchor definitions, the written configs build, the
restricted unpickler refuses code, and unsupported checkpoints fail with a clear message.
"""
import glob
import math
import os
import pickle

import pytest
import torch
from test_converters_equivalence import (
    REPO,
    OdtkRetinaNet,
    detectron2_cell_anchors,
    detectron2_state_dict,
    load_tool,
    model_from_info,
    odtk_anchors,
)

from retinakit.checkpoint.converters import CONVERTERS, convert, detect_source
from retinakit.checkpoint.converters.detectron2 import (
    anchor_permutation,
    permute_anchor_outputs,
)
from retinakit.checkpoint.converters.odtk import DEFAULT_RATIOS, DEFAULT_SCALES
from retinakit.checkpoint.model_loading import load_model_weights
from retinakit.config import get_cfg
from retinakit.modeling import (
    BOX_CODER_REGISTRY,
    ShapeSpec,
    build_anchor_generator,
    build_box_coder,
)


def _cfg(path, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, path))
    cfg.merge_from_list(list(opts))
    return cfg


def _cell_anchors(cfg):
    gen = build_anchor_generator(cfg, [ShapeSpec(channels=256, stride=8 * 2**i) for i in range(5)])
    return [gen.cell_anchors(i) for i in range(5)]


# --------------------------------------------------------------------------- anchor order
def test_permutation_maps_detectron2_anchors_onto_retinakit_anchors():
    cells = _cell_anchors(_cfg("configs/converted/detectron2_retinanet_R_50_FPN.yaml"))
    perm = anchor_permutation(3, 3)
    for lvl, ours in enumerate(cells):
        base = 32 * 2**lvl
        d2 = detectron2_cell_anchors([base, base * 2 ** (1 / 3), base * 2 ** (2 / 3)], [0.5, 1.0, 2.0])
        torch.testing.assert_close(ours, d2[perm], rtol=1e-6, atol=1e-4)
        assert not torch.allclose(ours, d2, atol=1e-2)  # the orders really differ


@pytest.mark.parametrize("ratios, scales", [(DEFAULT_RATIOS, DEFAULT_SCALES), ([0.25, 1.0, 3.0, 0.5], [2.0, 3.0])])
def test_permutation_and_config_reproduce_odtk_anchors(ratios, scales):
    """ODTK's anchors (cell at stride/2, scale-major) == retinakit's with the converted config."""
    sd = OdtkRetinaNet("ResNet18FPN", 3, ratios, scales).state_dict()
    _, info = convert("odtk", sd, checkpoint={"ratios": ratios, "scales": scales})
    cfg = _cfg(info["config"], *info["config_overrides"])
    perm = anchor_permutation(len(scales), len(ratios))
    for lvl, ours in enumerate(_cell_anchors(cfg)):
        stride = 8 * 2**lvl
        theirs = odtk_anchors(stride, ratios, scales)[perm]
        offset = cfg.MODEL.ANCHOR_GENERATOR.OFFSET * stride
        torch.testing.assert_close(ours + offset, theirs, rtol=1e-5, atol=1e-3)


def test_permute_anchor_outputs_moves_whole_blocks():
    # 2 sizes x 3 ratios, 2 channels per anchor; channel value = 10 * anchor + channel
    w = torch.tensor([10.0 * a + c for a in range(6) for c in range(2)])
    out = permute_anchor_outputs(w, anchor_permutation(2, 3))
    # retinakit anchor k = r * 2 + s takes size-major anchor s * 3 + r
    expected = [10.0 * (s * 3 + r) + c for r in range(3) for s in range(2) for c in range(2)]
    assert out.tolist() == expected
    w4 = torch.arange(12 * 5 * 3 * 3, dtype=torch.float32).view(12, 5, 3, 3)
    torch.testing.assert_close(permute_anchor_outputs(w4, anchor_permutation(2, 3))[2:4], w4[6:8])


# --------------------------------------------------------------------------- key mapping
def test_detect_source():
    assert detect_source(detectron2_state_dict(18, 2)) == "detectron2"
    assert detect_source(OdtkRetinaNet("ResNet18FPN", 2).state_dict()) == "odtk"
    assert detect_source({"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1)}) == "torchvision"
    assert detect_source({"foo.weight": torch.zeros(1)}) is None
    assert {"torchvision", "detectron2", "odtk"} <= set(CONVERTERS)


@pytest.mark.parametrize("depth", [18, 50, 101])
def test_detectron2_every_depth_loads_completely(depth):
    sd = detectron2_state_dict(depth, num_classes=3)
    out, info = convert("detectron2", sd)
    assert info["depth"] == depth and info["num_classes"] == 3
    model = model_from_info(info)
    report = load_model_weights(model, {"model": out}, source=f"detectron2 R{depth}")
    assert report.missing == [] and report.skipped_class_specific == []
    assert model.backbone.bottom_up.layer1[0].conv1.stride == (1, 1)
    if depth >= 50:  # MSRA weights: the stride sits on the first 1x1 conv
        assert model.backbone.bottom_up.layer2[0].conv1.stride == (2, 2)
    torch.testing.assert_close(model.backbone.bottom_up.conv1.weight, sd["backbone.bottom_up.stem.conv1.weight"])
    torch.testing.assert_close(model.head.cls_subnet[3].conv.bias, sd["head.cls_subnet.6.bias"])
    torch.testing.assert_close(model.backbone.lateral_convs[2].conv.weight, sd["backbone.fpn_lateral5.weight"])


@pytest.mark.parametrize("name", ["ResNet18FPN", "ResNet34FPN", "ResNet50FPN", "ResNet101FPN", "ResNet152FPN", "ResNeXt50_32x4dFPN"])
def test_odtk_every_backbone_loads_completely(name):
    odtk = OdtkRetinaNet(name, classes=2)
    ckpt = odtk.checkpoint()
    out, info = convert("odtk", ckpt["state_dict"], checkpoint=ckpt)
    assert info["backbone"] == name and info["num_classes"] == 2
    assert info["config"].endswith(f"R_{info['depth']}_FPN.yaml")
    assert not any(".fc." in k for k in out)
    model = model_from_info(info)
    report = load_model_weights(model, {"model": out}, source=name)
    assert report.missing == []
    torch.testing.assert_close(model.backbone.top_block.p6.weight, ckpt["state_dict"][f"backbones.{name}.pyramid6.weight"])


# --------------------------------------------------------------------------- errors
def test_detectron2_head_with_norm_is_refused():
    sd = detectron2_state_dict(18, 2)
    sd["head.cls_subnet.1.weight"] = torch.ones(256)
    with pytest.raises(ValueError, match="norm"):
        convert("detectron2", sd)


def test_odtk_unsupported_models_are_refused():
    sd = OdtkRetinaNet("ResNet18FPN", 2).state_dict()
    with pytest.raises(ValueError, match="rotated"):
        convert("odtk", sd, checkpoint={"angles": [0.0, 1.0]})
    renamed = {k.replace("ResNet18FPN", "MobileNetV2FPN"): v for k, v in sd.items()}
    with pytest.raises(ValueError, match="MobileNetV2FPN is not supported"):
        convert("odtk", renamed)
    with pytest.raises(ValueError, match="anchors"):
        convert("odtk", sd, checkpoint={"ratios": [1.0], "scales": [4.0]})
    with pytest.raises(ValueError, match="classes"):
        convert("odtk", sd, checkpoint={"classes": 5})


# --------------------------------------------------------------------------- CLI and files
def test_cli_converts_detectron2_model_zoo_pickle(tmp_path, capsys):
    """A model-zoo style .pkl (numpy arrays) -> OUT.pth (weights_only) + OUT.yaml that builds."""
    np = pytest.importorskip("numpy")
    sd = detectron2_state_dict(18, num_classes=4)
    src = tmp_path / "model_final.pkl"
    with open(src, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "Detectron2 Model Zoo"}, f, protocol=2)
    dst = tmp_path / "out" / "r18.pth"
    assert load_tool().main(["--source", "detectron2", str(src), str(dst)]) == 0
    assert "use it with: --config-file" in capsys.readouterr().out
    ckpt = torch.load(dst, weights_only=True)
    meta = ckpt["__retinakit__"]
    assert meta["source"] == "detectron2" and meta["depth"] == 18
    assert os.path.isfile(meta["config_file"])
    cfg = get_cfg()
    cfg.merge_from_file(meta["config_file"])
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.RETINANET.NUM_CLASSES == 4
    assert cfg.INPUT.FORMAT == "BGR" and cfg.MODEL.RESNETS.STRIDE_IN_1X1
    from retinakit.modeling import build_model

    cfg.merge_from_list(["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    assert load_model_weights(model, ckpt, cfg=cfg).missing == []
    torch.testing.assert_close(model.head.bbox_subnet[0].conv.weight, torch.as_tensor(np.asarray(sd["head.bbox_subnet.0.weight"])))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cli_refuses_pickles_with_code(tmp_path):
    src = tmp_path / "evil.pkl"
    with open(src, "wb") as f:
        pickle.dump({"model": {"x": _Exploit()}}, f)
    with pytest.raises(SystemExit, match="refusing to load"):
        load_tool().main(["--source", "detectron2", str(src), str(tmp_path / "out.pth")])
    assert not (tmp_path / "out.pth").exists()


def test_cli_error_for_wrong_source(tmp_path):
    src = tmp_path / "odtk.pth"
    torch.save(OdtkRetinaNet("ResNet18FPN", 2).checkpoint(), src)
    with pytest.raises(SystemExit, match=r"cannot convert .* as a detectron2 checkpoint"):
        load_tool().main(["--source", "detectron2", str(src), str(tmp_path / "out.pth")])


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "converted", "*.yaml"))), ids=os.path.basename)
def test_converted_configs_merge(path):
    cfg = _cfg(path)
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 80
    assert cfg.MODEL.ANCHOR_GENERATOR.OFFSET == (0.5 if "odtk" in path else 0.0)


# --------------------------------------------------------------------------- box coder
def test_legacy_box_coder_matches_plus_one_convention():
    cfg = _cfg("configs/converted/odtk_retinanet_R_50_FPN.yaml")
    coder = build_box_coder(cfg)
    assert type(coder) is BOX_CODER_REGISTRY.get("LegacyDeltaXYWHBoxCoder")
    assert not hasattr(coder, "fused_decode_params")  # the fused kernel uses continuous anchors
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    anchors = torch.cat([xy, xy + 5 + torch.rand(50, 2, generator=g) * 60], 1)
    deltas = torch.randn(50, 4, generator=g) * 0.5
    # inclusive-pixel decoding written out: width = x2 - x1 + 1, box x2 = ctr + w/2 - 1
    aw = anchors[:, 2:] - anchors[:, :2] + 1
    ctr = anchors[:, :2] + 0.5 * aw
    pctr = deltas[:, :2] * aw + ctr
    pwh = torch.exp(deltas[:, 2:]) * aw
    inclusive = torch.cat([pctr - 0.5 * pwh, pctr + 0.5 * pwh - 1], 1)
    continuous = inclusive + torch.tensor([0.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(coder.decode(deltas, anchors), continuous)
    boxes = coder.decode(deltas, anchors)
    torch.testing.assert_close(coder.encode(anchors, boxes), deltas, rtol=1e-4, atol=1e-4)
    assert coder.scale_clamp == 10.0
    huge = coder.decode(torch.tensor([[0.0, 0.0, 50.0, 50.0]]), anchors[:1])
    assert torch.isfinite(huge).all() and math.isclose(float(huge[0, 2] - huge[0, 0]), math.exp(10) * float(aw[0, 0]), rel_tol=1e-4)


# --------------------------------------------------------------------------- config checks
def test_check_config_flags_configs_the_weights_cannot_work_with():
    from retinakit.checkpoint.converters import check_config

    _, d2 = convert("detectron2", detectron2_state_dict(18, 2))
    assert check_config(d2, _cfg(d2["config"], *d2["config_overrides"])) == []
    problems = check_config(d2, _cfg("configs/COCO-Detection/retinanet_R_18_FPN_1x.yaml"))
    assert any(p.startswith("MODEL.RESNETS.STRIDE_IN_1X1") for p in problems)
    assert any(p.startswith("INPUT.FORMAT") for p in problems)
    sd = OdtkRetinaNet("ResNet18FPN", 2).state_dict()
    _, od = convert("odtk", sd)
    assert check_config(od, _cfg(od["config"], *od["config_overrides"])) == []
    problems = check_config(od, _cfg(d2["config"]))
    assert {p.split(":")[0] for p in problems} >= {"MODEL.ANCHOR_GENERATOR.OFFSET", "MODEL.RETINANET.BOX_CODER_NAME",
                                                   "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "INPUT.FORMAT"}


def test_converted_odtk_model_fine_tunes():
    """A train step with the converted ODTK config (legacy box coder in the loss) gives finite losses."""
    from retinakit.structures import Boxes, Instances

    odtk = OdtkRetinaNet("ResNet18FPN", classes=3)
    ckpt = odtk.checkpoint()
    out, info = convert("odtk", ckpt["state_dict"], checkpoint=ckpt)
    model = model_from_info(info, extra=["MODEL.RETINANET.NUM_CLASSES", 2])  # fine-tune to 2 classes
    report = load_model_weights(model, {"model": out})
    assert [k for k, _, _ in report.skipped_class_specific] == ["head.cls_score.weight", "head.cls_score.bias"]
    model.train()
    gt = Instances((128, 128), gt_boxes=Boxes(torch.tensor([[10.0, 20.0, 70.0, 90.0]])), gt_classes=torch.tensor([1]))
    losses = model([{"image": torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8), "instances": gt}])
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    sum(losses.values()).backward()
    assert all(math.isfinite(float(v.detach())) for v in losses.values()) and float(losses["loss_box_reg"].detach()) > 0
