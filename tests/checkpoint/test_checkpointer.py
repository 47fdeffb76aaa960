"""Checkpointer: atomic save, weights_only load, RNG states, corrupt-checkpoint fallback, keep-last-N."""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from retinakit.checkpoint import Checkpointer, get_rng_state, set_rng_state
from retinakit.engine.hooks import PeriodicCheckpointer
from retinakit.engine.solver import WarmupLRScheduler


def _setup(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    sched = WarmupLRScheduler(opt, "WarmupMultiStepLR", 100, steps=[10], warmup_iters=5)
    for _ in range(7):
        sched.step()
    return model, opt, sched, Checkpointer(model, str(tmp_path), optimizer=opt, scheduler=sched)


def test_save_contents_load_weights_only(tmp_path):
    model, opt, _sched, ck = _setup(tmp_path)
    path = ck.save("model_0000006", iteration=6)
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert set(data) == {"model", "optimizer", "scheduler", "rng", "iteration"}
    assert data["iteration"] == 6 and data["scheduler"]["last_iter"] == 7
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000006.pth"
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]

    model2, opt2, sched2, ck2 = _setup(tmp_path / "other")
    with torch.no_grad():
        for p in model2.parameters():
            p.zero_()
    ck2.checkpointables = {"optimizer": opt2, "scheduler": sched2}
    ck2.model = model2
    extra = ck2.load(path)
    assert extra["iteration"] == 6
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert opt2.state_dict()["state"][0]["momentum_buffer"].equal(opt.state_dict()["state"][0]["momentum_buffer"])
    assert sched2.last_iter == 7 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_rng_state_round_trip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    state = get_rng_state()
    a = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(3))
    assert a[:4] == b[:4] and torch.equal(a[4], b[4])


def test_failed_save_leaves_previous_checkpoint_and_pointer(tmp_path, monkeypatch):
    _model, _opt, _sched, ck = _setup(tmp_path)
    ck.save("model_0000001", iteration=1)

    def exploding_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError):
        ck.save("model_0000003", iteration=3)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_newest_checkpoint_falls_back_with_warning(tmp_path, caplog, damage):
    model, _opt, _sched, ck = _setup(tmp_path)
    ck.save("model_0000001", iteration=1)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    newest = ck.save("model_0000003", iteration=3)
    size = os.path.getsize(newest)
    with open(newest, "r+b") as f:
        if damage == "truncate":
            f.truncate(size // 2)
        elif damage == "garbage":
            f.seek(size // 3)
            f.write(os.urandom(size // 3))
        else:
            f.truncate(0)
    with caplog.at_level(logging.WARNING):
        extra = ck.resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    assert all(torch.equal(v, good[k]) for k, v in model.state_dict().items())
    assert "model_0000003.pth" in caplog.text and "older" in caplog.text


def test_model_mismatch_is_named(tmp_path):
    _model, _opt, _sched, ck = _setup(tmp_path)
    path = ck.save("model_final", iteration=9)
    other = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    with pytest.raises(Exception, match=r"0\.weight|shape"):
        Checkpointer(other, save_to_disk=False).load(path, checkpointables=[])


def test_keep_last_n(tmp_path):
    _model, _opt, _sched, ck = _setup(tmp_path)

    class FakeTrainer:
        iter = 0

    hook = PeriodicCheckpointer(ck, period=1, max_iter=10, max_to_keep=2)
    hook.trainer = FakeTrainer()
    for it in range(10):
        hook.trainer.iter = it
        hook.after_step()
    files = sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth"))
    assert files == ["model_0000007.pth", "model_0000008.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
