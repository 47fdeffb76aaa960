"""COCO fast path == reference path, and the validated-records cache (hit, miss, stale, corrupt)."""
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from retinakit.data import DatasetError, load_coco_json
from retinakit.data import coco as coco_mod
from retinakit.data.records_cache import entry_path, write_entry
from retinakit.data.serialize import SerializedList

from .helpers import make_coco, write_image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
from benchmarks.coco_gen import write_coco_like


@pytest.fixture(scope="module")
def coco_like(tmp_path_factory):
    """A generated COCO-like file: 300 images (hard-linked JPEGs), 2000 boxes, segmentations."""
    return write_coco_like(str(tmp_path_factory.mktemp("coco_like")), 300, 2000)


def _reference(monkeypatch, *args, **kwargs):
    """load_coco_json through the entry-by-entry reference path (fast parser and JPEG reader off)."""
    with monkeypatch.context() as m:
        m.setattr(coco_mod, "parse_fast", lambda raw: None)
        m.setattr(coco_mod, "jpeg_size", lambda path: None)
        return load_coco_json(*args, **kwargs)


def _count_validations(monkeypatch):
    calls = []
    real = coco_mod._validate

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(coco_mod, "_validate", counted)
    return calls


def test_fast_path_equals_reference(coco_like, monkeypatch):
    js, root = coco_like
    fast = load_coco_json(js, root)
    assert fast == _reference(monkeypatch, js, root)
    assert sum(len(d["annotations"]) for d in fast) == 2000
    assert all(isinstance(v, float) for d in fast for a in d["annotations"] for v in a["bbox"])


@pytest.mark.parametrize("problem", ["nan", "string_id", "bad_box", "unknown_category", "dropped_image"])
def test_problem_files_take_reference_path_with_same_result(tmp_path, monkeypatch, problem):
    """A file the fast checks reject is loaded entry by entry: same dicts and counts ("skip")."""

    def mutate(d):
        if problem == "nan":
            d["annotations"][0]["bbox"][2] = float("nan")
        elif problem == "string_id":
            d["annotations"][1]["id"] = "a1"
        elif problem == "bad_box":
            d["annotations"][2]["bbox"] = [1, 1, 0, 3]
        elif problem == "unknown_category":
            d["annotations"][3]["category_id"] = 999
        else:
            d["images"][0]["width"] = 61  # disagrees with the file: the image is dropped (skip)

    js = make_coco(str(tmp_path), mutate=mutate)
    root = str(tmp_path / "img")
    kw = {"on_bad_annotation": "skip", "on_bad_image": "skip"}
    got = load_coco_json(js, root, **kw)
    assert got == _reference(monkeypatch, js, root, **kw)
    if problem == "string_id":  # valid, but not of the fast path's types
        assert load_coco_json(js, root) == got and any(a["id"] == "a1" for d in got for a in d["annotations"])
    else:
        with pytest.raises(DatasetError):
            load_coco_json(js, root)


def test_cache_hit_returns_same_dicts_without_validating(coco_like, tmp_path, monkeypatch):
    js, root = coco_like
    cache = str(tmp_path / "cache")
    calls = _count_validations(monkeypatch)
    first = load_coco_json(js, root, "cached_ds", cache_dir=cache)
    assert len(calls) == 1 and len(os.listdir(cache)) == 1
    second = load_coco_json(js, root, "cached_ds", cache_dir=cache)
    assert len(calls) == 1
    records = load_coco_json(js, root, cache_dir=cache, serialized=True)
    assert isinstance(records, SerializedList) and records.codec == "json" and list(records) == first
    assert len(calls) == 1
    assert second == first == load_coco_json(js, root)  # no cache: validated again
    assert len(calls) == 2


def test_cache_keyed_by_options(coco_like, tmp_path, monkeypatch):
    js, root = coco_like
    cache = str(tmp_path / "cache")
    calls = _count_validations(monkeypatch)
    load_coco_json(js, root, cache_dir=cache)
    load_coco_json(js, root, cache_dir=cache, check_image_files=False)
    load_coco_json(js, root, cache_dir=cache, on_bad_image="skip")
    assert len(calls) == 3 and len(os.listdir(cache)) == 3


def test_changed_json_makes_entry_stale(tmp_path, monkeypatch, caplog):
    js = make_coco(str(tmp_path))
    root, cache = str(tmp_path / "img"), str(tmp_path / "cache")
    calls = _count_validations(monkeypatch)
    before = load_coco_json(js, root, cache_dir=cache)
    make_coco(str(tmp_path), boxes_per_image=2)  # rewrites ann.json: fewer boxes
    os.utime(js, ns=(os.stat(js).st_atime_ns, os.stat(js).st_mtime_ns + 10**9))  # a new mtime even on coarse clocks
    with caplog.at_level(logging.INFO, logger="retinakit.data.records_cache"):
        after = load_coco_json(js, root, cache_dir=cache)
    assert len(calls) == 2 and "is stale" in caplog.text and "changed since" in caplog.text
    assert sum(len(d["annotations"]) for d in before) == 9 and sum(len(d["annotations"]) for d in after) == 6
    assert load_coco_json(js, root, cache_dir=cache) == after and len(calls) == 2


