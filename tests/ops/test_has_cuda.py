"""retinakit.ops.has_cuda: true only with the extension loaded, CUDA kernels registered and a GPU."""
from __future__ import annotations

import pytest
import torch

from retinakit import ops
from retinakit.ops import _ext

needs_ext = pytest.mark.skipif(not ops.extension_available(), reason=f"retinakit._C not built: {ops.load_error()}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_false_without_gpu_with_a_reason():
    assert ops.has_cuda() is False
    reason = ops.cuda_unavailable_reason()
    assert isinstance(reason, str) and ("GPU" in reason or "retinakit._C" in reason)


@needs_ext
def test_true_when_kernels_registered_and_gpu_visible(monkeypatch):
    if ops.missing_cuda_kernels():
        pytest.skip(f"extension built without CUDA kernels: {ops.missing_cuda_kernels()}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ops.has_cuda() is True and ops.cuda_unavailable_reason() is None


@needs_ext
def test_false_when_an_op_has_no_cuda_kernel_even_with_a_gpu(monkeypatch):
    """A GPU is not enough: every op of CUDA_OPS needs a registered CUDA kernel."""
    lib = torch.library.Library("retinakit", "FRAGMENT")
    lib.define("_has_cuda_probe(Tensor x) -> Tensor")
    lib.impl("_has_cuda_probe", lambda x: x.clone(), "CPU")
    try:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(_ext, "CUDA_OPS", (*_ext.CUDA_OPS, "_has_cuda_probe"))
        assert "retinakit::_has_cuda_probe" in ops.missing_cuda_kernels()
        assert ops.has_cuda() is False
        assert "retinakit::_has_cuda_probe" in ops.cuda_unavailable_reason()
    finally:
        lib._destroy()


def test_reason_when_extension_missing(monkeypatch):
    monkeypatch.setitem(_ext._STATE, "loaded", False)
    monkeypatch.setitem(_ext._STATE, "error", "ImportError: test")
    assert ops.has_cuda() is False
    assert "retinakit._C is not loaded" in ops.cuda_unavailable_reason()
