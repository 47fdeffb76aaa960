"""Every ```python block of docs/custom_components.md runs as written (each in a fresh namespace)."""
from __future__ import annotations

import os
import re

import pytest

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs", "custom_components.md")


def python_blocks(path: str) -> list[tuple[str, str]]:
    """``(section title, code)`` of each fenced python block."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out, section = [], "intro"
    for m in re.finditer(r"^## ([^\n]+)$|^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL):
        if m.group(1):
            section = m.group(1).strip()
        else:
            out.append((section, m.group(2)))
    return out


BLOCKS = python_blocks(DOC)


def test_doc_has_a_snippet_per_component_kind():
    sections = list(dict.fromkeys(s for s, _ in BLOCKS))  # in order; a section may have several
    assert sections == ["Backbone", "Anchor generator", "Loss", "Post-processor", "Hook"]


@pytest.mark.parametrize("section,code", BLOCKS, ids=[s for s, _ in BLOCKS])
def test_snippet_runs(section, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETINAKIT_DATASETS", str(tmp_path / "datasets"))
    exec(compile(code, f"{DOC}:{section}", "exec"), {"__name__": f"docs_snippet_{section}"})  # exec: running the docs is the point
