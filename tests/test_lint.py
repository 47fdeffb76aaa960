"""ruff finds nothing in the code base (the check of `make lint`, configured by ruff.toml)."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ["retinakit", "tools", "tests", "projects"]


def test_ruff_is_clean():
    pytest.importorskip("ruff", reason="ruff comes with the [dev] extra")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *PATHS], check=False, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
