"""DALI backend: same batches as the torch backend (boxes identical, pixels within 1 level)."""
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retinakit.config import get_cfg
from retinakit.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    get_train_dataset_names,
)
from retinakit.data.dali import DaliLoader, build_dali_test_loader, dali_available
from retinakit.data.samplers import InferenceSampler
from retinakit.data.transforms import DetectionTransform

needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI not installed (pip install retinakit[dali])")


def _blocky(h, w, seed):
    """Piecewise-constant image with edges (a harder case for resampling than noise)."""
    small = np.random.default_rng(seed).integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return np.kron(small, np.ones((4, 4, 1), np.uint8))[:h, :w]


def _in_mode(arr, mode):
    """A PIL image of ``arr`` (uint8 RGB) in ``mode``."""
    if mode == "L":
        return Image.fromarray(arr[:, :, 0])
    if mode == "P":
        return Image.fromarray(arr).quantize(32)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([arr, arr[:, :, :1]]))
    if mode == "I;16":
        return Image.fromarray(arr[:, :, 0].astype(np.uint16) * 257)
    return Image.fromarray(arr)


def _write_dataset(root):
    """Images in several formats/modes and orientations + COCO JSON."""
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    specs = [("a.png", 48, 64, "RGB"), ("b.jpg", 64, 48, "RGB"), ("c.png", 40, 40, "L"), ("d.png", 50, 70, "P"),
             ("e.png", 45, 60, "RGBA"), ("f.png", 60, 44, "I;16"), ("g.jpg", 52, 52, "RGB"), ("h.png", 56, 40, "RGB")]
    images, anns = [], []
    for i, (name, h, w, mode) in enumerate(specs):
        arr = _blocky(h, w, i)
        img = _in_mode(arr, mode)
        img.save(os.path.join(root, "img", name), **({"quality": 95} if name.endswith("jpg") else {}))
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        anns.append({"id": 2 * i + 1, "image_id": i + 1, "category_id": 1, "bbox": [1.5, 2.0, w / 3, h / 4]})
        anns.append({"id": 2 * i + 2, "image_id": i + 1, "category_id": 2, "bbox": [w / 2, h / 2, w / 2 - 1, h / 3], "iscrowd": 1})
    js = os.path.join(root, "ann.json")
    with open(js, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": [{"id": 1}, {"id": 2}]}, f)
    return js


@pytest.fixture
def parity_cfg(tmp_path):
    js = _write_dataset(str(tmp_path))
    cfg = get_cfg()
    cfg.DATASETS.TRAIN_JSON, cfg.DATASETS.TRAIN_IMAGES = js, str(tmp_path / "img")
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.RANDOM_FLIP = (96,), 1000, "none"
    cfg.SOLVER.IMS_PER_BATCH, cfg.SEED, cfg.DATALOADER.NUM_WORKERS = 3, 1, 0
    cfg.DATALOADER.DALI.DEVICE = "cpu"
    get_train_dataset_names(cfg)  # registers "cfg_train" for this test's files
    return cfg


def _compare(torch_batches, dali_batches, tol=1, border_tol=None):
    n = 0
    for tb, db in zip(torch_batches, dali_batches):
        assert [d["image_id"] for d in tb] == [d["image_id"] for d in db]
        for t, d in zip(tb, db):
            assert t["image"].dtype == d["image"].dtype == torch.uint8 and t["image"].shape == d["image"].shape
            diff = (t["image"].int() - d["image"].cpu().int()).abs()
            if border_tol is None:
                assert diff.max() <= tol, (t["file_name"], diff.max())
            else:
                assert diff[:, 1:-1, 1:-1].max() <= tol and diff.max() <= border_tol, (t["file_name"], diff.max())
            assert (t["height"], t["width"]) == (d["height"], d["width"])
            if "instances" in t:
                ti, di = t["instances"], d["instances"]
                assert ti.image_size == di.image_size
                assert torch.equal(ti.gt_boxes.tensor, di.gt_boxes.tensor)
                assert torch.equal(ti.gt_classes, di.gt_classes) and torch.equal(ti.gt_ignore, di.gt_ignore)
            n += 1
    return n


@needs_dali
def test_train_loader_parity_fixed_size(parity_cfg):
    """Same sampler, grouping and sizes: identical ids and boxes, pixels within 1 level."""
    t = itertools.islice(iter(build_detection_train_loader(parity_cfg)), 6)
    parity_cfg.DATALOADER.BACKEND = "dali"
    d = itertools.islice(iter(build_detection_train_loader(parity_cfg)), 6)
    assert _compare(t, d) == 18


@needs_dali
def test_train_loader_parity_with_jitter_and_flips(parity_cfg):
    """DALI draws the same random sizes/flips as the torch loader with NUM_WORKERS 0."""
    parity_cfg.INPUT.MIN_SIZE_TRAIN, parity_cfg.INPUT.RANDOM_FLIP = (64, 80, 96), "horizontal"
    t = list(itertools.islice(iter(build_detection_train_loader(parity_cfg)), 8))
    assert len({(d["image"].shape, d["instances"].gt_boxes.tensor[0, 0].item()) for b in t for d in b}) > 8
    parity_cfg.DATALOADER.BACKEND = "dali"
    d = itertools.islice(iter(build_detection_train_loader(parity_cfg)), 8)
    assert _compare(t, d) == 24
    resumed = itertools.islice(iter(build_detection_train_loader(parity_cfg, start_iter=5)), 3)
    assert _compare(t[5:], resumed) == 9


@needs_dali
@pytest.mark.parametrize("min_size,border_tol", [(0, None), (72, None), (120, None), (30, 12)])
def test_test_loader_parity(parity_cfg, min_size, border_tol):
    """No resize and upscaling: all pixels within 1. Downscaling (30 px): DALI and torchvision
    treat the image border differently in the antialias filter, so only interior pixels are
    within 1 there (the 1-pixel border differs by a few levels)."""
    parity_cfg.INPUT.MIN_SIZE_TEST = min_size
    dataset = get_detection_dataset_dicts("cfg_train")
    mapper = DatasetMapper(parity_cfg, is_train=False, keep_instances=True)
    t = build_detection_test_loader(parity_cfg, "cfg_train", batch_size=2, mapper=mapper)
    d = build_dali_test_loader(parity_cfg, dataset, batch_size=2, keep_instances=True)
    assert _compare(t, d, border_tol=border_tol) == 8
    if min_size == 0:
        for tb, db in zip(t, d):
            assert all(torch.equal(x["image"], y["image"]) for x, y in zip(tb, db))


@needs_dali
@pytest.mark.parametrize("flip", ["horizontal", "vertical"])
def test_flip_parity(parity_cfg, flip):
    parity_cfg.INPUT.RANDOM_FLIP, parity_cfg.INPUT.FLIP_PROB = flip, 1.0
    dataset = get_detection_dataset_dicts("cfg_train")
    transform = DetectionTransform.from_config(parity_cfg, is_train=True)
    mapper = DatasetMapper(parity_cfg, is_train=True)
    dali = DaliLoader(dataset, transform, 4, InferenceSampler(len(dataset)), group=False, device="cpu")
    torch_batches = [[mapper(x) for x in dataset[:4]], [mapper(x) for x in dataset[4:]]]
    assert _compare(torch_batches, dali) == 8


@needs_dali
def test_bgr_and_size_mismatch(parity_cfg, tmp_path):
    parity_cfg.INPUT.FORMAT = "BGR"
    parity_cfg.INPUT.MIN_SIZE_TEST = 0
    dataset = get_detection_dataset_dicts("cfg_train")
    rgb = next(iter(build_dali_test_loader(parity_cfg.clone(), dataset)))[0]["image"]
    ref = DatasetMapper(parity_cfg, is_train=False)(dataset[0])["image"]
    assert torch.equal(rgb, ref)
    bad = [dict(dataset[0], height=dataset[0]["height"] + 1)]
    from retinakit.data import BadImageError

    with pytest.raises(BadImageError, match="image id 1"):
        list(build_dali_test_loader(parity_cfg, bad))


@needs_dali
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.cuda
def test_gpu_parity(parity_cfg):
    t = itertools.islice(iter(build_detection_train_loader(parity_cfg)), 4)
    parity_cfg.DATALOADER.BACKEND, parity_cfg.DATALOADER.DALI.DEVICE = "dali", "gpu"
    d = list(itertools.islice(iter(build_detection_train_loader(parity_cfg)), 4))
    assert d[0][0]["image"].is_cuda
    assert _compare(t, d) == 12


def test_missing_dali_message(monkeypatch, parity_cfg):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    parity_cfg.DATALOADER.BACKEND = "dali"
    with pytest.raises(ImportError, match=r"pip install 'retinakit\[dali\]'") as e:
        build_detection_train_loader(parity_cfg)
    assert e.value.__cause__ is None and e.value.__suppress_context__


@needs_dali
def test_bad_files_named(parity_cfg, tmp_path):
    from retinakit.data import BadImageError

    parity_cfg.INPUT.MIN_SIZE_TEST = 0
    dataset = get_detection_dataset_dicts("cfg_train")[:3]
    data = Path(dataset[1]["file_name"]).read_bytes()
    broken = str(tmp_path / "broken.png")
    Path(broken).write_bytes(data[: len(data) // 2])
    for name, expected in [(broken, "truncated or corrupt"), (str(tmp_path / "gone.png"), "does not exist")]:
        bad = [dataset[0], dict(dataset[1], file_name=name), dataset[2]]
        with pytest.raises(BadImageError, match=expected) as e:
            list(build_dali_test_loader(parity_cfg, bad, batch_size=3))
        assert name in str(e.value) and "image id 2" in str(e.value)


@needs_dali
def test_repeatable_and_needs_sizes(parity_cfg):
    from retinakit.data import DatasetError

    parity_cfg.INPUT.MIN_SIZE_TRAIN, parity_cfg.INPUT.RANDOM_FLIP = (64, 80, 96), "horizontal"
    dataset = get_detection_dataset_dicts("cfg_train")
    loader = DaliLoader(dataset, DetectionTransform.from_config(parity_cfg, is_train=True), 4, range(8), group=False, device="cpu")
    assert _compare(list(loader), list(loader)) == 8
    with pytest.raises(DatasetError, match="needs 'height' and 'width'"):
        DaliLoader([dict(dataset[0], height=None)], DetectionTransform([64], 100), 1, range(1), device="cpu")
