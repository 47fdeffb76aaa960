"""Without the compiled extension: clear error with rebuild instructions, or the documented opt-in."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from retinakit import ops
from retinakit.ops import _ext


@pytest.fixture
def missing(monkeypatch):
    monkeypatch.setitem(_ext._STATE, "loaded", False)
    monkeypatch.setitem(_ext._STATE, "error", "ImportError: simulated")
    monkeypatch.delenv(_ext.ENV_ALLOW_REFERENCE, raising=False)


def test_error_says_how_to_rebuild(missing):
    with pytest.raises(ops.ExtensionNotBuiltError, match="make build") as e:
        ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5)
    assert "pip install --no-build-isolation -e ." in str(e.value)
    assert "ALLOW_REFERENCE_OPS" in str(e.value) and "simulated" in str(e.value)


def test_opt_in_by_kwarg_and_env(missing, monkeypatch):
    b = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10.0]])
    assert ops.nms(b, torch.tensor([0.9, 0.8]), 0.5, allow_reference=True).tolist() == [0]
    monkeypatch.setenv(_ext.ENV_ALLOW_REFERENCE, "1")
    assert ops.batched_nms(b, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5).tolist() == [0, 1]


def test_postprocessor_opt_in(missing):
    from retinakit.modeling.postprocess import RetinaNetPostProcessor

    class Coder:
        def fused_decode_params(self):
            return (1.0, 1.0, 1.0, 1.0), 4.0

    cls = [torch.full((1, 2, 2, 2), 3.0)]
    box = [torch.zeros(1, 4, 2, 2)]
    anc = [torch.tensor([[0, 0, 8, 8.0]]).repeat(4, 1)]
    with pytest.raises(ops.ExtensionNotBuiltError):
        RetinaNetPostProcessor(box_coder=Coder())(cls, box, anc, [(16, 16)])
    (inst,) = RetinaNetPostProcessor(box_coder=Coder(), allow_reference_ops=True)(cls, box, anc, [(16, 16)])
    assert len(inst) == 2  # 4 identical boxes per class -> one per class


def test_import_without_extension_in_subprocess(tmp_path):
    """A checkout without the built library imports; the ops report how to build."""
    code = (
        "import sys, importlib.machinery as m; "
        "sys.meta_path.insert(0, type('B', (), {'find_spec': staticmethod(lambda n, p=None, t=None: "
        "(_ for _ in ()).throw(ImportError('blocked')) if n == 'retinakit._C' else None)})); "
        "import retinakit, retinakit.ops as o, retinakit.modeling.postprocess; "
        "print(o.extension_available(), 'blocked' in o.load_error())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False True"
