"""Trainer, hooks, AMP, gradient accumulation, non-finite loss guard."""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from _engine_dummy import DummyDetector, SyntheticLoader
from _engine_trainer import DummyTrainer, expected_hook_events, tiny_cfg

from retinakit.checkpoint import Checkpointer
from retinakit.engine import (
    HOOK_REGISTRY,
    AMPTrainer,
    HookBase,
    NonFiniteLossError,
    SimpleTrainer,
)
from retinakit.engine.hooks import BestCheckpointer, CallbackHook, EMAHook


class Recorder(HookBase):
    def __init__(self, name, log):
        self.name, self.log = name, log
        self.count = 0

    def before_train(self):
        self.log.append((self.name, "before_train", self.trainer.iter))

    def after_train(self):
        self.log.append((self.name, "after_train", self.trainer.iter))

    def before_step(self):
        self.log.append((self.name, "before_step", self.trainer.iter))

    def after_backward(self):
        self.log.append((self.name, "after_backward", self.trainer.iter))

    def after_step(self):
        self.count += 1
        self.log.append((self.name, "after_step", self.trainer.iter))

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def _simple(model=None, bs=4, **kw):
    model = model or DummyDetector(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return SimpleTrainer(model, SyntheticLoader(bs), opt, **kw)


def test_hook_order_and_calls():
    log = []
    t = _simple()
    t.register_hooks([Recorder("a", log), None, Recorder("b", log)])
    t.train(0, 2)
    assert log == expected_hook_events(["a", "b"], 2)
    assert t.completed


def test_hook_state_round_trip_through_checkpoint(tmp_path):
    log = []
    t = _simple()
    t.register_hooks([Recorder("a", log), Recorder("b", log)])
    t.train(0, 3)
    ckpt = Checkpointer(t.model, str(tmp_path), trainer=t)
    ckpt.save("model_0000002", iteration=2)

    t2 = _simple()
    r1, r2 = Recorder("a", []), Recorder("b", [])
    t2.register_hooks([r1, r2])
    Checkpointer(t2.model, str(tmp_path), trainer=t2).resume_or_load("", resume=True)
    assert (r1.count, r2.count) == (3, 3)
    assert t2.iter == 3
    assert t.state_dict()["hooks"] == {"Recorder": {"count": 3}, "Recorder.1": {"count": 3}}


def test_after_train_runs_when_a_step_fails():
    log = []
    t = _simple(model=DummyDetector(nan_at_call=1))
    t.register_hooks([Recorder("a", log)])
    with pytest.raises(NonFiniteLossError):
        t.train(0, 5)
    assert log[-1] == ("a", "after_train", 1)
    assert not t.completed


def test_callback_hook_and_registry(tmp_path):
    seen = []

    @HOOK_REGISTRY.register(name="_TestCountingHook", override=True)
    def build(cfg, trainer):
        return CallbackHook(after_step=lambda tr: seen.append(tr.iter))

    cfg = tiny_cfg(str(tmp_path), SOLVER__MAX_ITER=3)
    cfg.HOOKS = ["_TestCountingHook"]
    trainer = DummyTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert seen == [0, 1, 2]
    with pytest.raises(KeyError, match="_TestCountingHook"):
        HOOK_REGISTRY.get("_TestCountingHoook")
    with pytest.raises(TypeError):
        CallbackHook(after_stpe=print)


def test_default_hook_order_is_documented(tmp_path):
    cfg = tiny_cfg(str(tmp_path), SOLVER__EMA__ENABLED=True, TEST__BEST_METRIC="bbox/AP")
    names = [type(h).__name__ for h in DummyTrainer(cfg).hooks]
    assert names == [
        "IterationTimer", "LRScheduler", "EMAHook", "EvalHook", "BestCheckpointer",
        "PeriodicWriter", "PeriodicCheckpointer", "StopOnSignal",
    ]


def test_bf16_amp_step_on_cpu():
    torch.manual_seed(0)
    model = DummyDetector(dropout=0.0)
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    t = AMPTrainer(model, SyntheticLoader(4), opt, dtype=torch.bfloat16)
    assert t.grad_scaler is None
    t.train(0, 2)
    assert torch.bfloat16 in model.seen_dtypes
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not torch.equal(before["conv.weight"], model.conv.weight)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert t.storage.history("total_loss").latest() == pytest.approx(t.storage.history("total_loss").latest())


def test_fp16_amp_uses_grad_scaler_and_clipping():
    model = DummyDetector(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        t = AMPTrainer(model, SyntheticLoader(4), opt, dtype=torch.float16, clip_grad=("norm", 1.0, 2.0))
        t.train(0, 2)
    except RuntimeError as e:  # fp16 autocast/scaler not supported on this CPU build
        pytest.skip(f"fp16 AMP unavailable on CPU: {e}")
    assert t.grad_scaler is not None
    state = t.grad_scaler.state_dict()
    assert state["scale"] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_gradient_accumulation_equals_larger_batch():
    torch.manual_seed(0)
    base = DummyDetector(dropout=0.0)
    big, acc = copy.deepcopy(base), copy.deepcopy(base)
    t_big = SimpleTrainer(big, SyntheticLoader(8, augment=False), torch.optim.SGD(big.parameters(), lr=0.2, momentum=0.9))
    t_acc = SimpleTrainer(
        acc, SyntheticLoader(4, augment=False), torch.optim.SGD(acc.parameters(), lr=0.2, momentum=0.9), accumulate_steps=2
    )
    t_big.train(0, 5)
    t_acc.train(0, 5)
    for (k, a), b in zip(big.state_dict().items(), acc.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    assert t_big.storage.history("total_loss").latest() == pytest.approx(
        t_acc.storage.history("total_loss").latest(), rel=1e-5
    )


def test_gradient_clipping_by_norm():
    model = DummyDetector(dropout=0.0)
    norms = []
    t = SimpleTrainer(model, SyntheticLoader(4), torch.optim.SGD(model.parameters(), lr=0.0), clip_grad=("norm", 1e-3, 2.0))

    class After(HookBase):
        pass

    orig = t._optimizer_step

    def spy():
        g = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        norms.append(float(g.norm()))
        orig()

    t._optimizer_step = spy
    t.train(0, 2)
    assert max(norms) <= 1e-3 * 1.0001


def test_non_finite_loss_guard_keeps_last_checkpoint(tmp_path):
    DummyTrainer.nan_at_call = 5  # call 5 = iteration 5 (no accumulation)
    try:
        cfg = tiny_cfg(str(tmp_path), SOLVER__CHECKPOINT_PERIOD=2)
        trainer = DummyTrainer(cfg)
        trainer.resume_or_load(resume=False)
        with pytest.raises(NonFiniteLossError) as info:
            trainer.train()
    finally:
        DummyTrainer.nan_at_call = -1
    msg = str(info.value)
    assert "iteration 5" in msg and "loss_cls" in msg and "nan" in msg
    assert "[20, 21, 22, 23]" in msg  # image ids of the batch of iteration 5 (4 images/batch)
    files = sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth"))
    assert files == ["model_0000001.pth", "model_0000003.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    ckpt = torch.load(tmp_path / "model_0000003.pth", weights_only=True)
    assert ckpt["iteration"] == 3 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_writers_console_metrics_json_tensorboard(tmp_path, caplog):
    import logging

    from retinakit.utils.logger import setup_logger

    setup_logger(str(tmp_path), name="retinakit")
    cfg = tiny_cfg(str(tmp_path), SOLVER__MAX_ITER=6, SOLVER__LOG_PERIOD=3)
    trainer = DummyTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [2, 5]
    assert {"total_loss", "loss_cls", "loss_box_reg", "lr", "time", "data_time"} <= set(rows[-1])
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
    log = (tmp_path / "log.txt").read_text()
    for field in ("eta:", "iter: 6/6", "loss_cls:", "lr:", "images/s:", "max_mem:"):
        assert field in log, field
    logging.getLogger("retinakit").handlers.clear()


def test_ema_hook_tracks_average_and_round_trips():
    model = DummyDetector(dropout=0.0)
    ema = EMAHook(model, decay=0.5)
    t = SimpleTrainer(model, SyntheticLoader(4), torch.optim.SGD(model.parameters(), lr=0.5))
    t.register_hooks([ema])
    ref = {k: v.clone() for k, v in ema.ema.items()}
    w = model.conv.weight

    orig_after = ema.after_step

    def checked():
        d = min(0.5, (2 + ema.updates) / (11 + ema.updates))
        ref["conv.weight"].mul_(d).add_(w.detach(), alpha=1 - d)
        orig_after()

    ema.after_step = checked
    t.train(0, 3)
    torch.testing.assert_close(ema.ema["conv.weight"], ref["conv.weight"])
    with ema.apply():
        assert torch.equal(model.conv.weight, ema.ema["conv.weight"])
    assert not torch.equal(model.conv.weight, ema.ema["conv.weight"])
    ema2 = EMAHook(DummyDetector(), decay=0.5)
    ema2.load_state_dict(ema.state_dict())
    assert torch.equal(ema2.ema["conv.weight"], ema.ema["conv.weight"]) and ema2.updates == 3


def test_best_checkpointer(tmp_path):
    model = DummyDetector(dropout=0.0)
    t = _simple(model=model)
    ck = Checkpointer(model, str(tmp_path))
    values = iter([0.1, 0.3, 0.2])

    class FakeEval(HookBase):
        def after_step(self):
            self.trainer.storage.put_scalar("bbox/AP", next(values), smoothing_hint=False)

    best = BestCheckpointer(ck, "bbox/AP", "max")
    t.register_hooks([FakeEval(), best])
    t.train(0, 3)
    assert best.best == 0.3 and best.best_iter == 1
    assert torch.load(tmp_path / "model_best.pth", weights_only=True)["iteration"] == 1
