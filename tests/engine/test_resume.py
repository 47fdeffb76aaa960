"""``--resume`` continues exactly: SIGKILL at fixed iterations, resume, same final weights (bitwise).

The dummy model (fast); tests/engine/test_resume_retinanet.py does the same with the real
RetinaNet through tools/train_net.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_resume_script.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(out, *extra, kill_at=None):
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if kill_at is not None and line.strip() == f"ITER {kill_at}":
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    return proc.returncode, "".join(lines)


def _final(out):
    return torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    rc, log = _run(out)
    assert rc == 0, log
    return out


# Checkpoints are written after iterations 2, 5, 8, 11, 14 (period 3): a kill right after one
# (5) and one iteration after one (9).
@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [5, 9])
def test_sigkill_and_resume_is_bitwise_identical(tmp_path, full_run, kill_at):
    rc, log = _run(tmp_path / "killed", kill_at=kill_at)
    assert rc == -signal.SIGKILL, f"kill at {kill_at}: {log}"
    assert not os.path.exists(tmp_path / "killed" / "model_final.pth")
    rc, log = _run(tmp_path / "killed", "--resume")
    assert rc == 0 and "DONE" in log, log
    assert "Resuming from" in log
    a, b = _final(full_run), _final(tmp_path / "killed")
    assert a["iteration"] == b["iteration"] == 15
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after kill at iteration {kill_at}"
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    ema_a, ema_b = a["trainer"]["hooks"]["EMAHook"], b["trainer"]["hooks"]["EMAHook"]
    assert ema_a["updates"] == ema_b["updates"] == 16
    assert all(torch.equal(ema_a["ema"][k], ema_b["ema"][k]) for k in ema_a["ema"])
    assert a["scheduler"] == b["scheduler"]
    # metrics.json of the resumed run has no duplicated iterations, and the same losses
    killed_rows = _loss_rows(tmp_path / "killed")
    assert [r["iteration"] for r in killed_rows] == sorted({r["iteration"] for r in killed_rows})
    assert killed_rows == _loss_rows(full_run)


def _loss_rows(out):
    rows = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "loss" in k or k in ("lr", "iteration")} for r in rows]
