"""Optional dependencies of the export package, with one clear message when missing."""
from __future__ import annotations

import importlib
from types import ModuleType

from ..utils.errors import UserInputError

__all__ = ["MissingDependencyError", "require"]

_EXTRA_OF = {
    "onnx": "deploy",
    "onnxruntime": "deploy",
    "onnxscript": "deploy",
    "modelopt": "deploy",
    "onnx_graphsurgeon": "deploy",
    "tensorrt": "tensorrt",
    "cuda": "tensorrt",
    "cuda.bindings": "tensorrt",
    "cuda.bindings.runtime": "tensorrt",
}


class MissingDependencyError(ImportError, UserInputError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = _EXTRA_OF.get(module, _EXTRA_OF.get(module.split(".")[0], "deploy"))
        what = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"'{module}' is needed{what} but is not installed ({e}). Install it with: pip install retinakit[{extra}]"
        ) from None
