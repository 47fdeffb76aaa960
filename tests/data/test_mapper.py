"""DatasetMapper output format (the model's input contract)."""
import pytest
import torch

from retinakit.config import get_cfg
from retinakit.data import BadImageError, DatasetMapper, load_coco_json
from retinakit.structures import Boxes, Instances


def _cfg(**kw):
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (80,), 200
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 200
    for k, v in kw.items():
        cfg.merge_from_list([k, v])
    return cfg


def test_train_output_contract(coco_dir):
    d = load_coco_json(*coco_dir)[0]  # 40x60 image
    out = DatasetMapper(_cfg(**{"INPUT.RANDOM_FLIP": "none"}), is_train=True)(d)
    assert out["image"].dtype == torch.uint8 and tuple(out["image"].shape) == (3, 80, 120)
    assert (out["height"], out["width"], out["image_id"], out["file_name"]) == (40, 60, 100, d["file_name"])
    inst = out["instances"]
    assert isinstance(inst, Instances) and inst.image_size == (80, 120)
    assert isinstance(inst.gt_boxes, Boxes) and inst.gt_boxes.tensor.dtype == torch.float32
    torch.testing.assert_close(inst.gt_boxes.tensor, torch.tensor([a["bbox"] for a in d["annotations"]]) * 2)
    assert inst.gt_classes.dtype == torch.int64 and inst.gt_classes.tolist() == [a["category_id"] for a in d["annotations"]]
    assert inst.gt_ignore.dtype == torch.bool and inst.gt_ignore.tolist() == [False] * 3
    assert "annotations" not in out and "annotations" in d  # input dict not modified


def test_crowd_is_ignore_and_test_mode(coco_dir):
    d = load_coco_json(*coco_dir)[2]
    assert DatasetMapper(_cfg(), is_train=True)(d)["instances"].gt_ignore.tolist() == [False, False, True]
    out = DatasetMapper(_cfg(), is_train=False)(d)
    assert "instances" not in out and tuple(out["image"].shape) == (3, 64, 64)
    kept = DatasetMapper(_cfg(), is_train=False, keep_instances=True)(d)
    assert len(kept["instances"]) == 3


def test_resize_in_model_and_bgr(coco_dir):
    d = load_coco_json(*coco_dir)[1]
    rgb = DatasetMapper(_cfg(**{"INPUT.RESIZE_IN_MODEL": True, "INPUT.RANDOM_FLIP": "none"}), is_train=True)(d)
    assert tuple(rgb["image"].shape) == (3, 50, 30)
    bgr = DatasetMapper(_cfg(**{"INPUT.RESIZE_IN_MODEL": True, "INPUT.FORMAT": "BGR"}), is_train=False)(d)
    assert torch.equal(bgr["image"], rgb["image"].flip(0))


def test_bad_image_policy(coco_dir):
    d = dict(load_coco_json(*coco_dir)[0], height=41)
    with pytest.raises(BadImageError, match=r"image id 100.*60x40.*60x41.*ON_BAD_IMAGE skip"):
        DatasetMapper(_cfg(), is_train=True)(d)
    m = DatasetMapper(_cfg(**{"DATALOADER.ON_BAD_IMAGE": "skip"}), is_train=True)
    assert m(d) is None and m(dict(d, file_name="/nonexistent.png")) is None and m.skipped == 2


def test_image_without_boxes(coco_dir):
    d = dict(load_coco_json(*coco_dir)[0], annotations=[])
    inst = DatasetMapper(_cfg(), is_train=True)(d)["instances"]
    assert len(inst) == 0 and inst.gt_boxes.tensor.shape == (0, 4) and inst.gt_classes.dtype == torch.int64
    assert inst.gt_ignore.dtype == torch.bool


def test_batch_images_pads_to_divisibility(coco_dir):
    from retinakit.data import batch_images

    m = DatasetMapper(_cfg(**{"INPUT.RESIZE_IN_MODEL": True}), is_train=False)
    batch = [m(d) for d in load_coco_json(*coco_dir)]  # 40x60, 50x30, 32x32
    il = batch_images(batch, size_divisibility=32, dtype=torch.float32)
    assert tuple(il.tensor.shape) == (3, 3, 64, 64) and il.image_sizes == [(40, 60), (50, 30), (32, 32)]
    assert torch.equal(il[1], batch[1]["image"].float()) and il.tensor[1, :, 50:, :].abs().sum() == 0
