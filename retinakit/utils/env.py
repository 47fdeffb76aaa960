"""Environment: seeding and an environment summary for logs."""
from __future__ import annotations

import os
import platform
import random
import sys

import numpy as np
import torch

__all__ = ["collect_env_info", "seed_all_rng"]


def seed_all_rng(seed: int | None = None) -> int:
    """Seed python, numpy and torch; a ``None``/negative seed draws one from the OS. Returns it."""
    if seed is None or seed < 0:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def collect_env_info() -> str:
    """A few lines describing python, torch, devices and the compiled extension."""
    lines = [
        f"python: {sys.version.split()[0]} ({platform.platform()})",
        f"torch: {torch.__version__}  threads: {torch.get_num_threads()}",
    ]
    try:
        import torchvision

        lines.append(f"torchvision: {torchvision.__version__}")
    except Exception as e:  # noqa: BLE001 - torchvision is optional here; report why it is unusable
        lines.append(f"torchvision: unavailable ({e})")
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(f"CUDA: {torch.version.cuda}  devices: {names}")
    else:
        lines.append(f"CUDA: not available; CPU cores: {os.cpu_count()}")
    try:
        import retinakit._C  # noqa: F401

        lines.append("retinakit._C: built")
    except ImportError as e:
        lines.append(f"retinakit._C: not built ({e})")
    return "\n".join(lines)
