"""Session-wide test settings: nothing is written to the user's cache folders."""
import pytest


@pytest.fixture(autouse=True)
def _dataset_records_cache(tmp_path_factory, monkeypatch):
    """The validated-records cache of COCO datasets (DATASETS.CACHE_DIR "") goes to a tmp dir."""
    monkeypatch.setenv("RETINAKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rk_records_cache"))
