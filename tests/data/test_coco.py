"""COCO loading against pycocotools, and validation messages/policies."""
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from retinakit.data import (
    DatasetCatalog,
    DatasetError,
    MetadataCatalog,
    load_coco_json,
    register_coco_instances,
)
from retinakit.data.errors import BadImageError

from .helpers import make_coco, write_image


def test_matches_pycocotools(coco_dir):
    js, root = coco_dir
    dicts = load_coco_json(js, root)
    ref = COCO(js)
    cat_ids = sorted(ref.getCatIds())
    assert len(dicts) == len(ref.getImgIds())
    for d in dicts:
        img = ref.loadImgs(d["image_id"])[0]
        assert d["file_name"] == os.path.join(root, img["file_name"])
        assert (d["height"], d["width"]) == (img["height"], img["width"])
        anns = ref.loadAnns(ref.getAnnIds(imgIds=d["image_id"]))
        assert [a["id"] for a in d["annotations"]] == [a["id"] for a in anns]
        for mine, theirs in zip(d["annotations"], anns):
            x, y, w, h = theirs["bbox"]
            np.testing.assert_allclose(mine["bbox"], [x, y, x + w, y + h], rtol=1e-6)
            assert cat_ids[mine["category_id"]] == theirs["category_id"]
            assert mine["iscrowd"] == theirs["iscrowd"]


def test_register_metadata_is_lazy_and_maps_ids(coco_dir):
    js, root = coco_dir
    register_coco_instances("t_lazy", {"extra": 1}, js, root)
    try:
        meta = MetadataCatalog.get("t_lazy")
        assert (meta.json_file, meta.image_root, meta.evaluator_type, meta.extra) == (js, root, "coco", 1)
        assert meta.thing_classes == ["c3", "c7", "c11"]
        assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 11: 2}
        assert meta.thing_contiguous_id_to_dataset_id == {0: 3, 1: 7, 2: 11}
        assert len(DatasetCatalog.get("t_lazy")) == 3
    finally:
        DatasetCatalog.remove("t_lazy")
        MetadataCatalog.remove("t_lazy")


def test_only_required_keys(tmp_path):
    """width/height/area/iscrowd/name optional: sizes come from the file header."""

    def strip(d):
        for im in d["images"]:
            del im["width"], im["height"]
        for a in d["annotations"]:
            del a["area"], a["iscrowd"]
        for c in d["categories"]:
            del c["name"]

    js = make_coco(str(tmp_path), mutate=strip)
    dicts = load_coco_json(js, str(tmp_path / "img"), check_image_files=False)
    assert [(d["height"], d["width"]) for d in dicts] == [(40, 60), (50, 30), (32, 32)]
    assert all(a["iscrowd"] == 0 for d in dicts for a in d["annotations"])


def test_boxes_clipped_and_negatives_kept(tmp_path):
    def edit(d):
        d["annotations"] = [{"id": 1, "image_id": 100, "category_id": 3, "bbox": [-5, 30, 20, 20]}]

    dicts = load_coco_json(make_coco(str(tmp_path), mutate=edit), str(tmp_path / "img"))
    assert dicts[0]["annotations"][0]["bbox"] == [0.0, 30.0, 15.0, 40.0]
    assert [len(d["annotations"]) for d in dicts] == [1, 0, 0]  # images without boxes kept


def _mutations():
    def ann(**kw):
        def f(d):
            d["annotations"][0].update(kw)
        return f

    def dup_ann(d):
        d["annotations"][1]["id"] = d["annotations"][0]["id"]

    def dup_img(d):
        d["images"][1]["id"] = d["images"][0]["id"]

    def del_key(k):
        return lambda d: d.pop(k)

    return [
        ("missing images", del_key("images"), "missing top-level key", None),
        ("missing categories", del_key("categories"), "missing top-level key", None),
        ("dup image", dup_img, "duplicate image id 100", None),
        ("dup ann", dup_ann, "duplicate annotation id", "annotation id 1"),
        ("unknown image", ann(image_id=999), "not in 'images'", "annotation id 1"),
        ("unknown category", ann(category_id=5), "category_id 5", "annotation id 1"),
        ("nan", ann(bbox=[1, 2, float("nan"), 3]), "NaN", "annotation id 1"),
        ("string", ann(bbox=[1, "2", 3, 3]), "non-numeric", "annotation id 1"),
        ("negative", ann(bbox=[1, 2, -3, 3]), "negative width", "annotation id 1"),
        ("zero", ann(bbox=[1, 2, 0, 3]), "zero width", "annotation id 1"),
        ("outside", ann(bbox=[500, 2, 10, 3]), "entirely outside", "annotation id 1"),
        ("short bbox", ann(bbox=[1, 2, 3]), "list of 4 numbers", "annotation id 1"),
        ("missing bbox", lambda d: d["annotations"][0].pop("bbox"), "lacks the required key", None),
        ("iscrowd", ann(iscrowd=2), "'iscrowd' 2", "annotation id 1"),
    ]


