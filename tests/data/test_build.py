"""Loaders built from a config."""
import itertools
import json
from pathlib import Path

import pytest
import torch

from retinakit.config import get_cfg
from retinakit.data import (
    DatasetCatalog,
    DatasetError,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    get_eval_dataset_names,
    get_train_dataset_names,
    register_coco_instances,
    samplers,
)

from .helpers import make_coco


def _cfg(js, root, **kw):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN_JSON, cfg.DATASETS.TRAIN_IMAGES = js, root
    cfg.DATASETS.TEST_JSON, cfg.DATASETS.TEST_IMAGES = js, root
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST = (32,), 100, 32
    cfg.SOLVER.IMS_PER_BATCH, cfg.SEED, cfg.DATALOADER.NUM_WORKERS = 2, 7, 0
    for k, v in kw.items():
        cfg.merge_from_list([k, v])
    return cfg


def _ids(loader, n):
    return [[d["image_id"] for d in b] for b in itertools.islice(iter(loader), n)]


def test_config_datasets_and_train_loader(coco_dir):
    cfg = _cfg(*coco_dir)
    assert get_train_dataset_names(cfg) == ["cfg_train"] and get_eval_dataset_names(cfg) == ["cfg_test"]
    assert MetadataCatalog.get("cfg_train").thing_classes == ["c3", "c7", "c11"]
    batches = list(itertools.islice(iter(build_detection_train_loader(cfg)), 6))
    assert all(len(b) == 2 for b in batches)
    for b in batches:  # aspect-ratio grouped: all landscape/square or all portrait
        assert len({d["image"].shape[1] > d["image"].shape[2] for d in b}) == 1
        assert all("instances" in d and d["image"].dtype == torch.uint8 for d in b)
    assert _ids(build_detection_train_loader(cfg), 6) == [[d["image_id"] for d in b] for b in batches]  # seeded


