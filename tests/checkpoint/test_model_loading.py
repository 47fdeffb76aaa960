"""Converted weights are refused with a config that contradicts what they need."""
import pickle

import numpy as np
import pytest

from retinakit.checkpoint.checkpointer import load_checkpoint_file
from retinakit.checkpoint.model_loading import CheckpointMismatchError, load_model_weights
from retinakit.config import get_cfg
from retinakit.modeling import build_model


def _cfg(fmt):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.FPN.OUT_CHANNELS", 32,
                         "MODEL.RETINANET.NUM_CLASSES", 2, "INPUT.FORMAT", fmt])
    return cfg


def test_requirements_of_converted_weights_are_checked():
    source = build_model(_cfg("BGR"))
    ckpt = {"model": source.state_dict(),
            "__retinakit__": {"source": "detectron2", "config": "OUT.yaml", "requires": {"INPUT.FORMAT": "BGR"}}}
    with pytest.raises(CheckpointMismatchError, match=r"(?s)INPUT\.FORMAT: config has 'RGB'.*detectron2.*OUT\.yaml"):
        load_model_weights(build_model(_cfg("RGB")), ckpt, source="d2.pth")
    report = load_model_weights(build_model(_cfg("BGR")), ckpt, source="d2.pth")
    assert report.missing == []


def test_pkl_weights_load_without_running_code(tmp_path):
    model = build_model(_cfg("RGB"))
    arrays = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    path = tmp_path / "w.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": arrays}, f)
    ckpt = load_checkpoint_file(str(path))
    load_model_weights(build_model(_cfg("RGB")), ckpt, source=str(path))
    assert isinstance(np.asarray(arrays["head.cls_score.bias"]), np.ndarray)
