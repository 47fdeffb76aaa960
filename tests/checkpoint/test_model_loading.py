"""Converted weights are refused with a config that contradicts what they need, and without a
config to check them against (the config is passed explicitly; models carry none)."""
import os
import pickle

import numpy as np
import pytest
import torch
from test_converters_equivalence import REPO, detectron2_state_dict

from retinakit.checkpoint import Checkpointer
from retinakit.checkpoint.checkpointer import load_checkpoint_file
from retinakit.checkpoint.converters import convert
from retinakit.checkpoint.model_loading import CheckpointMismatchError, load_model_weights
from retinakit.config import get_cfg
from retinakit.modeling import build_model

D2_INFO = {"source": "detectron2", "config": "OUT.yaml", "requires": {"INPUT.FORMAT": "BGR"}}


def _cfg(fmt, depth=18, classes=2):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", depth, "MODEL.FPN.OUT_CHANNELS", 32,
                         "MODEL.RETINANET.NUM_CLASSES", classes, "INPUT.FORMAT", fmt])
    return cfg


def _converted_checkpoint(seed=0):
    torch.manual_seed(seed)
    return {"model": build_model(_cfg("BGR")).state_dict(), "__retinakit__": dict(D2_INFO)}


def test_requirements_of_converted_weights_are_checked():
    ckpt = _converted_checkpoint()
    with pytest.raises(CheckpointMismatchError, match=r"(?s)INPUT\.FORMAT: config has 'RGB'.*detectron2.*OUT\.yaml"):
        load_model_weights(build_model(_cfg("RGB")), ckpt, source="d2.pth", cfg=_cfg("RGB"))
    report = load_model_weights(build_model(_cfg("BGR")), ckpt, source="d2.pth", cfg=_cfg("BGR"))
    assert report.missing == []


def test_converted_weights_without_a_config_are_refused():
    """Without a cfg the requirements cannot be checked: a clear error, never a silent skip,
    whether the model was built from a matching config or not."""
    for fmt in ("RGB", "BGR"):
        with pytest.raises(CheckpointMismatchError, match=r"d2\.pth.*detectron2.*INPUT\.FORMAT.*no config was given.*cfg=cfg"):
            load_model_weights(build_model(_cfg(fmt)), _converted_checkpoint(), source="d2.pth")


def test_on_the_fly_detectron2_conversion_without_a_config_is_refused():
    """A detectron2 state dict given as is (some of its keys, head.cls_score.*, coincide with
    retinakit's) is converted while loading, and its requirements need a config."""
    sd = detectron2_state_dict(18, num_classes=3, num_anchors=9)
    _, info = convert("detectron2", sd)
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, info["config"]))
    cfg.merge_from_list([*info.get("config_overrides", []), "MODEL.DEVICE", "cpu"])
    with pytest.raises(CheckpointMismatchError, match=r"detectron2.*STRIDE_IN_1X1.*no config was given"):
        load_model_weights(build_model(cfg), {"model": sd}, source="d2.pkl")
    report = load_model_weights(build_model(cfg), {"model": sd}, source="d2.pkl", cfg=cfg)
    assert report.converted_from == "detectron2" and report.missing == []


def test_weights_without_requirements_need_no_config():
    """retinakit checkpoints and torchvision ImageNet weights carry no config requirements."""
    torchvision = pytest.importorskip("torchvision")
    model = build_model(_cfg("RGB"))
    report = load_model_weights(model, {"model": build_model(_cfg("RGB")).state_dict()})
    assert report.missing == [] and report.converted_from == ""
    tv = torchvision.models.resnet18(weights=None).state_dict()
    report = load_model_weights(model, tv, source="resnet18.pth")
    assert report.converted_from == "torchvision"
    torch.testing.assert_close(model.backbone.bottom_up.conv1.weight, tv["conv1.weight"])


def test_models_carry_no_build_config():
    assert not hasattr(build_model(_cfg("RGB")), "_build_cfg")


def test_checkpointer_checks_a_converted_file_against_its_cfg(tmp_path):
    """MODEL.WEIGHTS through the Checkpointer (train_net, DefaultTrainer): the file's recorded
    requirements reach the check, against the cfg given to the Checkpointer."""
    ckpt = _converted_checkpoint(seed=1)
    path = str(tmp_path / "d2.pth")
    torch.save(ckpt, path)
    with pytest.raises(CheckpointMismatchError, match=r"INPUT\.FORMAT: config has 'RGB'"):
        Checkpointer(build_model(_cfg("RGB")), save_to_disk=False, cfg=_cfg("RGB")).load(path, checkpointables=[])
    with pytest.raises(CheckpointMismatchError, match="no config was given"):
        Checkpointer(build_model(_cfg("BGR")), save_to_disk=False).load(path, checkpointables=[])
    model = build_model(_cfg("BGR"))
    extra = Checkpointer(model, save_to_disk=False, cfg=_cfg("BGR")).resume_or_load(path, resume=False)
    assert "__retinakit__" not in extra
    for k, v in ckpt["model"].items():
        assert torch.equal(model.state_dict()[k], v), k


def test_pkl_weights_load_without_running_code(tmp_path):
    model = build_model(_cfg("RGB"))
    arrays = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    path = tmp_path / "w.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": arrays}, f)
    ckpt = load_checkpoint_file(str(path))
    load_model_weights(build_model(_cfg("RGB")), ckpt, source=str(path))
    assert isinstance(np.asarray(arrays["head.cls_score.bias"]), np.ndarray)