@pytest.mark.parametrize("name,mutate,expected,where", _mutations(), ids=[m[0] for m in _mutations()])
def test_bad_json_message(tmp_path, name, mutate, expected, where):
    js = make_coco(str(tmp_path), mutate=mutate)
    with pytest.raises(DatasetError) as e:
        load_coco_json(js, str(tmp_path / "img"))
    msg = str(e.value)
    assert js in msg and expected in msg
    if where:
        assert where in msg and "image id" in msg and "ON_BAD_ANNOTATION skip" in msg


@pytest.mark.parametrize("name,mutate,expected,where", [m for m in _mutations() if m[3]], ids=[m[0] for m in _mutations() if m[3]])
def test_skip_policy_drops_and_summarises(tmp_path, caplog, name, mutate, expected, where):
    js = make_coco(str(tmp_path), mutate=mutate)
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(js, str(tmp_path / "img"), on_bad_annotation="skip")
    assert sum(len(d["annotations"]) for d in dicts) == 8  # 9 boxes, 1 bad
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and "skipped 1 annotations" in lines[0] and expected in lines[0]


def test_not_json_and_missing_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"images": [')
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_coco_json(str(p), str(tmp_path))
    with pytest.raises(DatasetError, match="does not exist"):
        load_coco_json(str(tmp_path / "nope.json"), str(tmp_path))


def test_image_size_disagrees_with_file(tmp_path):
    js = make_coco(str(tmp_path), mutate=lambda d: d["images"][1].update(width=31))
    with pytest.raises(BadImageError, match=r"image id 101 .*30x50 .*on disk.*31x50"):
        load_coco_json(js, str(tmp_path / "img"))
    dicts = load_coco_json(js, str(tmp_path / "img"), on_bad_image="skip")
    assert [d["image_id"] for d in dicts] == [100, 102]


def test_missing_and_corrupt_image_files(tmp_path, caplog):
    js = make_coco(str(tmp_path))
    os.remove(tmp_path / "img" / "im0.png")
    (tmp_path / "img" / "im1.png").write_bytes(b"not an image")
    with pytest.raises(BadImageError, match=r"im0\.png.*does not exist"):
        load_coco_json(js, str(tmp_path / "img"))
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(js, str(tmp_path / "img"), on_bad_image="skip")
    assert [d["image_id"] for d in dicts] == [102]
    assert any("skipped 2 images" in r.getMessage() and "with their 6 annotations" in r.getMessage() for r in caplog.records)


def test_bad_policy_value(coco_dir):
    with pytest.raises(ValueError, match="ON_BAD_ANNOTATION"):
        load_coco_json(*coco_dir, on_bad_annotation="ignore")


def test_string_ids_and_large_file(tmp_path):
    """Any hashable id type COCO tools accept for images (str) loads; 2k boxes load fast."""
    def edit(d):
        for im in d["images"]:
            im["id"] = f"img-{im['id']}"
        for a in d["annotations"]:
            a["image_id"] = f"img-{a['image_id']}"

    js = make_coco(str(tmp_path), boxes_per_image=700, mutate=edit)
    dicts = load_coco_json(js, str(tmp_path / "img"))
    assert dicts[0]["image_id"] == "img-100" and sum(len(d["annotations"]) for d in dicts) == 2100
    write_image(str(tmp_path / "unused.png"), 4, 4)
    assert json.loads(Path(js).read_text())["images"][0]["id"] == "img-100"
