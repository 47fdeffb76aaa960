"""docs/configs.md lists every key of get_cfg() with its meaning, and is current."""
import os
import subprocess
import sys
from pathlib import Path

from retinakit.config.defaults import _C

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _keys(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_every_key_is_documented_with_a_meaning():
    """retinakit's own keys (``_C``); keys that imported packages add with register_config_extension
    (projects/ResNet10, a user's package) are documented by those packages, and whether one was
    imported earlier in the test session must not change the outcome."""
    text = Path(ROOT, "docs", "configs.md").read_text(encoding="utf-8")
    rows = {line.split("`")[1]: line for line in text.splitlines() if line.startswith("| `")}
    missing = [k for k in _keys(_C) if k not in rows]
    assert not missing, f"not in docs/configs.md (run tools/gen_config_docs.py): {missing}"
    undocumented = [k for k, line in rows.items() if line.rstrip().endswith("|  |")]
    assert not undocumented, f"keys without a comment in retinakit/config/defaults: {undocumented}"


def test_generated_file_is_current():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_config_docs.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
