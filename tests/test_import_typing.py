"""mypy accepts retinakit's public API (the modules listed in mypy.ini)."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_mypy_on_public_api():
    pytest.importorskip("mypy", reason="mypy comes with the [dev] extra")
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "mypy.ini"], check=False, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
    assert "Success" in out.stdout
