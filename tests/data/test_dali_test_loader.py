"""DALI backend: the test/inference loader (parity with the torch test loader, sharding,
COCO AP) and DATALOADER.ON_BAD_IMAGE with DALI (skip: checked up front; error: named)."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from retinakit.config import get_cfg
from retinakit.data import (
    BadImageError,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    build_inference_preprocess,
    get_detection_dataset_dicts,
    load_coco_json,
    register_coco_instances,
)
from retinakit.data.build import InferenceLoader
from retinakit.data.dali import DaliInferenceLoader, build_dali_test_loader
from retinakit.data.datasets import ShapesSpec, register_shapes
from retinakit.data.samplers import InferenceSampler

SHAPES = "dali_test_shapes"  # 8 shapes images of 128x128 (PNG)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    register_shapes(SHAPES, ShapesSpec(num_images=8, image_size=128, seed=5), root=str(tmp_path_factory.mktemp("shapes")))
    return SHAPES


def _cfg(**data):
    cfg = get_cfg()
    cfg.DATALOADER.NUM_WORKERS, cfg.DATALOADER.DALI.DEVICE = 0, "cpu"
    for k, v in data.items():
        setattr(cfg.DATALOADER, k, v)
    return cfg


# ---------------------------------------------------------------- bad images

GOOD = {1: ("a.png", 40, 60), 2: ("b.jpg", 50, 30), 3: ("c.png", 32, 32), 4: ("d.jpg", 36, 48)}
# image id -> (file, kind in the skip summary, phrase of the error message)
BAD = {
    11: ("trunc.png", "truncated or corrupt image file", "truncated or corrupt"),
    12: ("trunc.jpg", "truncated or corrupt image file", "truncated or corrupt"),
    13: ("no_iend.png", "truncated or corrupt image file", "before its IEND chunk"),  # PIL decodes it, DALI does not
    14: ("gone.png", "missing image file", "does not exist"),
    15: ("junk.jpg", "unreadable image file", "cannot be read as an image"),
    16: ("anim.gif", "unsupported image format", "GIF file, which the pipeline cannot decode"),
    17: ("size.png", "size disagrees with file", "40x20 (width x height)"),
}


def _image(path, h, w, seed):
    small = np.random.default_rng(seed).integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    Image.fromarray(np.kron(small, np.ones((4, 4, 1), np.uint8))[:h, :w]).save(path)


def _write_bad_files(img):
    _image(img / "trunc.png", 40, 40, 11)
    _image(img / "trunc.jpg", 40, 40, 12)
    _image(img / "no_iend.png", 40, 40, 13)
    _image(img / "anim.gif", 40, 40, 16)
    _image(img / "size.png", 20, 40, 17)  # the JSON says 40x40
    for name, cut in [("trunc.png", 0.5), ("trunc.jpg", 0.5)]:
        data = (img / name).read_bytes()
        (img / name).write_bytes(data[: int(len(data) * cut)])
    (img / "no_iend.png").write_bytes((img / "no_iend.png").read_bytes()[:-12])
    (img / "junk.jpg").write_bytes(b"not an image at all")


@pytest.fixture
def bad_dataset(tmp_path):
    """``(dicts, good ids)``: 4 good images and one of each kind of bad file, loaded without
    reading any file (CHECK_IMAGE_FILES off), so only the DALI loaders see the files."""
    img = tmp_path / "img"
    img.mkdir()
    images = []
    for i, (name, h, w) in GOOD.items():
        _image(img / name, h, w, i)
        images.append({"id": i, "file_name": name, "height": h, "width": w})
    _write_bad_files(img)
    images += [{"id": i, "file_name": name, "height": 40, "width": 40} for i, (name, _, _) in BAD.items()]
    anns = [{"id": k + 1, "image_id": im["id"], "category_id": 1, "bbox": [2, 2, 10, 12]} for k, im in enumerate(images)]
    js = tmp_path / "ann.json"
    js.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    return load_coco_json(str(js), str(img), check_image_files=False), sorted(GOOD)


def _ids(loader):
    return [d["image_id"] for batch in loader for d in batch]


def _summaries(caplog):
    return [r.getMessage() for r in caplog.records if "because DATALOADER.ON_BAD_IMAGE is 'skip'" in r.getMessage()]


def test_skip_test_loader_drops_counts_and_summarises(bad_dataset, caplog):
    dicts, good = bad_dataset
    cfg = _cfg(BACKEND="dali", ON_BAD_IMAGE="skip")
    with caplog.at_level(logging.WARNING):
        loader = build_detection_test_loader(cfg, "bad", batch_size=3, dataset=dicts)
    assert isinstance(loader, DaliInferenceLoader)
    assert loader.skipped == len(BAD) and len(loader) == 2
    assert _ids(loader) == good
    (line,) = _summaries(caplog)
    assert line.startswith(f"bad: skipped {len(BAD)} images (truncated or corrupt image file: 3, ")
    for _, kind, _ in BAD.values():
        assert f"{kind}: " in line
    assert "Examples: " in line and "trunc.png (image id 11)" in line
    # The torch loader skips the same files, except two that PIL decodes but DALI cannot
    # (a GIF, a PNG cut just before IEND): DALI drops those too instead of failing.
    torch_loader = build_detection_test_loader(_cfg(ON_BAD_IMAGE="skip"), "bad", batch_size=3, dataset=dicts)
    assert sorted(_ids(torch_loader)) == sorted([*good, 13, 16])


def test_skip_train_loader(bad_dataset, caplog):
    dicts, good = bad_dataset
    cfg = _cfg(BACKEND="dali", ON_BAD_IMAGE="skip")
    cfg.SOLVER.IMS_PER_BATCH, cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = 3, (32,), 64
    with caplog.at_level(logging.WARNING):
        loader = build_detection_train_loader(cfg, dataset=dicts)
    assert loader.skipped == len(BAD) and len(_summaries(caplog)) == 1
    it = iter(loader)
    batches = [next(it) for _ in range(6)]
    assert all(len(b) == 3 for b in batches)
    assert {d["image_id"] for b in batches for d in b} == set(good)
    from retinakit.data import DatasetError

    with pytest.raises(DatasetError, match="all 7 image files are bad"):
        build_detection_train_loader(cfg, dataset=[d for d in dicts if d["image_id"] in BAD])


@pytest.mark.parametrize("image_id", sorted(BAD))
def test_error_policy_names_the_file(bad_dataset, image_id):
    """With "error" the batch that holds a bad file stops with the file, image id, problem
    and what to do (the file is found by the same checks, after DALI failed)."""
    dicts, _ = bad_dataset
    by_id = {d["image_id"]: d for d in dicts}
    name, _, phrase = BAD[image_id]
    loader = build_dali_test_loader(_cfg(), [by_id[1], by_id[image_id], by_id[2]], batch_size=3)
    with pytest.raises(BadImageError) as e:
        _ids(loader)
    msg = str(e.value)
    assert name in msg and f"image id {image_id}" in msg and phrase in msg, msg
    assert "set DATALOADER.ON_BAD_IMAGE skip" in msg, msg


def test_error_policy_checks_no_file_up_front(shapes, monkeypatch):
    """The up-front check costs nothing with "error"; with "skip" one verify_image per file."""
    import retinakit.data.image_check as image_check

    calls = []
    real = image_check.verify_image
    monkeypatch.setattr(image_check, "verify_image", lambda *a: calls.append(a) or real(*a))
    dataset = get_detection_dataset_dicts(shapes)
    assert len(_ids(build_dali_test_loader(_cfg(), dataset, batch_size=4))) == 8 and not calls
    assert len(_ids(build_dali_test_loader(_cfg(ON_BAD_IMAGE="skip"), dataset, batch_size=4))) == 8
    assert len(calls) == 8


# ---------------------------------------------------------------- parity with the torch test loader


def _compare(torch_loader, dali_loader, border_tol):
    """Same batches, ids, keys and sizes; pixels within 1 (within ``border_tol`` on the 1-pixel border)."""
    assert len(torch_loader) == len(dali_loader)
    n = 0
    batches = list(zip(torch_loader, dali_loader))
    assert len(batches) == len(torch_loader)
    for tb, db in batches:
        assert [t["image_id"] for t in tb] == [d["image_id"] for d in db]
        for t, d in zip(tb, db):
            assert t.keys() == d.keys() and (t["height"], t["width"], t["file_name"]) == (d["height"], d["width"], d["file_name"])
            assert t["image"].dtype == d["image"].dtype == torch.uint8 and t["image"].shape == d["image"].shape
            diff = (t["image"].int() - d["image"].cpu().int()).abs()
            assert diff[:, 1:-1, 1:-1].max() <= 1 and diff.max() <= border_tol, (t["file_name"], diff.max())
            n += 1
    return n


@pytest.mark.parametrize("min_size,border_tol", [(0, 0), (160, 1), (96, 12)])
def test_test_loader_parity_on_shapes(shapes, min_size, border_tol):
    """Kept size: identical pixels; enlarged: within 1 level; shrunk: within 1 inside, a few
    levels on the 1-pixel border (DALI's and torchvision's antialias filters treat the
    border differently)."""
    cfg = _cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = min_size, 1000
    t = build_detection_test_loader(cfg, shapes, batch_size=3)
    cfg.DATALOADER.BACKEND = "dali"
    d = build_detection_test_loader(cfg, shapes, batch_size=3)
    assert isinstance(t, InferenceLoader) and isinstance(d, DaliInferenceLoader) and len(d) == 3
    assert _compare(t, d, border_tol) == 8
    first = next(iter(t))[0]
    size = min_size or 128
    assert first["image"].shape == (3, size, size) and (first["height"], first["width"]) == (128, 128)
    # the torch test loader is the InferencePreprocessor (predictor, calibration): same output
    assert torch.equal(first["image"], build_inference_preprocess(cfg)(first["file_name"])[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.cuda
def test_gpu_test_loader_parity(shapes):
    """GPU decoding ("mixed") and resize: CUDA images, same ids and sizes, pixels within 1."""
    cfg = _cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 160, 1000
    t = build_detection_test_loader(cfg, shapes, batch_size=3)
    cfg.DATALOADER.BACKEND, cfg.DATALOADER.DALI.DEVICE = "dali", "gpu"
    d = build_detection_test_loader(cfg, shapes, batch_size=3)
    assert next(iter(d))[0]["image"].is_cuda
    assert _compare(t, d, border_tol=1) == 8


def test_test_loader_parity_mixed_sizes_and_instances(bad_dataset):
    """Non-square images of several sizes, a partial last batch, a test-time mapper that keeps instances."""
    dicts, _ = bad_dataset
    good = [d for d in dicts if d["image_id"] in GOOD]
    cfg = _cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 72, 100
    mapper = DatasetMapper(cfg, is_train=False, keep_instances=True)
    t = build_detection_test_loader(cfg, "good", batch_size=3, mapper=mapper, dataset=good)
    cfg.DATALOADER.BACKEND = "dali"
    d = build_detection_test_loader(cfg, "good", batch_size=3, mapper=mapper, dataset=good)
    assert isinstance(d, DaliInferenceLoader)
    assert _compare(t, d, border_tol=1) == 4
    for tb, db in zip(t, d):
        for x, y in zip(tb, db):
            assert torch.equal(x["instances"].gt_boxes.tensor, y["instances"].gt_boxes.tensor)


def test_custom_mapper_keeps_the_torch_loader(shapes, caplog):
    cfg = _cfg(BACKEND="dali")
    with caplog.at_level(logging.WARNING):
        loader = build_detection_test_loader(cfg, shapes, mapper=lambda d: {"image_id": d["image_id"]})
    assert isinstance(loader, InferenceLoader) and "custom mapper" in caplog.text


# ---------------------------------------------------------------- sharding


@pytest.mark.parametrize("world", [1, 3, 12])
def test_shards_as_the_inference_sampler(shapes, world):
    """Rank r reads InferenceSampler's contiguous shard r, in order: every image exactly once
    over all ranks (an empty shard yields nothing)."""
    dataset = get_detection_dataset_dicts(shapes)
    pre = build_inference_preprocess(_cfg())
    ids = []
    for r in range(world):
        loader = DaliInferenceLoader(dataset, pre, 2, rank=r, world_size=world, device="cpu")
        expected = [dataset[i]["image_id"] for i in InferenceSampler(len(dataset), r, world)]
        assert _ids(loader) == expected and len(loader) == -(-len(expected) // 2)
        ids += expected
    assert ids == [d["image_id"] for d in dataset]


def test_shards_with_skipped_images(bad_dataset):
    """With "skip" each rank checks only its shard; the good images are still read once."""
    dicts, good = bad_dataset
    pre = build_inference_preprocess(_cfg())
    loaders = [DaliInferenceLoader(dicts, pre, 2, rank=r, world_size=3, device="cpu", on_bad_image="skip") for r in range(3)]
    assert sum(lo.skipped for lo in loaders) == len(BAD)
    assert sorted(i for lo in loaders for i in _ids(lo)) == good


def test_inference_loader_refuses_random_transforms(shapes):
    from retinakit.data.transforms import DetectionTransform

    dataset = get_detection_dataset_dicts(shapes)
    with pytest.raises(ValueError, match="deterministic"):
        DaliInferenceLoader(dataset, DetectionTransform([64, 96], 200), device="cpu")
    with pytest.raises(ValueError, match="deterministic"):
        DaliInferenceLoader(dataset, DetectionTransform([64], 200, flip="horizontal"), device="cpu")


# ---------------------------------------------------------------- COCO evaluation through both loaders


@pytest.fixture(scope="module")
def random_model():
    """The quickstart R18 architecture with seeded random weights, every detection kept."""
    from retinakit.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quickstart", "retinanet_R18_shapes.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0, "MODEL.RETINANET.TOPK_CANDIDATES_TEST", 200])
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def _evaluate(cfg, model, name, backend, out_dir):
    """COCO AP of ``model`` on ``name`` through the ``backend`` test loader, the detections
    as written for COCO, and the recorded ``(inputs, outputs)`` to evaluate again."""
    from retinakit.evaluation import COCOEvaluator, DatasetEvaluator, inference_on_dataset

    class Recorder(DatasetEvaluator):
        def reset(self):
            self.pairs = []

        def process(self, inputs, outputs):
            self.pairs.append(([{k: d[k] for k in ("image_id", "height", "width")} for d in inputs], outputs))

        def evaluate(self):
            return {}

    cfg.DATALOADER.BACKEND, cfg.DATALOADER.NUM_WORKERS, cfg.DATALOADER.DALI.DEVICE = backend, 0, "cpu"
    loader = build_detection_test_loader(cfg, name, batch_size=4)
    recorder = Recorder()
    res = inference_on_dataset(model, loader, [COCOEvaluator(name, out_dir, distributed=False), recorder], progress=False)
    with open(os.path.join(out_dir, "coco_instances_results.json")) as f:
        return res["bbox"], json.load(f), recorder.pairs


def _ap_of(pairs, name, out_dir):
    """COCO AP of recorded ``(inputs, outputs)`` against the boxes of dataset ``name``."""
    from retinakit.evaluation import COCOEvaluator

    evaluator = COCOEvaluator(name, out_dir, distributed=False)
    evaluator.reset()
    for inputs, outputs in pairs:
        evaluator.process(inputs, outputs)
    return evaluator.evaluate()["bbox"]


def _pseudo_gt(name, dets, tmp_path, per_image=8):
    """A dataset on the same images whose boxes are the highest-scoring torch-loader
    detections (score above the global ``per_image * images``-th): those detections score
    AP 1.0 against it, and a loader whose detections differ scores less."""
    meta = MetadataCatalog.get(name)
    with open(meta.json_file) as f:
        gt = json.load(f)
    cut = sorted((d["score"] for d in dets), reverse=True)[per_image * len(gt["images"])]
    keep = [d for d in dets if d["score"] > cut and min(d["bbox"][2:]) > 1]
    gt["annotations"] = [
        {"id": k + 1, "image_id": d["image_id"], "category_id": d["category_id"], "bbox": d["bbox"], "area": d["bbox"][2] * d["bbox"][3]}
        for k, d in enumerate(keep)
    ]
    for a in gt["annotations"]:
        a["iscrowd"] = 0
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps(gt))
    name = f"dali_pseudo_gt_{tmp_path.name}"  # one per test
    register_coco_instances(name, {}, str(path), meta.image_root)
    return name


@pytest.mark.slow
@pytest.mark.parametrize("min_size,tol", [(0, 0.0), (160, 0.01), (96, 0.01)])
def test_coco_ap_same_through_both_loaders(shapes, random_model, tmp_path, min_size, tol):
    """A random-weights model evaluated with COCOEvaluator through the torch and the DALI
    test loaders: the same AP (equal when the images keep their size: identical pixels).

    A random model's AP on the real boxes is near 0, so agreement there says little; the
    detections are therefore also scored against the torch loader's own top detections
    (pseudo ground truth): torch's score AP 1.0 there by construction; DALI's are exactly
    the same without resizing and within ``tol`` (measured: 0.999) with resizing, where
    pixels differ by 1 level (a few on the border when shrinking) and the detections of
    near-tied boxes change slightly."""
    cfg, model = random_model
    cfg = cfg.clone()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = min_size, 1000
    ap_t, dets, torch_pairs = _evaluate(cfg, model, shapes, "torch", str(tmp_path / "t"))
    ap_d, _, dali_pairs = _evaluate(cfg, model, shapes, "dali", str(tmp_path / "d"))
    for key in ("AP", "AP50", "AP75"):
        assert abs(ap_t[key] - ap_d[key]) <= tol, (key, ap_t[key], ap_d[key])
    pseudo = _pseudo_gt(shapes, dets, tmp_path)
    assert _ap_of(torch_pairs, pseudo, str(tmp_path / "pt"))["AP"] == 1.0
    dali_ap = _ap_of(dali_pairs, pseudo, str(tmp_path / "pd"))["AP"]
    assert dali_ap >= 1.0 - tol, dali_ap
    if min_size == 0:
        assert ap_t == ap_d and dali_ap == 1.0


def test_skip_file_broken_after_the_check(bad_dataset):
    """A file that breaks after the check (or that the check misses) still stops the DALI
    batch with its name: DALI cannot drop an image from a failed batch."""
    dicts, _ = bad_dataset
    good = [d for d in dicts if d["image_id"] in GOOD]
    loader = build_dali_test_loader(_cfg(ON_BAD_IMAGE="skip"), good, batch_size=4)
    assert loader.skipped == 0
    path = good[2]["file_name"]
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="did not catch this") as e:
        _ids(loader)
    assert path in str(e.value) and "image id 3" in str(e.value)
