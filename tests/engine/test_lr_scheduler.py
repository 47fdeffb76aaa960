"""LR schedules against their closed-form definitions, and the LR/batch scaling rule."""
from __future__ import annotations

import math

import pytest
import torch

from retinakit.config import get_cfg
from retinakit.engine.solver import (
    WarmupLRScheduler,
    auto_scale_workers,
    build_lr_scheduler,
    build_optimizer,
)


def _opt(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(sched, n):
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        sched.step()
    return out


def test_multistep_with_linear_warmup():
    s = WarmupLRScheduler(_opt(0.1), "WarmupMultiStepLR", 30, steps=[10, 20], gamma=0.1, warmup_iters=5, warmup_factor=0.01)
    got = _lrs(s, 30)
    for it, lr in enumerate(got):
        f = 0.1 ** ((it >= 10) + (it >= 20))
        if it < 5:
            a = it / 5
            f *= 0.01 * (1 - a) + a
        assert lr == pytest.approx(0.1 * f)


def test_cosine_with_constant_warmup():
    s = WarmupLRScheduler(_opt(0.2), "WarmupCosineLR", 40, warmup_iters=4, warmup_factor=0.1, warmup_method="constant", end_factor=0.05)
    got = _lrs(s, 41)
    for it, lr in enumerate(got):
        ref = 0.2 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * it / 40)))
        assert lr == pytest.approx(ref * (0.1 if it < 4 else 1.0))
    assert got[-1] == pytest.approx(0.2 * 0.05)


def test_state_round_trip():
    a = WarmupLRScheduler(_opt(), "WarmupMultiStepLR", 30, steps=[3], warmup_iters=2)
    _lrs(a, 5)
    o = _opt()
    b = WarmupLRScheduler(o, "WarmupMultiStepLR", 30, steps=[3], warmup_iters=2)
    b.load_state_dict(a.state_dict())
    assert b.get_last_lr() == a.get_last_lr() and o.param_groups[0]["lr"] == a.get_last_lr()[0]


def test_build_from_cfg_and_auto_scale():
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER = 0.01, 16, 1000
    cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.REFERENCE_WORLD_SIZE = (600, 800), 100, 8
    scaled = auto_scale_workers(cfg, 4)
    assert scaled.SOLVER.IMS_PER_BATCH == 8 and scaled.SOLVER.BASE_LR == pytest.approx(0.005)
    assert scaled.SOLVER.MAX_ITER == 2000 and tuple(scaled.SOLVER.STEPS) == (1200, 1600)
    assert scaled.SOLVER.WARMUP_ITERS == 200
    assert auto_scale_workers(cfg, 8) is cfg
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = build_optimizer(cfg, model)
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 1e-4]  # BN params: WEIGHT_DECAY_NORM
    sched = build_lr_scheduler(cfg, opt)
    assert sched.get_last_lr()[0] == pytest.approx(0.01 * cfg.SOLVER.WARMUP_FACTOR)