def test_changed_image_makes_entry_stale(tmp_path, monkeypatch, caplog):
    js = make_coco(str(tmp_path))
    root, cache = str(tmp_path / "img"), str(tmp_path / "cache")
    calls = _count_validations(monkeypatch)
    load_coco_json(js, root, cache_dir=cache, on_bad_image="skip")
    write_image(os.path.join(root, "im1.png"), 44, 30)  # now disagrees with the JSON's 50x30
    os.utime(os.path.join(root, "im1.png"), ns=(0, os.stat(os.path.join(root, "im1.png")).st_mtime_ns + 10**9))
    with caplog.at_level(logging.INFO):
        after = load_coco_json(js, root, cache_dir=cache, on_bad_image="skip")
    assert len(calls) == 2 and "an image file changed" in caplog.text
    assert [d["image_id"] for d in after] == [100, 102]
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the hit repeats the skip summary
        assert load_coco_json(js, root, cache_dir=cache, on_bad_image="skip") == after
    assert len(calls) == 2 and "skipped 1 images" in caplog.text and "from the dataset cache" in caplog.text
    os.remove(os.path.join(root, "im2.png"))
    assert [d["image_id"] for d in load_coco_json(js, root, cache_dir=cache, on_bad_image="skip")] == [100]
    assert len(calls) == 3


def test_image_changed_while_probed_makes_entry_stale(tmp_path, monkeypatch, caplog):
    """The fingerprint is taken before the headers are read: a file rewritten right after its
    probe leaves an entry that the next load finds stale (not a cached, outdated size)."""
    js = make_coco(str(tmp_path))
    root, cache = str(tmp_path / "img"), str(tmp_path / "cache")
    target, real = os.path.join(root, "im1.png"), coco_mod.image_size

    def probe_then_rewrite(path, *args, **kwargs):
        size = real(path, *args, **kwargs)
        if path == target and not os.path.exists(target + ".done"):
            open(target + ".done", "w").close()
            write_image(target, 44, 30)  # now disagrees with the JSON's 50x30
            os.utime(target, ns=(0, os.stat(target).st_mtime_ns + 10**9))
        return size

    monkeypatch.setattr(coco_mod, "image_size", probe_then_rewrite)
    calls = _count_validations(monkeypatch)
    first = load_coco_json(js, root, cache_dir=cache, on_bad_image="skip", check_image_files=True)
    assert 101 in [d["image_id"] for d in first]  # probed before the rewrite
    with caplog.at_level(logging.INFO):
        after = load_coco_json(js, root, cache_dir=cache, on_bad_image="skip", check_image_files=True)
    assert len(calls) == 2 and "an image file changed" in caplog.text
    assert [d["image_id"] for d in after] == [100, 102]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bad_buffers"])
def test_corrupt_entry_is_ignored_and_rewritten(tmp_path, monkeypatch, caplog, damage):
    js = make_coco(str(tmp_path))
    root, cache = str(tmp_path / "img"), str(tmp_path / "cache")
    calls = _count_validations(monkeypatch)
    good = load_coco_json(js, root, cache_dir=cache)
    (path,) = [os.path.join(cache, f) for f in os.listdir(cache)]
    if damage == "garbage":
        Path(path).write_bytes(b"not a cache file")
    elif damage == "truncated":
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
    else:  # a valid npz whose offsets do not fit its data
        with np.load(path) as z:
            meta = z["meta"].copy()
        np.savez(path[:-4], data=np.zeros(3, np.uint8), ends=np.array([5], np.int64), meta=meta)
    with caplog.at_level(logging.WARNING):
        assert load_coco_json(js, root, cache_dir=cache) == good
    assert len(calls) == 2 and "is unreadable" in caplog.text
    assert load_coco_json(js, root, cache_dir=cache) == good and len(calls) == 2  # rewritten


def test_unwritable_cache_dir_warns_and_loads(tmp_path, caplog):
    js = make_coco(str(tmp_path))
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(js, str(tmp_path / "img"), cache_dir=str(blocker / "cache"))
    assert len(dicts) == 3 and "Cannot write the dataset cache" in caplog.text


def test_write_is_atomic(tmp_path, monkeypatch):
    """A failed write leaves neither a partial entry nor its temporary file."""
    records = SerializedList([{"a": 1}], codec="json")
    path = str(tmp_path / "x.npz")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail)
    assert not write_entry(path, records, None)
    assert os.listdir(tmp_path) == []


def test_entry_path_depends_on_key(tmp_path):
    a = entry_path(str(tmp_path), {"json_file": "/d/train.json", "image_root": "/d/img"})
    b = entry_path(str(tmp_path), {"json_file": "/d/train.json", "image_root": "/e/img"})
    assert a != b and os.path.basename(a).startswith("train-")


def test_registered_dataset_uses_its_cache_dir(tmp_path, monkeypatch):
    from retinakit.data import DatasetCatalog, MetadataCatalog, register_coco_instances

    js = make_coco(str(tmp_path))
    calls = _count_validations(monkeypatch)
    register_coco_instances("cache_reg_ds", {}, js, str(tmp_path / "img"), cache_dir=str(tmp_path / "cache"))
    try:
        assert DatasetCatalog.get("cache_reg_ds") == DatasetCatalog.get("cache_reg_ds")
        assert len(calls) == 1 and len(os.listdir(tmp_path / "cache")) == 1
    finally:
        DatasetCatalog.remove("cache_reg_ds")
        MetadataCatalog.remove("cache_reg_ds")
