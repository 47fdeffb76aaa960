"""Package boundaries: modeling does not import data; analysis is imported by neither; the old
``retinakit.modeling.anchor_analysis`` path is a deprecated alias of ``retinakit.analysis.anchors``."""
from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

import retinakit.analysis.anchors as anchors

ROOT = Path(__file__).resolve().parents[2]
SHIM = "retinakit.modeling.anchor_analysis"


def module_name(path: Path) -> str:
    """Dotted module name of a file under the repository root (``pkg/__init__.py`` -> ``pkg``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module that ``import`` / ``from ... import`` statements of ``path``
    name, at any depth (function bodies too); ``from pkg import name`` counts ``pkg`` and ``pkg.name``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)
    return out


def importers_of(package: str, under: str, exclude: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Modules under ``retinakit/<under>`` (except ``exclude``) that import ``package`` or a submodule of it."""
    found = {}
    for path in sorted((ROOT / "retinakit" / under).rglob("*.py")):
        name = module_name(path)
        hits = sorted(m for m in imported_modules(path) if m == package or m.startswith(package + "."))
        if hits and name not in exclude:
            found[name] = hits
    return found


def test_import_resolution_of_the_scan():
    # the scanner resolves relative imports, so it would see a data import written either way
    names = imported_modules(ROOT / "retinakit" / "modeling" / "meta_arch" / "retinanet.py")
    assert "retinakit.modeling.anchor_generator" in names and "retinakit.config" in names
    init = ROOT / "retinakit" / "analysis" / "anchors" / "__init__.py"
    assert "retinakit.analysis.anchors.coverage" in imported_modules(init)
    assert "retinakit.data.transforms" in imported_modules(ROOT / "retinakit" / "analysis" / "anchors" / "inputs.py")


def test_modeling_does_not_import_data():
    assert importers_of("retinakit.data", "modeling") == {}


def test_analysis_is_imported_by_neither_modeling_nor_data():
    assert importers_of("retinakit.analysis", "data") == {}
    assert importers_of("retinakit.analysis", "modeling", exclude=(SHIM,)) == {}
    assert set(importers_of("retinakit.analysis", "modeling")) == {SHIM}  # the deprecated alias only


def test_old_path_warns_and_reexports_the_same_objects(monkeypatch):
    monkeypatch.delitem(sys.modules, SHIM, raising=False)
    with pytest.warns(DeprecationWarning, match=r"retinakit\.analysis\.anchors"):
        old = importlib.import_module(SHIM)
    for name in [*anchors.__all__, "AnchorSetup", "best_iou_grid"]:
        assert getattr(old, name) is getattr(anchors, name), name
    assert set(old.__all__) == set(anchors.__all__)
