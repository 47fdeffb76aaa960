"""Faults in long runs (issue 20), on the real RetinaNet of the quickstart config and the real
trainer through ``tools/train_net.py``, on a tiny shapes split:

* a checkpoint write that fails (ENOSPC after part of the file is written) stops the run with
  one line naming the folder and the free space; the partial file is gone, ``last_checkpoint``
  still names the previous checkpoint, and ``--resume`` after "freeing space" ends bitwise equal
  to an uninterrupted run; with ``SOLVER.CHECKPOINT_WRITE_ERROR retry`` training goes on;
* SIGTERM / SIGINT during training write a checkpoint of the current iteration, log one line
  naming it and exit 143 / 130; the resumed run is bitwise equal; a second signal exits at once;
* OUTPUT_DIR mistakes and anchor sizes for the wrong number of levels end with one line, exit 2;
* ``torchrun --nproc-per-node 2 --max-restarts 1`` with one rank SIGKILLed between checkpoints:
  the restarted group resumes by itself and ends bitwise equal to an uninterrupted 2-process run.

Signals and kills come from ``tests/engine/_resume_pause_hook.py`` (RESUME_TEST_SIGNAL,
RESUME_TEST_SELF_KILL) at exact points, so each test is deterministic.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest
import torch
from _resume_run import CONFIG, HERE, MAX_ITER, REPO, shapes_run_opts


@pytest.fixture(scope="module")
def data_opts(tmp_path_factory) -> list[str]:
    return shapes_run_opts(str(tmp_path_factory.mktemp("shapes")))


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([REPO, HERE, os.environ.get("PYTHONPATH", "")]))
    for k in ("RESUME_TEST_SIGNAL", "RESUME_TEST_SELF_KILL", "RESUME_TEST_PAUSE", "RESUME_TEST_CHECKPOINT_PAUSE"):
        env.pop(k, None)
    env.update(extra or {})
    return env


def _train(out: str, opts: list[str], *flags: str, env: dict | None = None, torchrun: bool = False) -> tuple[int, str]:
    script = [os.path.join(REPO, "tools", "train_net.py"), "--config-file", CONFIG, *flags, *opts, "OUTPUT_DIR", out]
    if torchrun:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts", "1"]
    else:
        launcher = [sys.executable]
    p = subprocess.run([*launcher, *script], cwd=REPO, env=_env(env), capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout + p.stderr


def _final(out: str) -> dict:
    return torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)


def _assert_equal(a, b, where: str) -> None:
    """Recursive bitwise equality of checkpoint contents."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _assert_same_training(full: str, out: str) -> None:
    a, b = _final(full), _final(out)
    assert a["iteration"] == b["iteration"] == MAX_ITER - 1
    for key in ("model", "optimizer", "scheduler"):
        _assert_equal(a[key], b[key], key)
    _assert_equal(a["trainer"]["hooks"], b["trainer"]["hooks"], "hooks")
    assert not [n for n in os.listdir(out) if ".tmp." in n], os.listdir(out)


def _last_checkpoint(out: str) -> str:
    with open(os.path.join(out, "last_checkpoint"), encoding="utf-8") as f:
        return f.read().strip()


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("ERROR")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_opts) -> str:
    out = str(tmp_path_factory.mktemp("full"))
    rc, log = _train(out, data_opts)
    assert rc == 0, log
    return out


# ------------------------------------------------------------------ checkpoint write errors
@pytest.mark.slow
def test_full_disk_during_checkpoint_keeps_previous_and_resume_is_bitwise(tmp_path, data_opts, uninterrupted):
    out = str(tmp_path / "run")
    rc, log = _train(out, data_opts, env={"RESUME_TEST_ENOSPC": "model_0000005.pth"})  # half written, then ENOSPC
    assert rc == 2, log
    assert "ENOSPC model_0000005.pth" in log, "the failing write was not reached"
    lines = _error_lines(log)
    assert len(lines) == 1 and "Traceback" not in log, log
    line = lines[0]
    assert os.path.abspath(out) in line and "free space there:" in line and "ENOSPC" in line, line
    assert "model_0000002.pth is still the latest checkpoint" in line and "--resume" in line, line
    assert _last_checkpoint(out) == "model_0000002.pth"
    assert not os.path.exists(os.path.join(out, "model_0000005.pth"))
    assert not [n for n in os.listdir(out) if ".tmp." in n], os.listdir(out)

    rc, log = _train(out, data_opts, "--resume")  # space freed: the same command with --resume
    assert rc == 0, log
    assert f"Resuming from {os.path.join(out, 'model_0000002.pth')}" in log, log
    _assert_same_training(uninterrupted, out)


@pytest.mark.slow
def test_retry_policy_keeps_training_past_a_failed_checkpoint(tmp_path, data_opts, uninterrupted):
    out = str(tmp_path / "retry")
    opts = [*data_opts, "SOLVER.CHECKPOINT_WRITE_ERROR", "retry"]
    rc, log = _train(out, opts, env={"RESUME_TEST_ENOSPC": "model_0000002.pth"})
    assert rc == 0, log
    warned = [line for line in log.splitlines() if "Cannot write checkpoint model_0000002.pth" in line]
    assert len(warned) == 1 and "training goes on" in warned[0] and "no earlier checkpoint exists" in warned[0], log
    assert not os.path.exists(os.path.join(out, "model_0000002.pth"))
    assert os.path.exists(os.path.join(out, "model_0000005.pth")) and _last_checkpoint(out) == "model_final.pth"
    _assert_same_training(uninterrupted, out)  # a failed save changes nothing in the training


