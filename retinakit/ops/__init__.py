"""Compiled detection ops (``torch.ops.retinakit.*``) with typed wrappers.

``nms``, ``batched_nms``, ``soft_nms``, ``decode_detections`` and ``multiclass_nms`` run the
CPU or CUDA kernels of ``retinakit._C`` (picked by PyTorch's dispatcher). Their pure-torch
references live in :mod:`retinakit.ops.reference`; ONNX translations in
:mod:`retinakit.ops.onnx`. If the extension is not built, calling an op raises
:class:`ExtensionNotBuiltError` explaining how to build it, unless reference ops are allowed
(``allow_reference=True`` or ``RETINAKIT_ALLOW_REFERENCE_OPS=1``).
"""
from . import reference
from ._ext import (
    ExtensionNotBuiltError,
    extension_available,
    load_error,
    reference_allowed,
)
from .decode import decode_detections
from .nms import batched_nms, multiclass_nms, nms, soft_nms

__all__ = [
    "ExtensionNotBuiltError",
    "batched_nms",
    "decode_detections",
    "extension_available",
    "load_error",
    "multiclass_nms",
    "nms",
    "reference",
    "reference_allowed",
    "soft_nms",
]

# Load the compiled library now (cheap) so torch.ops.retinakit.* and its fake kernels are
# registered for code that calls the ops directly; a missing build is reported on first use.
extension_available()
