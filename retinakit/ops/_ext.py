"""Loading of the compiled extension ``retinakit._C`` and the reference-ops policy.

The compiled ops live in ``torch.ops.retinakit.*``. When the extension is missing (not
built, or built against another torch), importing retinakit still works; calling an op
raises :class:`ExtensionNotBuiltError` that says how to rebuild, unless the user allowed
the slow pure-torch reference ops explicitly:

* keyword ``allow_reference=True`` of the op wrappers (the post-processor passes
  ``MODEL.POSTPROCESSOR.ALLOW_REFERENCE_OPS``), or
* environment variable ``RETINAKIT_ALLOW_REFERENCE_OPS=1``.
"""
from __future__ import annotations

import importlib
import os

import torch

__all__ = [
    "CUDA_OPS",
    "REBUILD_HINT",
    "ExtensionNotBuiltError",
    "cuda_unavailable_reason",
    "extension_available",
    "has_cuda",
    "load_error",
    "missing_cuda_kernels",
    "reference_allowed",
]

ENV_ALLOW_REFERENCE = "RETINAKIT_ALLOW_REFERENCE_OPS"
REBUILD_HINT = (
    "Build it from the repository root with `make build`, or `pip install --no-build-isolation -e .` "
    "(or `python setup.py build_ext --inplace`), using the torch you run. To use the slow pure-torch "
    "reference ops instead, set MODEL.POSTPROCESSOR.ALLOW_REFERENCE_OPS True, pass allow_reference=True, "
    f"or set the environment variable {ENV_ALLOW_REFERENCE}=1."
)

# Ops of ``torch.ops.retinakit`` that have a CUDA kernel in ``_C/cuda/``.
CUDA_OPS = ("nms", "batched_nms", "soft_nms", "decode_detections", "multiclass_nms")

_STATE: dict = {"loaded": None, "error": None}


class ExtensionNotBuiltError(RuntimeError):
    """The compiled extension ``retinakit._C`` could not be loaded."""


def _try_load() -> bool:
    if _STATE["loaded"] is not None:
        return _STATE["loaded"]
    try:
        importlib.import_module("retinakit._C")
        # A source checkout without a built library imports ``retinakit._C`` as an empty
        # namespace package (the sources directory): check that the ops were registered.
        torch.ops.retinakit.nms.default  # noqa: B018
        ok = True
    except (ImportError, OSError, AttributeError, RuntimeError) as e:
        _STATE["error"] = f"{type(e).__name__}: {e}"
        ok = False
    _STATE["loaded"] = ok
    if ok:
        from . import fake  # noqa: F401  (registers fake kernels for torch.compile / export)
    return ok


def extension_available() -> bool:
    """True when ``torch.ops.retinakit.*`` is registered by the compiled extension."""
    return _try_load()


def load_error() -> str | None:
    """Why the extension did not load (``None`` when it did)."""
    _try_load()
    return _STATE["error"]


def missing_cuda_kernels() -> list[str]:
    """Qualified names (``retinakit::op``) of the ops of :data:`CUDA_OPS` without a CUDA kernel
    (call only once the extension is loaded: unknown ops raise)."""
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    return [f"retinakit::{op}" for op in CUDA_OPS if not has_kernel(f"retinakit::{op}", "CUDA")]


def cuda_unavailable_reason() -> str | None:
    """Why the compiled ops cannot run on CUDA here, or ``None`` when they can.

    Checks, in order: the extension is loaded, a CUDA kernel is registered for every op of
    :data:`CUDA_OPS` (an extension built without a CUDA toolkit has CPU kernels only), and
    PyTorch sees a GPU.
    """
    if not _try_load():
        return f"the compiled extension retinakit._C is not loaded ({_STATE['error']}). {REBUILD_HINT}"
    missing = missing_cuda_kernels()
    if missing:
        return (
            f"retinakit._C has no CUDA kernels for {', '.join(missing)}: it was built without CUDA. Rebuild it with a "
            "CUDA toolkit (CUDA_HOME set; FORCE_CUDA=1 when no GPU is visible at build time)."
        )
    if not torch.cuda.is_available():
        return f"the CUDA kernels are registered, but PyTorch sees no CUDA GPU (torch {torch.__version__}, CUDA {torch.version.cuda})."
    return None


def has_cuda() -> bool:
    """True when the compiled ops can run on CUDA tensors: extension loaded, CUDA kernels
    registered for every op, and a GPU visible. :func:`cuda_unavailable_reason` says why not."""
    return cuda_unavailable_reason() is None


def reference_allowed(allow_reference: bool = False) -> bool:
    """Whether the pure-torch reference ops may replace missing compiled ops."""
    return bool(allow_reference) or os.environ.get(ENV_ALLOW_REFERENCE, "0").lower() in ("1", "true", "yes")


def use_compiled(op_name: str, allow_reference: bool = False) -> bool:
    """True: call ``torch.ops.retinakit.<op_name>``; False: the caller may use the reference.

    Raises :class:`ExtensionNotBuiltError` when neither is possible.
    """
    if _try_load():
        return True
    if reference_allowed(allow_reference):
        return False
    raise ExtensionNotBuiltError(
        f"retinakit.ops.{op_name} needs the compiled extension retinakit._C, which is not available "
        f"({_STATE['error']}). {REBUILD_HINT}"
    )
