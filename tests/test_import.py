"""``import retinakit`` as a library dependency: no side effects, no optional extras, public API.

Each check runs in a fresh interpreter (a subprocess), so modules imported by other tests
cannot hide an import. The baseline is taken after ``import torch`` (torch installs its own
loggers and imports its own dependencies, which are not retinakit's doing).
"""
import importlib
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPACKAGES = ["analysis", "checkpoint", "config", "data", "engine", "evaluation", "export", "modeling", "ops", "structures", "utils"]
# Modules of the optional extras ([deploy], [dali], [tensorrt]) and heavy optional tools.
OPTIONAL = ["onnx", "onnxruntime", "onnxscript", "modelopt", "tensorrt", "nvidia.dali", "tensorboard",
            "torch.utils.tensorboard", "matplotlib", "cv2", "pycuda"]

_PROBE = r'''
import json, logging, sys, warnings

def state():
    import torch
    loggers = {name: [type(h).__name__ for h in lg.handlers]
               for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    return {
        "root_handlers": [type(h).__name__ for h in logging.getLogger().handlers],
        "root_level": logging.getLogger().level,
        "loggers": loggers,
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "default_dtype": str(torch.get_default_dtype()),
        "cudnn": [torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                  torch.backends.cudnn.allow_tf32],
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "grad_enabled": torch.is_grad_enabled(),
        "anomaly": torch.is_anomaly_enabled(),
        "modules": sorted(sys.modules),
    }

MODULES = json.loads(sys.argv[1])
pre = set(sys.modules)
first = __import__("retinakit")
after_retinakit = sorted(set(sys.modules) - pre)
import torch  # noqa: E402
before = state()
import importlib
for m in MODULES:
    importlib.import_module(m)
after = state()
print(json.dumps({"after_retinakit": after_retinakit, "before": before, "after": after}))
'''


def _probe(modules):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(modules)], check=False, cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_retinakit_imports_nothing_heavy():
    """``import retinakit`` alone loads no torch, no third-party module at all (subpackages are lazy)."""
    res = _probe([])
    new = [m for m in res["after_retinakit"] if m.split(".")[0] not in sys.stdlib_module_names]
    assert new == ["retinakit"], new
    assert "torch" not in res["after_retinakit"]


@pytest.mark.parametrize("modules", [["retinakit.modeling"], [f"retinakit.{p}" for p in SUBPACKAGES]],
                         ids=["modeling", "all-subpackages"])
def test_import_has_no_side_effects(modules):
    res = _probe(modules)
    before, after = res["before"], res["after"]
    # logging: the root logger is untouched and retinakit's loggers have no handlers of their own
    assert after["root_handlers"] == before["root_handlers"]
    assert after["root_level"] == before["root_level"]
    own = {n: h for n, h in after["loggers"].items() if n.split(".")[0] == "retinakit" and set(h) - {"NullHandler"}}
    assert own == {}, f"retinakit loggers with handlers: {own}"
    # changed handlers on loggers that existed before must come from torch's own lazy imports, never ours
    for name, handlers in after["loggers"].items():
        if name in before["loggers"] and not name.startswith("torch"):
            assert handlers == before["loggers"][name], name
    # global torch settings
    for key in ("num_threads", "num_interop_threads", "default_dtype", "cudnn", "matmul_tf32",
                "float32_matmul_precision", "deterministic", "grad_enabled", "anomaly"):
        assert after[key] == before[key], key
    # optional extras stay unimported
    imported = set(after["modules"]) - set(before["modules"])
    assert not [m for m in OPTIONAL if m in imported], sorted(m for m in OPTIONAL if m in imported)


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_every_subpackage_documents_its_public_api(name):
    """Each subpackage has ``__all__`` and every name in it exists."""
    mod = importlib.import_module(f"retinakit.{name}")
    assert hasattr(mod, "__all__"), f"retinakit.{name} has no __all__"
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert missing == [], f"retinakit.{name}.__all__ names missing attributes: {missing}"


def test_top_level_namespace():
    import retinakit

    assert set(SUBPACKAGES) <= set(retinakit.__all__)
    assert retinakit.modeling.build_model is importlib.import_module("retinakit.modeling").build_model
    assert isinstance(retinakit.__version__, str)
    with pytest.raises(AttributeError):
        retinakit.not_a_module  # noqa: B018
    assert os.path.isfile(os.path.join(os.path.dirname(retinakit.__file__), "py.typed"))
