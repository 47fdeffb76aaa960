"""Compiled detection ops (``torch.ops.retinakit.*``) with typed wrappers.

``nms``, ``batched_nms``, ``soft_nms``, ``decode_detections`` and ``multiclass_nms`` run the
CPU or CUDA kernels of ``retinakit._C`` (picked by PyTorch's dispatcher). Their pure-torch
references live in :mod:`retinakit.ops.reference`; ONNX translations in
:mod:`retinakit.ops.onnx`. If the extension is not built, calling an op raises
:class:`ExtensionNotBuiltError` explaining how to build it, unless reference ops are allowed
(``allow_reference=True`` or ``RETINAKIT_ALLOW_REFERENCE_OPS=1``). :func:`has_cuda` tells whether
the ops can run on CUDA (kernels registered and a GPU visible); :func:`cuda_unavailable_reason`
says why not.
"""
from . import reference
from ._ext import (
    CUDA_OPS,
    ExtensionNotBuiltError,
    cuda_unavailable_reason,
    extension_available,
    has_cuda,
    load_error,
    missing_cuda_kernels,
    reference_allowed,
)
from .decode import decode_detections
from .nms import batched_nms, multiclass_nms, nms, nms_keep, soft_nms

__all__ = [
    "CUDA_OPS",
    "ExtensionNotBuiltError",
    "batched_nms",
    "cuda_unavailable_reason",
    "decode_detections",
    "extension_available",
    "has_cuda",
    "load_error",
    "missing_cuda_kernels",
    "multiclass_nms",
    "nms",
    "nms_keep",
    "reference",
    "reference_allowed",
    "soft_nms",
]

# Load the compiled library now (cheap) so torch.ops.retinakit.* and its fake kernels are
# registered for code that calls the ops directly; a missing build is reported on first use.
extension_available()