def test_train_loader_with_workers_is_deterministic(coco_dir):
    cfg = _cfg(*coco_dir, **{"DATALOADER.NUM_WORKERS": 1, "DATALOADER.ASPECT_RATIO_GROUPING": False, "INPUT.RANDOM_FLIP": "horizontal"})
    a = [[d["instances"].gt_boxes.tensor for d in b] for b in itertools.islice(iter(build_detection_train_loader(cfg)), 4)]
    b = [[d["instances"].gt_boxes.tensor for d in b] for b in itertools.islice(iter(build_detection_train_loader(cfg)), 4)]
    assert all(torch.equal(x, y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def test_per_rank_batch_and_shards(coco_dir, monkeypatch):
    monkeypatch.setattr(samplers, "world_info", lambda: (1, 2))
    from retinakit.data import build as build_mod

    monkeypatch.setattr(build_mod, "world_info", lambda: (1, 2))
    cfg = _cfg(*coco_dir, **{"SOLVER.IMS_PER_BATCH": 4})
    assert all(len(b) == 2 for b in itertools.islice(iter(build_detection_train_loader(cfg)), 3))
    cfg.SOLVER.IMS_PER_BATCH = 3
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        build_detection_train_loader(cfg)
    test = build_detection_test_loader(cfg, "cfg_test")
    assert [d["image_id"] for b in test for d in b] == [102]  # rank 1 of 2 gets the last of 3 images


def test_test_loader_order_batches_and_skip(tmp_path):
    js = make_coco(str(tmp_path), sizes=[(20, 20)] * 5)
    (tmp_path / "img" / "im1.png").write_bytes(b"broken")
    cfg = _cfg(js, str(tmp_path / "img"), **{"DATALOADER.ON_BAD_IMAGE": "skip", "DATASETS.CHECK_IMAGE_FILES": False})
    loader = build_detection_test_loader(cfg, "cfg_test", batch_size=2)
    assert len(loader) == 3
    assert [[d["image_id"] for d in b] for b in loader] == [[100], [102, 103], [104]]
    assert all("instances" not in d for b in loader for d in b)


def test_dataset_errors(coco_dir, tmp_path):
    with pytest.raises(KeyError, match=r"not registered.*register_coco_instances"):
        get_detection_dataset_dicts(["no_such_dataset"])
    with pytest.raises(DatasetError, match="No dataset given"):
        get_detection_dataset_dicts([])
    cfg = _cfg(*coco_dir)
    cfg.DATASETS.TRAIN_IMAGES = ""
    with pytest.raises(DatasetError, match="TRAIN_IMAGES is empty"):
        get_train_dataset_names(cfg)
    get_train_dataset_names(_cfg(*coco_dir))
    other = make_coco(str(tmp_path / "o"), cat_ids=(1, 2))
    register_coco_instances("t_other", {}, other, str(tmp_path / "o" / "img"))
    try:
        with pytest.raises(DatasetError, match="different class lists"):
            get_detection_dataset_dicts(["cfg_train", "t_other"])
    finally:
        DatasetCatalog.remove("t_other")
        MetadataCatalog.remove("t_other")


def test_filter_empty_and_policies_from_cfg(tmp_path):
    def edit(d):
        d["annotations"] = [a for a in d["annotations"] if a["image_id"] != 101]
        d["annotations"][0]["bbox"] = [1, 1, -1, 1]

    js = make_coco(str(tmp_path), mutate=edit)
    cfg = _cfg(js, str(tmp_path / "img"))
    with pytest.raises(DatasetError, match="negative width"):
        next(iter(build_detection_train_loader(cfg)))
    cfg.DATALOADER.ON_BAD_ANNOTATION = "skip"
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True
    ids = {d["image_id"] for b in itertools.islice(iter(build_detection_train_loader(cfg)), 5) for d in b}
    assert ids == {100, 102}
    assert json.loads(Path(js).read_text())["annotations"][0]["bbox"] == [1, 1, -1, 1]


def _signature(batches):
    return [[(d["image_id"], tuple(d["image"].shape), d["instances"].gt_boxes.tensor.sum().item()) for d in b] for b in batches]


@pytest.mark.parametrize("workers", [0, 2])
def test_start_iter_resumes_exactly(tmp_path, workers):
    js = make_coco(str(tmp_path), sizes=[(20, 30), (30, 20), (24, 24), (18, 40), (40, 18)])
    cfg = _cfg(js, str(tmp_path / "img"), **{"DATALOADER.NUM_WORKERS": workers, "INPUT.MIN_SIZE_TRAIN": "(24, 32, 40)"})
    full = _signature(itertools.islice(iter(build_detection_train_loader(cfg)), 9))
    resumed = _signature(itertools.islice(iter(build_detection_train_loader(cfg, start_iter=5)), 4))
    assert resumed == full[5:9]
    assert len({s for b in full for s in b}) > 10  # sizes/flips really vary


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_in_worker_gives_one_clean_message(tmp_path, workers):
    from retinakit.data import BadImageError

    js = make_coco(str(tmp_path), sizes=[(20, 20)] * 3)
    data = (tmp_path / "img" / "im1.png").read_bytes()
    (tmp_path / "img" / "im1.png").write_bytes(data[: len(data) // 2])  # header intact, pixels truncated
    cfg = _cfg(js, str(tmp_path / "img"), **{"DATALOADER.NUM_WORKERS": workers})
    for loader in (build_detection_train_loader(cfg), build_detection_test_loader(cfg, "cfg_test")):
        with pytest.raises(BadImageError) as e:
            list(itertools.islice(iter(loader), 5))
        msg = str(e.value)
        assert msg.startswith("Image ") and "image id 101" in msg and "truncated" in msg and "Traceback" not in msg


def test_skipped_image_keeps_batch_size(tmp_path):
    js = make_coco(str(tmp_path), sizes=[(20, 20)] * 3)
    (tmp_path / "img" / "im1.png").write_bytes(b"broken")
    cfg = _cfg(js, str(tmp_path / "img"), **{"DATALOADER.ON_BAD_IMAGE": "skip", "DATASETS.CHECK_IMAGE_FILES": False})
    batches = list(itertools.islice(iter(build_detection_train_loader(cfg)), 6))
    assert all(len(b) == 2 for b in batches)
    assert {d["image_id"] for b in batches for d in b} == {100, 102}
