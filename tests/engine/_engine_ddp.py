"""Worker for the DDP test: DefaultTrainer on the dummy model, results saved by rank 0."""
from __future__ import annotations

from typing import Any

import torch
from _engine_dummy import DummyDetector, SyntheticLoader
from _engine_trainer import DummyTrainer, params_of, tiny_cfg
from torch import nn

from retinakit.utils import comm


class DeterministicTrainer(DummyTrainer):
    """No dropout and no per-batch flips, so 2 x half batches == 1 x full batch."""

    @classmethod
    def build_model(cls, cfg: Any) -> nn.Module:
        torch.manual_seed(0)
        return DummyDetector(dropout=0.0)

    @classmethod
    def build_train_loader(cls, cfg: Any, start_iter: int = 0) -> Any:
        accum = cfg.SOLVER.ACCUMULATE_STEPS
        bs = cfg.SOLVER.IMS_PER_BATCH // (accum * comm.get_world_size())
        return SyntheticLoader(bs, comm.get_rank(), comm.get_world_size(), start_iter * accum, augment=False)


def train_and_save(out_dir: str, result_file: str) -> None:
    if comm.get_world_size() > 1:
        torch.set_num_threads(1)
    cfg = tiny_cfg(out_dir, SOLVER__MAX_ITER=6, SOLVER__IMS_PER_BATCH=8, SOLVER__CHECKPOINT_PERIOD=100)
    trainer = DeterministicTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values]
    if comm.is_main_process():
        torch.save({"losses": losses, "params": params_of(trainer.model), "world": comm.get_world_size()}, result_file)


class NanOnRank1Trainer(DeterministicTrainer):
    """Rank 1's loss becomes NaN at iteration 2; rank 0's stays finite."""

    @classmethod
    def build_model(cls, cfg: Any) -> nn.Module:
        torch.manual_seed(0)
        return DummyDetector(dropout=0.0, nan_at_call=2 if comm.get_rank() == 1 else -1)


def train_until_nan(out_dir: str, result_prefix: str) -> None:
    """Both ranks must stop with NonFiniteLossError at the same iteration (no hang)."""
    from retinakit.engine import NonFiniteLossError

    torch.set_num_threads(1)
    cfg = tiny_cfg(out_dir, SOLVER__MAX_ITER=6, SOLVER__IMS_PER_BATCH=8, SOLVER__CHECKPOINT_PERIOD=100)
    trainer = NanOnRank1Trainer(cfg)
    trainer.resume_or_load(resume=False)
    try:
        trainer.train()
        msg = "no error"
    except NonFiniteLossError as e:
        msg = str(e)
    with open(f"{result_prefix}.{comm.get_rank()}", "w") as f:
        f.write(msg)
