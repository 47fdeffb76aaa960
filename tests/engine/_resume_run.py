"""Shared set-up of the subprocess training runs that test resume and fault tolerance:
tools/train_net.py on the R10 quickstart config, a tiny generated shapes split, with the
``ResumeTestPause`` hook (``_resume_pause_hook.py``) that pauses / kills / signals on request."""
from __future__ import annotations

import os

from retinakit.data.datasets import ShapesSpec, generate_shapes

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONFIG = os.path.join(REPO, "configs", "quickstart", "retinanet_R10_shapes.yaml")
MAX_ITER = 8  # checkpoints after iterations 2 and 5 (period 3), model_final after 7


def shapes_run_opts(root: str) -> list[str]:
    """Config overrides: 16 generated 160 px images under ``root``, CPU, seed 7, ``MAX_ITER``
    iterations of batch 4, checkpoints every 3 iterations, the pause hook."""
    d = generate_shapes("tiny", ShapesSpec(num_images=16, image_size=160, seed=5), root=root)
    return [
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
        "DATASETS.TRAIN_JSON", os.path.join(d, "annotations.json"), "DATASETS.TRAIN_IMAGES", os.path.join(d, "images"),
        "MODEL.DEVICE", "cpu", "SEED", "7", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.WARMUP_ITERS", "3", "SOLVER.LOG_PERIOD", "1",
        "CUSTOM_IMPORTS", "['projects.ResNet10.resnet10', '_resume_pause_hook']", "HOOKS", "['ResumeTestPause']",
    ]
