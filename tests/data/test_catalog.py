"""DatasetCatalog / MetadataCatalog behaviour."""
import pytest

from retinakit.data import DatasetCatalog, MetadataCatalog
from retinakit.data.catalog import Metadata


def test_register_get_remove():
    DatasetCatalog.register("t_cat", lambda: [{"image_id": 1}])
    try:
        assert DatasetCatalog.get("t_cat") == [{"image_id": 1}] and "t_cat" in DatasetCatalog.list()
        with pytest.raises(KeyError, match="already registered"):
            DatasetCatalog.register("t_cat", list)
        DatasetCatalog.register("t_cat", list, override=True)
        assert DatasetCatalog.get("t_cat") == []
        with pytest.raises(KeyError, match="Did you mean: t_cat"):
            DatasetCatalog.get("t_cta")
    finally:
        DatasetCatalog.remove("t_cat")
    assert "t_cat" not in DatasetCatalog


def test_metadata_lazy_once_and_conflicts():
    calls = []

    def fill(meta):
        calls.append(1)
        meta.thing_classes = ["a", "b"]

    m = Metadata("x").set_lazy(fill, ["thing_classes"])
    assert m.thing_classes == ["a", "b"] and m.thing_classes == ["a", "b"] and calls == [1]
    m.thing_classes = ["a", "b"]  # same value: fine
    with pytest.raises(AttributeError, match="refusing to change"):
        m.thing_classes = ["c"]
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = m.nope
    assert m.get("nope", 3) == 3 and m.as_dict()["thing_classes"] == ["a", "b"]
    assert MetadataCatalog.get("t_meta") is MetadataCatalog.get("t_meta")
    MetadataCatalog.remove("t_meta")
