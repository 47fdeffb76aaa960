"""Optimizer and LR schedule built from ``SOLVER.*``.

LR scaling rule: ``SOLVER.BASE_LR`` is the LR for the global batch
``SOLVER.IMS_PER_BATCH``. When you change the batch, scale the LR linearly
(batch x k -> LR x k) and the schedule (MAX_ITER, STEPS, WARMUP_ITERS, periods) by 1/k;
:func:`auto_scale_workers` does this for you when ``SOLVER.REFERENCE_WORLD_SIZE`` is set
and the run uses a different number of processes. Gradient accumulation counts as batch:
``IMS_PER_BATCH`` is the effective batch of one optimizer step.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..config import ConfigError

__all__ = ["WarmupLRScheduler", "auto_scale_workers", "build_lr_scheduler", "build_optimizer"]

logger = logging.getLogger(__name__)

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def _param_groups(model: nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """One group per (weight decay) value: norm-layer params and biases may use their own."""
    wd, wd_norm, wd_bias = cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.WEIGHT_DECAY_NORM, cfg.SOLVER.WEIGHT_DECAY_BIAS
    groups: dict[float, list[nn.Parameter]] = {}
    seen = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            decay = wd_norm if is_norm else (wd_bias if name == "bias" else wd)
            groups.setdefault(decay, []).append(p)
    return [{"params": ps, "weight_decay": d} for d, ps in groups.items()]


def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW according to ``SOLVER.OPTIMIZER``."""
    groups = _param_groups(model, cfg)
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        return torch.optim.SGD(
            groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV
        )
    if name == "ADAMW":
        return torch.optim.AdamW(groups, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS))

    raise ConfigError(f"SOLVER.OPTIMIZER must be 'SGD' or 'AdamW', got {cfg.SOLVER.OPTIMIZER!r}.")


class WarmupLRScheduler:
    """LR = base LR x warmup(it) x schedule(it), a pure function of the iteration.

    ``name``: ``"WarmupMultiStepLR"`` (x ``gamma`` at each of ``steps``) or
    ``"WarmupCosineLR"`` (half cosine from 1 to ``end_factor`` over ``max_iter``).
    Warmup over ``warmup_iters``: ``"linear"`` ramps from ``warmup_factor`` to 1,
    ``"constant"`` holds ``warmup_factor``. Call :meth:`step` after each optimizer step.
    The state is plain numbers, so checkpoints load with ``weights_only=True``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        name: str,
        max_iter: int,
        steps: Sequence[int] = (),
        gamma: float = 0.1,
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
        warmup_method: str = "linear",
        end_factor: float = 0.0,
    ) -> None:
        if name not in ("WarmupMultiStepLR", "WarmupCosineLR"):
            raise ValueError(f"Unknown LR scheduler {name!r}; use WarmupMultiStepLR or WarmupCosineLR.")
        if warmup_method not in ("linear", "constant"):
            raise ConfigError(f"SOLVER.WARMUP_METHOD must be 'linear' or 'constant', got {warmup_method!r}")
        if list(steps) != sorted(steps):
            raise ConfigError(f"SOLVER.STEPS must be increasing, got {list(steps)}")
        self.optimizer = optimizer
        self.name, self.max_iter, self.steps, self.gamma = name, max_iter, list(steps), gamma
        self.warmup_iters, self.warmup_factor, self.warmup_method = warmup_iters, warmup_factor, warmup_method
        self.end_factor = end_factor
        self.base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self.last_iter = 0
        self._apply()

    def factor(self, it: int) -> float:
        """Multiplier of the base LR at iteration ``it``."""
        if self.name == "WarmupMultiStepLR":
            f = self.gamma ** sum(1 for s in self.steps if it >= s)
        else:
            t = min(it, self.max_iter) / max(self.max_iter, 1)
            f = self.end_factor + (1 - self.end_factor) * 0.5 * (1 + math.cos(math.pi * t))
        if it < self.warmup_iters:
            if self.warmup_method == "linear":
                alpha = it / self.warmup_iters
                f *= self.warmup_factor * (1 - alpha) + alpha
            else:
                f *= self.warmup_factor
        return f

    def _apply(self) -> None:
        f = self.factor(self.last_iter)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f

    def step(self) -> None:
        self.last_iter += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_iter": self.last_iter, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.last_iter = int(state["last_iter"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self._apply()


def build_lr_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> WarmupLRScheduler:
    s = cfg.SOLVER
    steps = [x for x in s.STEPS if x <= s.MAX_ITER]
    if len(steps) != len(s.STEPS):
        logger.warning(f"SOLVER.STEPS {list(s.STEPS)} has steps after SOLVER.MAX_ITER {s.MAX_ITER}; ignoring them.")
    return WarmupLRScheduler(
        optimizer,
        s.LR_SCHEDULER_NAME,
        s.MAX_ITER,
        steps=steps,
        gamma=s.GAMMA,
        warmup_iters=s.WARMUP_ITERS,
        warmup_factor=s.WARMUP_FACTOR,
        warmup_method=s.WARMUP_METHOD,
        end_factor=s.BASE_LR_END / s.BASE_LR if s.BASE_LR else 0.0,
    )


def auto_scale_workers(cfg: Any, num_workers: int) -> Any:
    """Return a copy of ``cfg`` scaled from SOLVER.REFERENCE_WORLD_SIZE to ``num_workers``.

    Linear scaling: IMS_PER_BATCH and BASE_LR x k; MAX_ITER, STEPS, WARMUP_ITERS,
    CHECKPOINT_PERIOD and TEST.EVAL_PERIOD / k, with k = num_workers / reference.
    No change when REFERENCE_WORLD_SIZE is 0 or equals ``num_workers``.
    """
    ref = cfg.SOLVER.REFERENCE_WORLD_SIZE
    if ref == 0 or ref == num_workers:
        return cfg
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    k = num_workers / ref
    bs = round(cfg.SOLVER.IMS_PER_BATCH * k)
    if abs(bs - cfg.SOLVER.IMS_PER_BATCH * k) > 1e-6:

        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} cannot be scaled from REFERENCE_WORLD_SIZE "
            f"{ref} to {num_workers} processes without a fractional batch."
        )
    cfg.SOLVER.IMS_PER_BATCH = bs
    cfg.SOLVER.BASE_LR *= k
    cfg.SOLVER.MAX_ITER = round(cfg.SOLVER.MAX_ITER / k)
    cfg.SOLVER.WARMUP_ITERS = round(cfg.SOLVER.WARMUP_ITERS / k)
    cfg.SOLVER.STEPS = tuple(round(s / k) for s in cfg.SOLVER.STEPS)
    cfg.SOLVER.CHECKPOINT_PERIOD = max(round(cfg.SOLVER.CHECKPOINT_PERIOD / k), 1)
    cfg.TEST.EVAL_PERIOD = round(cfg.TEST.EVAL_PERIOD / k)
    cfg.SOLVER.REFERENCE_WORLD_SIZE = num_workers
    logger.info(
        f"Auto-scaled the config from {ref} to {num_workers} processes: IMS_PER_BATCH={bs}, "
        f"BASE_LR={cfg.SOLVER.BASE_LR}, MAX_ITER={cfg.SOLVER.MAX_ITER}."
    )
    if frozen:
        cfg.freeze()
    return cfg
