"""Boxes, Instances, ImageList against torchvision / hand-computed references."""
import pytest
import torch
from torchvision.ops import box_area as tv_box_area
from torchvision.ops import box_iou as tv_box_iou

from retinakit.structures import Boxes, ImageList, Instances, pairwise_iou


def _random_boxes(n, seed, scale=100.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * scale
    wh = torch.rand(n, 2, generator=g) * scale / 2
    return torch.cat([xy, xy + wh], dim=1)


def test_area_and_iou_match_torchvision():
    a, b = _random_boxes(37, 0), _random_boxes(23, 1)
    torch.testing.assert_close(Boxes(a).area(), tv_box_area(a))
    torch.testing.assert_close(pairwise_iou(a, b), tv_box_iou(a, b))
    torch.testing.assert_close(Boxes.pairwise_iou(Boxes(a), Boxes(b)), tv_box_iou(a, b))


def test_degenerate_boxes():
    boxes = Boxes([[0, 0, 0, 0], [5, 5, 2, 2], [0, 0, 10, 10]])
    assert Boxes(boxes.tensor).area().tolist() == [0.0, 0.0, 100.0]
    assert boxes.nonempty().tolist() == [False, False, True]
    iou = pairwise_iou(boxes.tensor, boxes.tensor)
    assert iou[0, 0] == 0 and iou[1, 1] == 0 and iou[2, 2] == 1  # empty boxes: IoU 0, never NaN
    assert torch.isfinite(iou).all()
    assert pairwise_iou(torch.zeros(0, 4), boxes.tensor).shape == (0, 3)


def test_clip_and_scale():
    b = Boxes([[-5.0, -3.0, 50.0, 120.0]])
    b.clip((100, 40))
    assert b.tensor.tolist() == [[0.0, 0.0, 40.0, 100.0]]
    b.scale(0.5, 2.0)
    assert b.tensor.tolist() == [[0.0, 0.0, 20.0, 200.0]]
    assert len(Boxes(torch.zeros(0))) == 0
    with pytest.raises(ValueError):
        Boxes(torch.zeros(3, 5))


def test_instances_index_and_cat():
    inst = Instances((10, 20), gt_boxes=Boxes(_random_boxes(4, 2)), gt_classes=torch.tensor([0, 1, 2, 3]))
    sub = inst[inst.gt_classes > 1]
    assert len(sub) == 2 and sub.gt_classes.tolist() == [2, 3] and sub.image_size == (10, 20)
    assert inst[1].gt_classes.tolist() == [1] and inst[-1].gt_classes.tolist() == [3]
    both = Instances.cat([inst, sub])
    assert len(both) == 6 and isinstance(both.gt_boxes, Boxes)
    with pytest.raises(ValueError, match="length"):
        inst.scores = torch.zeros(3)
    with pytest.raises(AttributeError, match="pred_boxes"):
        _ = inst.pred_boxes


def test_image_list_pads_to_divisibility():
    a, b = torch.ones(3, 30, 41), torch.full((3, 17, 64), 2.0)
    il = ImageList.from_tensors([a, b], size_divisibility=32, pad_value=-1)
    assert il.tensor.shape == (2, 3, 32, 64)
    assert il.image_sizes == [(30, 41), (17, 64)]
    assert torch.equal(il[0], a) and torch.equal(il[1], b)
    assert (il.tensor[0, :, 30:, :] == -1).all() and (il.tensor[0, :, :, 41:] == -1).all()
    single = ImageList.from_tensors([a], size_divisibility=0)
    assert single.tensor.shape == (1, 3, 30, 41)
    with pytest.raises(ValueError):
        ImageList.from_tensors([torch.ones(3, 4, 4), torch.ones(1, 4, 4)])
