"""A DefaultTrainer on the dummy model and synthetic stream (no data/model packages needed)."""
from __future__ import annotations

from typing import Any

import torch
from _engine_dummy import DummyDetector, SyntheticLoader
from torch import nn

from retinakit.config import get_cfg
from retinakit.engine import DefaultTrainer
from retinakit.utils import comm


class DummyTrainer(DefaultTrainer):
    nan_at_call = -1

    @classmethod
    def build_model(cls, cfg: Any) -> nn.Module:
        return DummyDetector(nan_at_call=cls.nan_at_call)

    @classmethod
    def build_train_loader(cls, cfg: Any, start_iter: int = 0) -> Any:
        accum = cfg.SOLVER.ACCUMULATE_STEPS
        bs = cfg.SOLVER.IMS_PER_BATCH // (accum * comm.get_world_size())
        return SyntheticLoader(bs, comm.get_rank(), comm.get_world_size(), start_iter * accum)

    @classmethod
    def test_dataset_names(cls, cfg: Any) -> list[str]:
        return []


def tiny_cfg(output_dir: str, **overrides: Any) -> Any:
    cfg = get_cfg()
    cfg.OUTPUT_DIR = output_dir
    cfg.SEED = 7
    cfg.MODEL.DEVICE = "cpu"
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.MAX_ITER = 12
    cfg.SOLVER.STEPS = (8,)
    cfg.SOLVER.WARMUP_ITERS = 3
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.SOLVER.LOG_PERIOD = 5
    cfg.TEST.BEST_METRIC = ""
    for k, v in overrides.items():
        node = cfg
        parts = k.split("__")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = v
    return cfg


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    m = model.module if hasattr(model, "module") else model
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def expected_hook_events(names: list[str], num_iters: int) -> list[tuple[str, str, int]]:
    """The (hook name, event, iteration) log of hooks ``names`` (in registration order) over
    ``num_iters`` iterations from 0: every documented event, in the documented order."""
    log = [(n, "before_train", 0) for n in names]
    for it in range(num_iters):
        for ev in ("before_step", "after_backward", "after_step"):
            log += [(n, ev, it) for n in names]
    return log + [(n, "after_train", num_iters) for n in names]
