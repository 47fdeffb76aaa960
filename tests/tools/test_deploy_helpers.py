"""Helpers of the deploy/infer tool tests: run a tool as a user would; tiny shapes data; a checkpoint."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
R18 = os.path.join(ROOT, "configs", "quickstart", "retinanet_R18_shapes.yaml")
R10 = os.path.join(ROOT, "configs", "quickstart", "retinanet_R10_shapes.yaml")
R50 = os.path.join(ROOT, "configs", "COCO-Detection", "retinanet_R_50_FPN_1x.yaml")


def run_tool(args: list, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python tools/<x>.py ...`` from the repository root."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def tiny_shapes(root: str, num_images: int = 6, seed: int = 11) -> tuple:
    """``(annotations.json, images dir)`` of a small split of the built-in shapes generator."""
    from retinakit.data.datasets import ShapesSpec, generate_shapes

    d = generate_shapes("tiny_export", ShapesSpec(num_images=num_images, image_size=160, seed=seed), root=root)
    return os.path.join(d, "annotations.json"), os.path.join(d, "images")


def random_checkpoint(path: str, config: str = R18) -> str:
    """A seeded random model of ``config`` saved as ``{"model": state_dict}``."""
    from retinakit.config import get_cfg
    from retinakit.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(config)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return path


def assert_clean_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, one message naming ``needles``, no traceback."""
    text = r.stdout + r.stderr
    assert r.returncode == 2, text[-2000:]
    assert "Traceback" not in text, text[-2000:]
    for n in needles:
        assert n in text, text[-2000:]
