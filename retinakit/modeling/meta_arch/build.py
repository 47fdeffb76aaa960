"""``META_ARCH_REGISTRY`` and ``build_model``."""
from __future__ import annotations

import logging

import torch
from torch import nn

from ...config.config import CfgNode, import_custom_modules
from ...utils.registry import Registry

__all__ = ["META_ARCH_REGISTRY", "build_model", "resolve_device"]

logger = logging.getLogger(__name__)

META_ARCH_REGISTRY = Registry(
    "META_ARCH",
    doc="""Whole detectors. Entries are called as ``cls(cfg)`` and return an ``nn.Module`` whose
    ``forward(batched_inputs: list[dict])`` returns a dict of losses in training mode and
    ``list[dict(instances=Instances)]`` in eval mode (boxes in original image coordinates).
    """,
)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else as a torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_model(cfg: CfgNode) -> nn.Module:
    """Build ``cfg.MODEL.META_ARCHITECTURE`` (after importing ``CUSTOM_IMPORTS``) on ``MODEL.DEVICE``.

    Weights are not loaded here: use ``Checkpointer(model, cfg=cfg)`` (``MODEL.WEIGHTS``), which
    checks converted weights against ``cfg``.
    """
    import_custom_modules(cfg.CUSTOM_IMPORTS)
    model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    model.to(resolve_device(cfg.MODEL.DEVICE))
    return model
