"""DefaultTrainer passes its cfg to the Checkpointer: MODEL.WEIGHTS converted from another project
are checked against the training config (models carry no config of their own)."""
from __future__ import annotations

import pytest
import torch
from _engine_dummy import DummyDetector
from _engine_trainer import DummyTrainer, tiny_cfg

from retinakit.checkpoint import CheckpointMismatchError


def _converted_file(tmp_path) -> tuple[str, dict[str, torch.Tensor]]:
    torch.manual_seed(5)
    state = DummyDetector().state_dict()
    path = str(tmp_path / "converted.pth")
    info = {"source": "detectron2", "config": "OUT.yaml", "requires": {"INPUT.FORMAT": "BGR"}}
    torch.save({"model": state, "__retinakit__": info}, path)
    return path, state


def test_converted_weights_are_checked_against_the_training_config(tmp_path):
    path, state = _converted_file(tmp_path)
    cfg = tiny_cfg(str(tmp_path / "rgb"), MODEL__WEIGHTS=path, INPUT__FORMAT="RGB")
    with pytest.raises(CheckpointMismatchError, match=r"(?s)INPUT\.FORMAT: config has 'RGB'.*OUT\.yaml"):
        DummyTrainer(cfg).resume_or_load(resume=False)
    trainer = DummyTrainer(tiny_cfg(str(tmp_path / "bgr"), MODEL__WEIGHTS=path, INPUT__FORMAT="BGR"))
    trainer.resume_or_load(resume=False)
    assert trainer.start_iter == 0
    for k, v in state.items():
        assert torch.equal(trainer.model.state_dict()[k], v), k
