"""tools/gpu_check.py (``make gpu-check``): its orchestration runs here, on CPU, so the first GPU
minute is not spent on a typo. Without a GPU every GPU step is skipped with its reason; steps
that fail or time out do not stop the later ones; the report and the device-tool limits hold."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gpu_check  # noqa: E402

DOCS = os.path.join(ROOT, "docs", "benchmarks.md")


def _args(tmp_path, *extra: str):
    return gpu_check.parse_args(["--output", str(tmp_path / "out"), "--wheels", "no-such-folder", *extra])


def test_dry_run_plans_every_step_and_writes_the_report(tmp_path):
    args = _args(tmp_path, "--dry-run")
    results = gpu_check.run(args, gpu_check.plan(args))
    assert list(results) == ["env", "wheels", "build", "pytest-cuda", "postprocess", "train", "inference"]
    assert all(r["status"] == "planned" for r in results.values())
    assert "no wheels in no-such-folder/" in results["wheels"]["reason"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["dry_run"] is True and list(report["steps"]) == list(results)
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.count("\n| ") == 2 + len(results)  # header, rule and one row per step


@pytest.mark.skipif(gpu_check._cuda_visible() is None, reason="checks the CPU mode")
def test_cpu_mode_runs_env_and_says_why_gpu_steps_are_skipped(tmp_path):
    args = _args(tmp_path)
    results = gpu_check.run(args, gpu_check.plan(args))
    env = results["env"]
    assert env["status"] == "passed" and env["data"]["torch"].startswith("2.") and env["data"]["cuda_available"] is False
    assert env["data"]["packages"]["torchvision"] is True and "tensorrt" in env["data"]["packages"]
    for name in ("build", "pytest-cuda", "postprocess", "train", "inference"):
        assert results[name]["status"] == "skipped" and "no CUDA GPU visible" in results[name]["reason"], name
    assert results["wheels"]["status"] == "skipped"
    assert "no CUDA GPU visible" in (tmp_path / "out" / "report.md").read_text()


def test_a_failing_or_timed_out_step_does_not_stop_the_later_ones(tmp_path):
    py = sys.executable
    steps = [
        gpu_check.Step("fails", 30, [py, "-c", "import sys; print('boom'); sys.exit(3)"], what="exits 3"),
        gpu_check.Step("hangs", 1.5, [py, "-c", "import time; print('started', flush=True); time.sleep(60)"], what="sleeps"),
        gpu_check.Step("after", 30, [py, "-c", "print('ran')"], what="prints"),
        gpu_check.Step("needs-failed", 30, [py, "-c", "print('x')"], needs=("fails",), what="needs a failed step"),
        gpu_check.Step("broken-function", 30, function=lambda a: 1 / 0, what="raises"),
    ]
    results = gpu_check.run(_args(tmp_path), steps)
    assert results["fails"]["status"] == "failed (exit 3)" and "boom" in results["fails"]["tail"]
    assert results["hangs"]["status"].startswith("timed out") and results["hangs"]["seconds"] < 30
    assert "started" in results["hangs"]["tail"]
    assert results["after"]["status"] == "passed" and results["after"]["tail"].strip() == "ran"
    assert results["needs-failed"]["status"] == "skipped" and "'fails' did not pass" in results["needs-failed"]["reason"]
    assert results["broken-function"]["status"] == "failed" and "ZeroDivisionError" in results["broken-function"]["tail"]
    log = (tmp_path / "out" / "steps.log").read_text()
    assert log.index("===== fails") < log.index("boom") < log.index("===== hangs") < log.index("ran")


def test_the_budget_caps_the_whole_run(tmp_path):
    py = sys.executable
    steps = [gpu_check.Step(f"s{i}", 60, [py, "-c", "import time; time.sleep(60)"]) for i in range(3)]
    results = gpu_check.run(_args(tmp_path, "--budget", "7"), steps)
    assert results["s0"]["status"].startswith("timed out after 7")
    assert all(results[s]["status"] == "skipped" and "budget" in results[s]["reason"] for s in ("s1", "s2"))


def test_plan_fits_the_device_limits(tmp_path):
    args = _args(tmp_path)
    steps = gpu_check.plan(args)
    assert sum(s.timeout for s in steps) <= 810  # each bounded; --budget (480 s) caps the sum
    assert args.budget <= 480
    written = {os.path.basename(a.split("=", 1)[-1]) for s in steps for a in (s.command or []) if str(args.output) in a}
    assert written <= set(gpu_check.OUTPUT_FILES) and len(gpu_check.OUTPUT_FILES) <= 8  # the device tool returns 8 files
    wheels = os.path.join(ROOT, "..", "shared", "device-wheels")
    if os.path.isdir(wheels):
        assert sum(os.path.getsize(os.path.join(wheels, f)) for f in os.listdir(wheels)) < 16 * 2**20


def test_documented_device_command_fits_the_run_tool():
    """docs/benchmarks.md gives the exact `run` call: command <= 2000 characters, carry <= 8 paths."""
    with open(DOCS) as f:
        text = f.read()
    section = text[text.index("## GPU check"):]
    command = re.search(r"command: `([^`]+)`", section).group(1)
    carry = json.loads(re.search(r"carry: `(\[[^`]*\])`", section).group(1))
    assert len(command) <= 2000 and len(carry) <= 8
    assert "tools/gpu_check.py" in command and gpu_check.WHEEL_DIR in carry
    ignored = subprocess.run(["git", "check-ignore", "-q", gpu_check.WHEEL_DIR + "/x.whl"], cwd=ROOT)
    assert ignored.returncode == 0, f"{gpu_check.WHEEL_DIR}/ must be git-ignored (it is carried, not committed)"


def test_make_gpu_check_prepare_copies_the_wheels(tmp_path):
    src, dst = tmp_path / "wheels", tmp_path / "dst"
    src.mkdir()
    (src / "a-1.0-py3-none-any.whl").write_bytes(b"x")
    out = subprocess.run(["make", "-s", "gpu-check-prepare", f"DEVICE_WHEELS={src}", f"GPU_CHECK_WHEELS={dst}",
                          "DEVICE_DOWNLOAD="],  # no download in tests
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(dst)) == ["a-1.0-py3-none-any.whl"]
