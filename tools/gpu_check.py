#!/usr/bin/env python
"""Everything only a GPU can show, in one call: ``make gpu-check`` (or ``python3 tools/gpu_check.py``).

Steps, in this order, each timed and run under its own timeout (never past the overall
``--budget``); a failing, timed-out or skipped step does not stop the later ones:

1. ``env``          GPU, driver, CUDA, torch, Python, which optional packages import
2. ``wheels``       install the wheels carried in ``.device-wheels/`` (no network there)
3. ``build``        build retinakit._C with CUDA for this GPU's architecture
4. ``pytest-cuda``  ``pytest -m cuda``: kernels vs CPU, DALI GPU, AMP/GradScaler, NCCL DDP
5. ``postprocess``  ``tools/benchmark.py postprocess --device cuda`` (vs torchvision)
6. ``train``        ``tools/benchmark.py train --amp``: R50-FPN, 800 px, batch 8 (vs torchvision)
7. ``inference``    ``tools/benchmark.py inference --device cuda``: FP32/FP16/channels_last, batch 1 and 32

Without a GPU (or with ``--dry-run``) every step is still planned and the report says why a
step was skipped. Results: ``report.json`` and ``report.md`` (paste into docs/benchmarks.md),
``steps.log`` (each step's output) and the benchmarks' JSON files, all in ``--output``
(``$OUT`` on the device machine) - at most 8 files, as the device tool returns.

    python3 tools/gpu_check.py --output "$OUT" [--budget 480] [--dry-run] [--only env build]
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEEL_DIR = ".device-wheels"
SITE_DIR = "/tmp/retinakit-gpu-check-site"
OPTIONAL_PACKAGES = ("torchvision", "fvcore", "iopath", "yacs", "pycocotools", "faster_coco_eval", "onnx",
                     "onnxruntime", "nvidia.dali", "tensorrt", "cuda.bindings", "modelopt")
# The device tool returns at most 8 files from $OUT: these are all gpu_check writes.
OUTPUT_FILES = ("report.json", "report.md", "steps.log", "pytest-cuda.xml", "postprocess.json", "train.json",
                "inference.json")


@dataclasses.dataclass
class Step:
    """One check: ``command`` (argv, run in the repository root) or ``function`` (run here).

    ``needs``: what must hold for it to run, as names of :data:`REQUIREMENTS` or of earlier steps
    that must have passed; the first unmet one is the skip reason."""

    name: str
    timeout: float
    command: list[str] | None = None
    function: Callable[[argparse.Namespace], dict[str, Any]] | None = None
    needs: tuple[str, ...] = ()
    what: str = ""


def _cuda_visible() -> str | None:
    """``None`` when torch sees a CUDA GPU, else why not."""
    try:
        import torch
    except ImportError as e:
        return f"torch does not import ({e})"
    if not torch.cuda.is_available():
        return f"no CUDA GPU visible to torch {torch.__version__} (torch.cuda.is_available() is False)"
    return None


def _wheels_present(args: argparse.Namespace) -> str | None:
    wheels = _wheel_files(args.wheels)
    return None if wheels else f"no wheels in {args.wheels}/ (run `make gpu-check-prepare` before the device call and carry it)"


def _wheel_files(folder: str) -> list[str]:
    path = os.path.join(ROOT, folder)
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".whl")) if os.path.isdir(path) else []


REQUIREMENTS: dict[str, Callable[[argparse.Namespace], str | None]] = {
    "cuda": lambda args: _cuda_visible(),
    "wheels": _wheels_present,
}


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """GPU, driver, CUDA, torch, Python and the optional packages' availability."""
    info: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        import torch

        info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            info.update(gpu=torch.cuda.get_device_name(), capability=".".join(map(str, torch.cuda.get_device_capability())))
    except ImportError as e:
        info["torch"] = f"not importable: {e}"
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    info["nvcc"] = shutil.which("nvcc") or "not on PATH"
    info["packages"] = {name: _importable(name) for name in OPTIONAL_PACKAGES}
    return info


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _arch() -> str:
    """TORCH_CUDA_ARCH_LIST for the visible GPU ("9.0" for H100/H200)."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{major}.{minor}"
    except ImportError:
        pass
    return "9.0"


def plan(args: argparse.Namespace) -> list[Step]:
    """The steps in order; timeouts sized for an H100/H200 (all of them fit in 8 minutes)."""
    py, out = sys.executable, args.output
    bench = [py, "tools/benchmark.py"]
    return [
        Step("env", 30, function=environment, what="GPU, driver, CUDA, torch, Python, optional packages"),
        Step("wheels", 60, [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
                            "--target", args.site, *_wheel_files(args.wheels)],
             needs=("wheels",), what=f"install {args.wheels}/*.whl into {args.site} (added to PYTHONPATH)"),
        Step("build", 240, [py, "setup.py", "-q", "build_ext", "--inplace", "--force"], needs=("cuda",),
             what=f"retinakit._C with FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST={_arch()}"),
        Step("pytest-cuda", 150, [py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                                  f"--junitxml={os.path.join(out, 'pytest-cuda.xml')}", "tests"],
             needs=("cuda", "build"), what="CUDA kernels vs CPU, DALI GPU, AMP/GradScaler, NCCL DDP"),
        Step("postprocess", 60, [*bench, "postprocess", "--device", "cuda", "--batch-sizes", "1", "8",
                                 "--repeats", "20", "--json", os.path.join(out, "postprocess.json")],
             needs=("cuda", "build"), what="post-processing vs torchvision, batch 1 and 8"),
        Step("train", 120, [*bench, "train", "--amp", "--batch", "8", "--size", "800", "--iters", "10", "--repeats", "3",
                            "--json", os.path.join(out, "train.json")],
             needs=("cuda", "build"), what="R50-FPN training throughput, AMP fp16, 800 px, batch 8, vs torchvision"),
        Step("inference", 150, [*bench, "inference", "--device", "cuda", "--batch-sizes", "1", "32", "--compile",
                                "--repeats", "10", "--json", os.path.join(out, "inference.json")],
             needs=("cuda", "build"), what="R50-FPN inference FP32/FP16/channels_last(/compile), batch 1 and 32, vs torchvision"),
    ]


def _env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=_arch())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, args.site, env.get("PYTHONPATH", "")) if p)
    return env


def _unmet(step: Step, args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> str | None:
    for need in step.needs:
        if need in REQUIREMENTS:
            reason = REQUIREMENTS[need](args)
            if reason:
                return reason
        elif results.get(need, {}).get("status") != "passed":
            return f"step {need!r} did not pass ({results.get(need, {}).get('status', 'not run')})"
    return None


def run_step(step: Step, args: argparse.Namespace, timeout: float, log: Any) -> dict[str, Any]:
    """Run one step; returns ``{status: passed|failed|timed out, seconds, tail, ...}``."""
    t0 = time.perf_counter()
    log.write(f"\n===== {step.name}: {step.what}\n")
    if step.function is not None:
        try:
            data = step.function(args)
            log.write(json.dumps(data, indent=1) + "\n")
            return {"status": "passed", "seconds": time.perf_counter() - t0, "data": data}
        except Exception as e:  # noqa: BLE001 - a broken check is reported, the later steps still run
            log.write(f"{type(e).__name__}: {e}\n")
            return {"status": "failed", "seconds": time.perf_counter() - t0, "tail": f"{type(e).__name__}: {e}"}
    assert step.command is not None
    log.write("$ " + " ".join(step.command) + "\n")
    log.flush()
    try:
        p = subprocess.run(step.command, cwd=ROOT, env=_env(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout)
        output, status = p.stdout, "passed" if p.returncode == 0 else f"failed (exit {p.returncode})"
    except subprocess.TimeoutExpired as e:
        raw = e.stdout or b""
        output, status = raw.decode(errors="replace") if isinstance(raw, bytes) else raw, f"timed out after {timeout:.0f} s"
    log.write(output)
    return {"status": status, "seconds": time.perf_counter() - t0, "tail": output[-3000:]}


def run(args: argparse.Namespace, steps: list[Step]) -> dict[str, dict[str, Any]]:
    """Run (or, with ``--dry-run``, only plan) ``steps`` within ``args.budget`` seconds."""
    os.makedirs(args.output, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    deadline = time.perf_counter() + args.budget
    with open(os.path.join(args.output, "steps.log"), "w") as log:
        for step in steps:
            entry: dict[str, Any] = {"what": step.what, "timeout": step.timeout,
                                     "command": " ".join(step.command) if step.command else f"{step.name} (in process)"}
            left = deadline - time.perf_counter()
            if args.only and step.name not in args.only:
                entry.update(status="skipped", reason="not in --only")
            elif args.dry_run:  # only what holds before anything runs: the machine's requirements
                reason = _unmet(dataclasses.replace(step, needs=tuple(n for n in step.needs if n in REQUIREMENTS)), args, results)
                entry.update(status="planned", reason=f"would be skipped: {reason}" if reason else "")
            elif (reason := _unmet(step, args, results)) is not None:
                entry.update(status="skipped", reason=reason)
            elif left < 5:
                entry.update(status="skipped", reason=f"the --budget of {args.budget:.0f} s is spent")
            else:
                entry.update(run_step(step, args, min(step.timeout, left), log))
            results[step.name] = entry
            print(f"[gpu-check] {step.name:<12} {entry['status']}"
                  + (f" ({entry['seconds']:.1f} s)" if "seconds" in entry else "")
                  + (f": {entry['reason']}" if entry.get("reason") else ""), flush=True)
    write_report(args.output, results, args)
    return results


def write_report(out: str, results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    """``report.json`` (everything) and ``report.md`` (a table to paste into docs/benchmarks.md)."""
    env = results.get("env", {}).get("data", {})
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": args.dry_run,
              "budget_s": args.budget, "steps": results}
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    lines = [f"### GPU check, {report['date']}", "",
             f"GPU: {env.get('gpu', 'none')} ({env.get('nvidia_smi', 'nvidia-smi not found')}); CUDA {env.get('cuda')}; "
             f"torch {env.get('torch')}; Python {env.get('python')}" + (" (dry run: nothing was run)" if args.dry_run else ""),
             "", "| step | what | status | seconds |", "| --- | --- | --- | --- |"]
    for name, r in results.items():
        status = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
        secs = f"{r['seconds']:.1f}" if "seconds" in r else "-"
        lines.append(f"| {name} | {r['what']} | {status} | {secs} |")
    for name in ("postprocess", "train", "inference"):
        tail = results.get(name, {}).get("tail")
        if tail and results[name]["status"] == "passed":
            lines += ["", f"#### {name}", "", "```", tail.strip()[-2500:], "```"]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=os.environ.get("OUT") or os.path.join(ROOT, "output", "gpu_check"))
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all steps together (8 minutes)")
    p.add_argument("--dry-run", action="store_true", help="plan every step and write the report; run nothing")
    p.add_argument("--only", nargs="+", default=[], help="run only these steps")
    p.add_argument("--wheels", default=WHEEL_DIR, help="folder (in the repository) of the wheels to install")
    p.add_argument("--site", default=SITE_DIR, help="where the wheels are installed")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args, plan(args))
    print(f"[gpu-check] report: {os.path.join(args.output, 'report.md')}")
    failed = [n for n, r in results.items() if r["status"].startswith(("failed", "timed out"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
