"""Hooks registered on ``DefaultTrainer`` (the trainer users use) get every documented event,
in order, with the real RetinaNet of the quickstart config (issue 11, part 3): plain, with
gradient accumulation, and with bf16 AMP (which runs on CPU)."""
from __future__ import annotations

import os
import sys

import pytest
import torch
from _engine_trainer import expected_hook_events

from retinakit.config import get_cfg
from retinakit.data.datasets import ShapesSpec, generate_shapes
from retinakit.engine import DefaultTrainer, HookBase

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # CUSTOM_IMPORTS names projects.ResNet10.resnet10
    sys.path.insert(0, REPO)

EVENTS = ("before_train", "before_step", "after_backward", "after_step", "after_train")


class Recorder(HookBase):
    """Logs (name, event, iteration) for each event."""

    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def _rec(self, event: str) -> None:
        self.log.append((self.name, event, self.trainer.iter))

    def before_train(self) -> None:
        self._rec("before_train")

    def before_step(self) -> None:
        self._rec("before_step")

    def after_backward(self) -> None:
        self._rec("after_backward")
        # Between the backward pass and the optimizer step: gradients exist.
        grads = [p.grad for p in self.trainer.model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)

    def after_step(self) -> None:
        self._rec("after_step")

    def after_train(self) -> None:
        self._rec("after_train")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> str:
    return generate_shapes("tiny", ShapesSpec(num_images=8, image_size=160, seed=5), root=str(tmp_path_factory.mktemp("shapes")))


def _cfg(shapes: str, out: str, **solver) -> object:
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "quickstart", "retinanet_R10_shapes.yaml"))
    cfg.merge_from_list([
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "DATASETS.TRAIN_JSON", os.path.join(shapes, "annotations.json"),
        "DATASETS.TRAIN_IMAGES", os.path.join(shapes, "images"), "MODEL.DEVICE", "cpu", "SEED", "3",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "0", "OUTPUT_DIR", out,
    ])
    for k, v in solver.items():
        node = cfg.SOLVER
        *parents, leaf = k.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return cfg


@pytest.mark.parametrize(
    "solver",
    [{}, {"ACCUMULATE_STEPS": 2}, {"AMP__ENABLED": True, "AMP__DTYPE": "bfloat16"}],
    ids=["plain", "accumulate2", "amp_bf16"],
)
def test_default_trainer_dispatches_every_documented_event(tmp_path, shapes, solver):
    assert all(hasattr(HookBase, ev) for ev in EVENTS)
    log: list = []
    trainer = DefaultTrainer(_cfg(shapes, str(tmp_path), **solver))
    trainer.register_hooks([Recorder("a", log), Recorder("b", log)])
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert log == expected_hook_events(["a", "b"], 2)
    assert trainer.completed
