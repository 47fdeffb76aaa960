"""Projects are imported as ``projects.<Name>.<pkg>``: put the repository root on sys.path
(as tools/*.py do) and keep generated datasets in a per-session tmp dir."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RETINAKIT_DATASETS", str(tmp_path_factory.getbasetemp() / "rk_datasets"))
