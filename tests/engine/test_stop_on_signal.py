"""``StopOnSignal`` in-process (issue 20): the signal's iteration is finished and saved, the
previous handlers come back, and training outside the main thread leaves signals alone.
The end-to-end behaviour (exit codes, bitwise resume, DDP agreement) is in test_fault_tolerance.py."""
from __future__ import annotations

import logging
import os
import signal
import threading

import pytest
import torch
from _engine_trainer import DummyTrainer, tiny_cfg

from retinakit.engine import TrainingInterrupted
from retinakit.engine.hooks import CallbackHook, PeriodicCheckpointer


def _send_at(it: int, signum: int, count: int = 1) -> CallbackHook:
    def before_step(trainer) -> None:
        if trainer.iter == it:
            for _ in range(count):
                os.kill(os.getpid(), signum)

    return CallbackHook(before_step=before_step)


@pytest.mark.parametrize(("signum", "it", "periodic"), [(signal.SIGTERM, 4, False), (signal.SIGINT, 5, True)])
def test_signal_saves_the_current_iteration_and_restores_handlers(tmp_path, signum, it, periodic):
    out = str(tmp_path)
    previous = signal.getsignal(signum)
    trainer = DummyTrainer(tiny_cfg(out, SOLVER__CHECKPOINT_PERIOD=3))  # periodic saves after iterations 2, 5, 8
    trainer.register_hooks([_send_at(it, signum)])
    trainer.resume_or_load(resume=False)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    hooks_logger = logging.getLogger("retinakit.trainer")
    hooks_logger.addHandler(handler)
    level = hooks_logger.level
    hooks_logger.setLevel(logging.INFO)
    try:
        with pytest.raises(TrainingInterrupted) as info:
            trainer.train()
    finally:
        hooks_logger.removeHandler(handler)
        hooks_logger.setLevel(level)
    e = info.value
    # iterations 0..it all ran: the timer's summary counts them (it counted one fewer before)
    assert any(m.startswith(f"Trained {it + 1} iterations") for m in records), records
    assert (e.signum, e.iteration) == (signum, it)
    assert e.checkpoint == os.path.join(out, f"model_{it:07d}.pth") and os.path.exists(e.checkpoint)
    assert f"Stopped by {signal.Signals(signum).name} after iteration {it}" in str(e) and "--resume" in str(e)
    assert signal.getsignal(signum) is previous
    saved = torch.load(e.checkpoint, weights_only=True)
    assert saved["iteration"] == it and saved["trainer"]["iteration"] == it
    with open(os.path.join(out, "last_checkpoint"), encoding="utf-8") as f:
        assert f.read().strip() == f"model_{it:07d}.pth"
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    pc = next(h for h in trainer.hooks if isinstance(h, PeriodicCheckpointer))
    assert pc.last_saved_iter == (it if periodic else 2)  # which hook wrote the stop checkpoint


def test_training_in_a_thread_leaves_signal_handlers_alone(tmp_path):
    seen = []
    trainer = DummyTrainer(tiny_cfg(str(tmp_path), SOLVER__MAX_ITER=2))
    trainer.register_hooks([CallbackHook(before_step=lambda t: seen.append(signal.getsignal(signal.SIGTERM)))])
    trainer.resume_or_load(resume=False)
    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=trainer.train)
    t.start()
    t.join()
    assert seen == [before, before] and os.path.exists(os.path.join(str(tmp_path), "model_final.pth"))
