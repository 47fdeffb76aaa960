"""Fixtures of the data tests (datasets in tmp dirs, never downloaded)."""
import pytest

from .helpers import make_coco


@pytest.fixture
def coco_dir(tmp_path):
    """``(json_path, image_root)`` of a valid 3-image dataset."""
    js = make_coco(str(tmp_path))
    return js, str(tmp_path / "img")


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    """Built-in datasets go to a per-session tmp dir, never to the user's cache."""
    monkeypatch.setenv("RETINAKIT_DATASETS", str(tmp_path_factory.getbasetemp() / "rk_datasets"))
