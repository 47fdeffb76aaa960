"""Exact resume of the real RetinaNet through ``tools/train_net.py`` (issue 11, part 2).

The quickstart config (R10 backbone, GN head, GIoU loss, cosine LR, gradient clipping) on a
tiny shapes split is trained without interruption, and again SIGKILLed at fixed points --
mid-iteration (after the backward pass, before the optimizer step), while a checkpoint's
temp file is complete but not renamed, after the rename but before ``last_checkpoint``
moves, and right after a save -- then restarted with ``--resume``; once plain, once with
gradient accumulation, EMA and fp16 AMP (grad scaler) together. Final model, optimizer,
scheduler, EMA and grad-scaler states must be bitwise equal, and so must every loss/LR row of
``metrics.json`` (the rows are medians over the recent history, so this also checks that
the history is restored). The kill points are deterministic: the process stops at them
(``tests/engine/_resume_pause_hook.py``: a hook and wrappers of the checkpointer's steps) and waits.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from _resume_run import CONFIG, HERE, MAX_ITER, REPO, shapes_run_opts

pytestmark = pytest.mark.slow

VARIANTS = {
    "plain": [],
    "accum_ema_fp16": ["SOLVER.ACCUMULATE_STEPS", "2", "SOLVER.EMA.ENABLED", "True", "SOLVER.EMA.DECAY", "0.9",
                  "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "float16"],
}


@pytest.fixture(scope="module")
def data_opts(tmp_path_factory) -> list[str]:
    return shapes_run_opts(str(tmp_path_factory.mktemp("shapes")))


def _train(out: str, opts: list[str], resume: bool = False, env: dict | None = None) -> tuple[int, str]:
    """Run tools/train_net.py; SIGKILL it as soon as it announces a pause point."""
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", CONFIG]
    cmd += ["--resume"] if resume else []
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([REPO, HERE, os.environ.get("PYTHONPATH", "")]))
    full_env.update(env or {})
    proc = subprocess.Popen([*cmd, *opts, "OUTPUT_DIR", out], cwd=REPO, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(("PAUSE ", "CHECKPOINT_PAUSE ")):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=300)
    return proc.returncode, "".join(lines)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_opts):
    """Output dirs of uninterrupted runs, one per variant (run on first use)."""
    done: dict[str, str] = {}

    def get(variant: str) -> str:
        if variant not in done:
            out = str(tmp_path_factory.mktemp(f"full_{variant}"))
            events = os.path.join(out, "events.txt")
            rc, log = _train(out, data_opts + VARIANTS[variant], env={"RESUME_TEST_EVENTS": events})
            assert rc == 0, log
            done[variant] = out
        return done[variant]

    return get


def _final(out: str) -> dict:
    return torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)


def _assert_equal(a, b, where: str) -> None:
    """Recursive bitwise equality of checkpoint contents."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            _assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _loss_rows(out: str) -> dict[int, dict[str, float]]:
    rows = {}
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            rows[row["iteration"]] = {k: v for k, v in row.items() if "loss" in k or k == "lr"}
    return rows


# Each chain is one output dir killed at several points in turn, each kill followed by a
# --resume that is itself killed at the next point (the last resume runs to the end):
# (RESUME_TEST_PAUSE, RESUME_TEST_CHECKPOINT_PAUSE, checkpoint the next resume starts from).
CHAINS = {
    "plain": [
        ("after_backward:3", "", "model_0000002.pth"),  # mid-iteration: after backward, before the step
        ("", "tmp_written:model_0000005.pth", "model_0000002.pth"),  # temp file complete, not renamed
        ("", "renamed:model_0000005.pth", "model_0000002.pth"),  # in place, last_checkpoint not moved
        ("", "saved:model_0000005.pth", "model_0000005.pth"),  # right after a complete save
    ],
    "accum_ema_fp16": [
        ("after_backward:4", "", "model_0000002.pth"),
        ("", "saved:model_0000005.pth", "model_0000005.pth"),
    ],
}


def _assert_same_training(full: str, out: str, variant: str) -> None:
    a, b = _final(full), _final(out)
    assert a["iteration"] == b["iteration"] == MAX_ITER - 1
    assert float(b["model"]["loss_normalizer"]) != 100.0  # the moving foreground count is in the checkpoint
    for key in ("model", "optimizer", "scheduler"):
        _assert_equal(a[key], b[key], key)
    hooks_a, hooks_b = a["trainer"]["hooks"], b["trainer"]["hooks"]
    assert ("EMAHook" in hooks_a) == (variant == "accum_ema_fp16")
    _assert_equal(hooks_a, hooks_b, "hooks")
    assert ("grad_scaler" in a["trainer"]) == (variant == "accum_ema_fp16")  # fp16 AMP
    _assert_equal(a["trainer"].get("grad_scaler"), b["trainer"].get("grad_scaler"), "grad_scaler")
    assert _loss_rows(full) == _loss_rows(out)
    assert sorted(_loss_rows(out)) == list(range(MAX_ITER))
    assert not [n for n in os.listdir(out) if ".tmp." in n], os.listdir(out)


@pytest.mark.parametrize("variant", sorted(CHAINS))
def test_sigkill_and_resume_real_retinanet_is_bitwise(tmp_path, data_opts, uninterrupted, variant):
    opts = data_opts + VARIANTS[variant]
    out = str(tmp_path / "killed")
    previous = ""  # the checkpoint the run about to start resumes from ("" for the first run)
    for pause, ckpt_pause, resume_from in CHAINS[variant]:
        rc, log = _train(out, opts, resume=bool(previous), env={"RESUME_TEST_PAUSE": pause, "RESUME_TEST_CHECKPOINT_PAUSE": ckpt_pause})
        assert rc == -signal.SIGKILL, f"expected a kill at {pause or ckpt_pause}:\n{log}"
        assert not previous or f"Resuming from {os.path.join(out, previous)}" in log, log
        assert not os.path.exists(os.path.join(out, "model_final.pth"))
        with open(os.path.join(out, "last_checkpoint"), encoding="utf-8") as f:
            assert f.read().strip() == resume_from, f"after the kill at {pause or ckpt_pause}"
        previous = resume_from
    rc, log = _train(out, opts, resume=True)
    assert rc == 0, log
    assert f"Resuming from {os.path.join(out, previous)}" in log, log
    _assert_same_training(uninterrupted(variant), out, variant)


def test_hook_named_in_config_sees_every_event_in_order(uninterrupted):
    """The accumulation + EMA + fp16 AMP run: a hook from cfg.HOOKS gets each documented event once per
    iteration (after_backward once, after both micro-batches)."""
    with open(os.path.join(uninterrupted("accum_ema_fp16"), "events.txt"), encoding="utf-8") as f:
        events = [tuple(line.split()) for line in f]
    expected = [("before_train", "0")]
    for it in range(MAX_ITER):
        expected += [(ev, str(it)) for ev in ("before_step", "after_backward", "after_step")]
    expected.append(("after_train", str(MAX_ITER)))
    assert events == expected
