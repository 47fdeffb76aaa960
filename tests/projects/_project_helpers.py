"""Helpers of the project tests: tiny shapes splits and running the tools as a user would."""
from __future__ import annotations

import os
import subprocess
import sys

from retinakit.data.datasets import ShapesSpec, generate_shapes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_shapes(tmp_path, num_images: int = 8, image_size: int = 160, seed: int = 5) -> dict:
    """A small split of the built-in shapes generator; returns ``DATASETS.*_JSON/_IMAGES`` overrides."""
    d = generate_shapes("tiny", ShapesSpec(num_images=num_images, image_size=image_size, seed=seed), root=str(tmp_path))
    js, img = os.path.join(d, "annotations.json"), os.path.join(d, "images")
    return {"train": ["DATASETS.TRAIN", "()", "DATASETS.TRAIN_JSON", js, "DATASETS.TRAIN_IMAGES", img],
            "test": ["DATASETS.TEST", "()", "DATASETS.TEST_JSON", js, "DATASETS.TEST_IMAGES", img],
            "json": js, "images": img}


def run_tool(args: list, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python tools/<x>.py ...`` from the repository root, one thread (shared CI machines)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
