"""retinakit: a registry-based RetinaNet library.

``import retinakit`` has no side effects: it installs no logging handlers, changes no
global torch setting and imports no optional extra. Subpackages load on first use::

    import retinakit
    cfg = retinakit.config.get_cfg()
    model = retinakit.modeling.build_model(cfg)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "analysis",
    "checkpoint",
    "config",
    "data",
    "engine",
    "evaluation",
    "export",
    "modeling",
    "ops",
    "structures",
    "utils",
]
# Subpackages are imported on first attribute access (``retinakit.modeling``), not here.
_SUBPACKAGES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'retinakit' has no attribute '{name}'")


def __dir__() -> list:
    return sorted(__all__)
