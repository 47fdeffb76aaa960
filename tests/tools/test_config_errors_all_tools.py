"""Config mistakes end the same way in every tool (issue 20, item 3): exit code 2, one error line
naming the key, no traceback — ``tools/train_net.py``, ``tools/infer.py``, ``tools/deploy.py`` and
``tools/analyze_anchors.py``, each run as a user runs it (a subprocess) on a config with one mistake.

The weights file is an empty ``{"model": {}}``: every mistake here must be reported before any
weights are read.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = os.path.join(REPO, "configs", "quickstart", "retinanet_R10_shapes.yaml")

pytestmark = pytest.mark.slow

MISTAKES = {  # name: (YAML lines under MODEL, key the message must name)
    "anchor_sizes_for_2_levels": ("  ANCHOR_GENERATOR:\n    SIZES: [[32], [64]]\n", "MODEL.ANCHOR_GENERATOR.SIZES"),
    "unknown_key": ("  NO_SUCH_KEY: 1\n", "MODEL.NO_SUCH_KEY"),
    "unknown_backbone": ("  BACKBONE:\n    NAME: NoSuchBackbone\n", "NoSuchBackbone"),
}
TOOLS = ("train_net", "infer", "deploy", "analyze_anchors")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("tool_errors")
    weights = str(d / "empty.pth")
    torch.save({"model": {}}, weights)
    images = d / "images"
    images.mkdir()
    return {"weights": weights, "images": str(images), "dir": str(d)}


def _args(tool: str, cfg: str, files: dict[str, str]) -> list[str]:
    out = files["dir"]
    return {
        "train_net": ["--config-file", cfg, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", os.path.join(out, "train")],
        "infer": ["--model", files["weights"], "--config-file", cfg, "--images", files["images"], "--output", os.path.join(out, "d.json")],
        "deploy": ["--config-file", cfg, "--weights", files["weights"], "--output", os.path.join(out, "m.onnx")],
        "analyze_anchors": ["--config-file", cfg],
    }[tool]


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_config_mistake_is_one_line_exit_2_in_every_tool(tmp_path, files, tool, mistake):
    body, key = MISTAKES[mistake]
    cfg = tmp_path / f"{mistake}.yaml"
    cfg.write_text(f"_BASE_: {BASE}\nCUSTOM_IMPORTS: ['projects.ResNet10.resnet10']\nMODEL:\n  DEVICE: cpu\n{body}")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, os.path.join(REPO, "tools", f"{tool}.py"), *_args(tool, str(cfg), files)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = p.stdout + p.stderr
    errors = [line for line in log.splitlines() if line.lower().startswith("error")]
    assert p.returncode == 2, log
    assert len(errors) == 1 and key in errors[0], log
    assert "Traceback" not in log, log
