"""``--resume`` continues exactly: SIGKILL at a random iteration, resume, same final weights (bitwise)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

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


def test_sigkill_and_resume_is_bitwise_identical(tmp_path):
    rc, log = _run(tmp_path / "full")
    assert rc == 0, log
    kill_at = random.Random(os.urandom(8)).randint(2, 13)
    rc, log = _run(tmp_path / "killed", kill_at=kill_at)
    assert rc == -signal.SIGKILL, f"kill at {kill_at}: {log}"
    assert not os.path.exists(tmp_path / "killed" / "model_final.pth")
    rc, log = _run(tmp_path / "killed", "--resume")
    assert rc == 0 and "DONE" in log, log
    assert "Resuming from" in log
    a, b = _final(tmp_path / "full"), _final(tmp_path / "killed")
    assert a["iteration"] == b["iteration"] == 15
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after kill at iteration {kill_at}"
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    ema_a, ema_b = a["trainer"]["hooks"]["EMAHook"], b["trainer"]["hooks"]["EMAHook"]
    assert ema_a["updates"] == ema_b["updates"] == 16
    assert all(torch.equal(ema_a["ema"][k], ema_b["ema"][k]) for k in ema_a["ema"])
    assert a["scheduler"] == b["scheduler"]
    # metrics.json of the resumed run has no duplicated iterations
    import json

    its = [json.loads(x)["iteration"] for x in (tmp_path / "killed" / "metrics.json").read_text().splitlines()]
    assert its == sorted(set(its))