# ------------------------------------------------------------------ signals
@pytest.mark.slow
def test_sigterm_writes_checkpoint_of_current_iteration_and_resume_is_bitwise(tmp_path, data_opts, uninterrupted):
    out = str(tmp_path / "run")
    rc, log = _train(out, data_opts, env={"RESUME_TEST_SIGNAL": "before_step:4:SIGTERM"})
    assert rc == 128 + signal.SIGTERM, log
    stop = [line for line in log.splitlines() if "Stopped by SIGTERM" in line]
    assert len(stop) == 1 and "Traceback" not in log, log
    assert "after iteration 4" in stop[0] and os.path.join(out, "model_0000004.pth") in stop[0] and "--resume" in stop[0]
    assert _last_checkpoint(out) == "model_0000004.pth"
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    rc, log = _train(out, data_opts, "--resume")
    assert rc == 0, log
    assert f"Resuming from {os.path.join(out, 'model_0000004.pth')}" in log, log
    _assert_same_training(uninterrupted, out)


@pytest.mark.slow
def test_sigint_at_a_periodic_checkpoint_saves_once_and_second_signal_exits_at_once(tmp_path, data_opts):
    out = str(tmp_path / "sigint")
    rc, log = _train(out, data_opts, env={"RESUME_TEST_SIGNAL": "before_step:5:SIGINT"})
    assert rc == 128 + signal.SIGINT, log
    assert log.count(f"Saved checkpoint {os.path.join(out, 'model_0000005.pth')}") == 1, log  # the periodic save, not twice
    assert "Stopped by SIGINT after iteration 5" in log and "Traceback" not in log, log
    assert _last_checkpoint(out) == "model_0000005.pth"

    out2 = str(tmp_path / "twice")
    rc, log = _train(out2, data_opts, env={"RESUME_TEST_SIGNAL": "before_step:4:SIGTERM:2"})
    assert rc == -signal.SIGTERM, log  # killed by the second signal, no checkpoint of iteration 4
    assert not os.path.exists(os.path.join(out2, "model_0000004.pth"))
    assert _last_checkpoint(out2) == "model_0000002.pth"


# ------------------------------------------------------------------ one-line config errors
@pytest.mark.parametrize(
    ("case", "key"),
    [
        ("output_dir_is_file", "OUTPUT_DIR"),
        ("output_dir_under_file", "OUTPUT_DIR"),
        ("sizes_for_2_levels", "MODEL.ANCHOR_GENERATOR.SIZES"),
        ("write_error_policy", "SOLVER.CHECKPOINT_WRITE_ERROR"),
    ],
)
def test_config_mistakes_end_with_one_line_and_exit_2(tmp_path, data_opts, case, key):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    out = {"output_dir_is_file": str(a_file), "output_dir_under_file": str(a_file / "out")}.get(case, str(tmp_path / "out"))
    extra = {
        "sizes_for_2_levels": ["MODEL.ANCHOR_GENERATOR.SIZES", "[[32], [64]]"],
        "write_error_policy": ["SOLVER.CHECKPOINT_WRITE_ERROR", "sometimes"],
    }.get(case, [])
    rc, log = _train(out, data_opts + extra)
    assert rc == 2, log
    lines = _error_lines(log)
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in log, log


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes into read-only folders")
def test_read_only_output_dir_is_one_line(tmp_path, data_opts):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, log = _train(str(ro), data_opts)
    finally:
        ro.chmod(0o700)
    assert rc == 2 and len(_error_lines(log)) == 1 and "OUTPUT_DIR" in log and "Traceback" not in log, log


# ------------------------------------------------------------------ torchrun elastic restart
@pytest.fixture(scope="module")
def torchrun_full(tmp_path_factory, data_opts) -> str:
    """An uninterrupted 2-process torchrun run."""
    full = str(tmp_path_factory.mktemp("torchrun_full"))
    rc, log = _train(full, data_opts, torchrun=True)
    assert rc == 0, log
    return full


@pytest.mark.slow
def test_torchrun_restart_after_a_killed_rank_resumes_by_itself_bitwise(tmp_path, data_opts, torchrun_full):
    full = torchrun_full
    # A random iteration between checkpoints (2 and 5 are checkpoint iterations) and a random rank.
    it, rank = random.choice([3, 4, 6]), random.choice([0, 1])
    out = str(tmp_path / "killed")
    rc, log = _train(out, data_opts, torchrun=True, env={"RESUME_TEST_SELF_KILL": f"after_step:{it}:{rank}"})
    where = f"rank {rank} killed after iteration {it}"
    assert rc == 0, f"{where}\n{log}"
    assert f"SELF_KILL after_step {it} rank {rank}" in log, log
    resumed = "model_0000002.pth" if it < 5 else "model_0000005.pth"  # the last complete checkpoint
    assert "torchrun restart 1: resuming" in log and f"Resuming from {os.path.join(out, resumed)}" in log, f"{where}\n{log}"
    assert "Connection refused" not in log.split("torchrun restart 1")[-1], log
    _assert_same_training(full, out)


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_all_ranks_at_one_iteration(tmp_path, data_opts, torchrun_full):
    """Only rank 1 gets SIGTERM: both ranks stop after the same iteration with one checkpoint
    (no rank waits in a collective); torchrun then restarts the group, which resumes from it."""
    out = str(tmp_path / "term")
    rc, log = _train(out, data_opts, torchrun=True, env={"RESUME_TEST_SIGNAL": "before_step:4:SIGTERM:1:1"})
    assert rc == 0, log
    assert "Stopped by SIGTERM after iteration 4" in log, log
    assert f"Resuming from {os.path.join(out, 'model_0000004.pth')}" in log, log
    _assert_same_training(torchrun_full, out)
