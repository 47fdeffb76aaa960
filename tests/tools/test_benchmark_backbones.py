"""tools/benchmark.py backbones: its MAC count against the MobileNetV3 paper and torchvision, and a run end to end."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _backbones_module():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        return importlib.import_module("benchmarks.backbones")
    finally:
        sys.path.pop(0)


@pytest.mark.parametrize(
    "variant, paper_mmacs, head_mmacs", [("large", 219, 960 * 1280 + 1280 * 1000), ("small", 56, 576 * 1024 + 1024 * 1000)],
)
def test_gmacs_match_the_paper_and_torchvision(variant, paper_mmacs, head_mmacs):
    """At 224x224 the bottom-up network plus the classifier's two linear layers is the paper's
    MAdds (Howard et al. 2019, Tables 3/4: 219 M / 56 M, rounded), and equals torchvision's features."""
    torchvision = pytest.importorskip("torchvision")
    from retinakit.modeling.backbone import MobileNetV3

    bench = _backbones_module()
    ours = MobileNetV3(variant=variant, out_features=["res5"]).eval()
    x = torch.zeros(1, 3, 224, 224)
    macs = bench.gmacs(lambda: ours(x)) * 1e9
    assert abs(macs + head_mmacs - paper_mmacs * 1e6) <= 0.02 * paper_mmacs * 1e6
    tv = getattr(torchvision.models, f"mobilenet_v3_{variant}")(weights=None).eval()
    assert macs == pytest.approx(bench.gmacs(lambda: tv.features(x)) * 1e9, rel=1e-9)


def test_gmacs_of_a_single_conv():
    """FlopCounterMode FLOPs / 2 = multiply-accumulates: H_out * W_out * C_out * C_in * k * k."""
    bench = _backbones_module()
    conv = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False)
    assert bench.gmacs(lambda: conv(torch.zeros(1, 8, 10, 12))) * 1e9 == 10 * 12 * 16 * 8 * 9


@pytest.mark.slow
def test_benchmark_backbones_runs(tmp_path):
    out = tmp_path / "bb.json"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "backbones", "--size", "64", "64", "--repeats", "1",
           "--warmup", "0", "--models", "MobileNetV3-Small", "ResNet-18", "--json", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(out.read_text())["results"]
    assert set(data) == {"MobileNetV3-Small", "ResNet-18"}
    small, r18 = data["MobileNetV3-Small"], data["ResNet-18"]
    torchvision = pytest.importorskip("torchvision")
    tv_small = torchvision.models.mobilenet_v3_small(weights=None).features
    tv_r18 = torchvision.models.resnet18(weights=None)
    assert small["backbone_params_m"] * 1e6 == pytest.approx(sum(p.numel() for p in tv_small.parameters()), abs=1)
    r18_ref = sum(p.numel() for n, p in tv_r18.named_parameters() if not n.startswith("fc."))
    assert r18["backbone_params_m"] * 1e6 == pytest.approx(r18_ref, abs=1)
    assert r18["eager"]["ratio_vs_peer"] == pytest.approx(1.0)
    assert small["onnxruntime"]["median_ms"] > 0 and "ResNet-18" in res.stdout
