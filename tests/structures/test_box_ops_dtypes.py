"""box_area / pairwise_iou of integer and low-precision boxes against torchvision.ops.

torchvision upcasts before multiplying (ints up to 32 bits -> int32, fp16/bf16 -> float32);
retinakit computes integer boxes in int64 and fp16/bf16 boxes in float32, so the values
must equal torchvision's wherever torchvision itself neither wraps (uint8 differences) nor
overflows (int32 areas past 46,340 px), and then equal a float64 reference.
"""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_area as tv_box_area
from torchvision.ops import box_iou as tv_box_iou

from retinakit.structures import Boxes, box_area, pairwise_iou

# (dtype, largest coordinate): keeps torchvision's int32 union (<= 2 * max^2) from overflowing.
INT_RANGES = [(torch.int8, 127), (torch.uint8, 255), (torch.int16, 30000), (torch.int32, 30000), (torch.int64, 10**6)]
LOW_FLOATS = [torch.float16, torch.bfloat16]


def _int_boxes(n: int, hi: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """``[n, 4]`` well-formed XYXY integer boxes in ``[0, hi]``; every 5th has zero width."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randint(0, hi + 1, (n, 4), generator=g, dtype=torch.int64)
    x0, x1 = torch.minimum(p[:, 0], p[:, 2]), torch.maximum(p[:, 0], p[:, 2])
    y0, y1 = torch.minimum(p[:, 1], p[:, 3]), torch.maximum(p[:, 1], p[:, 3])
    x1[::5] = x0[::5]
    return torch.stack([x0, y0, x1, y1], dim=1).to(dtype)


def _float_boxes(n: int, scale: float, seed: int) -> torch.Tensor:
    """``[n, 4]`` float32 boxes with clusters (overlaps), sides in ``[1, scale / 4]``; some clipped
    at 0 (zero-area boxes among them)."""
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(4, 2, generator=g)[torch.randint(0, 4, (n,), generator=g)] * scale
    ctr = ctr + torch.randn(n, 2, generator=g) * scale * 0.02
    wh = 1.0 + torch.rand(n, 2, generator=g) * scale / 4
    return torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1).clamp(min=0)


def _area64(b: torch.Tensor) -> torch.Tensor:
    d = b.double()
    return (d[:, 2] - d[:, 0]).clamp(min=0) * (d[:, 3] - d[:, 1]).clamp(min=0)


def _iou64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Independent float64 IoU with the retinakit convention (empty union -> 0)."""
    a, b = a.double(), b.double()
    w = (torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp(min=0)
    h = (torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])).clamp(min=0)
    union = _area64(a)[:, None] + _area64(b)[None, :] - w * h
    return torch.where(union > 0, w * h / union.clamp(min=1e-300), torch.zeros_like(union))


@pytest.mark.parametrize("dtype,hi", INT_RANGES)
def test_integer_area_matches_torchvision(dtype, hi):
    boxes = _int_boxes(200, hi, seed=hi, dtype=dtype)
    area = box_area(boxes)
    assert area.dtype == torch.int64
    assert torch.equal(area, tv_box_area(boxes).to(torch.int64))
    assert torch.equal(area.double(), _area64(boxes))
    assert torch.equal(Boxes(boxes).area(), area)


def test_int8_100px_box_does_not_overflow():
    box = torch.tensor([[0, 0, 100, 100], [0, 0, 0, 0]], dtype=torch.int8)
    assert box_area(box).tolist() == [10000, 0]


@pytest.mark.parametrize("dtype,hi", INT_RANGES)
def test_integer_iou_matches_torchvision(dtype, hi):
    a, b = _int_boxes(60, hi, seed=1, dtype=dtype), _int_boxes(45, hi, seed=2, dtype=dtype)
    iou = pairwise_iou(a, b)
    assert iou.dtype == torch.float32 and iou.shape == (60, 45)
    # torchvision subtracts uint8 corners before upcasting (wraps): give it the same values as int16.
    tv_a, tv_b = (a.to(torch.int16), b.to(torch.int16)) if dtype == torch.uint8 else (a, b)
    assert torch.equal(iou, tv_box_iou(tv_a, tv_b).nan_to_num(nan=0.0))  # NaN: both boxes empty
    torch.testing.assert_close(iou.double(), _iou64(a, b), rtol=1e-6, atol=1e-7)
    assert iou.max() > 0.3  # the boxes overlap: the test is not all zeros


def test_uint8_disjoint_boxes_do_not_wrap():
    a = torch.tensor([[0, 0, 10, 10]], dtype=torch.uint8)
    b = torch.tensor([[20, 20, 30, 30], [5, 5, 15, 15]], dtype=torch.uint8)
    assert pairwise_iou(a, b).tolist() == [[0.0, pytest.approx(25 / 175)]]
    assert Boxes(torch.tensor([[10, 10, 5, 20]], dtype=torch.uint8)).nonempty().tolist() == [False]


def test_int32_beyond_int32_area():
    boxes = torch.tensor([[0, 0, 50000, 60000], [10000, 0, 60000, 60000]], dtype=torch.int32)
    assert box_area(boxes).tolist() == [3_000_000_000, 3_000_000_000]
    torch.testing.assert_close(pairwise_iou(boxes, boxes).double(), _iou64(boxes, boxes), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", LOW_FLOATS)
@pytest.mark.parametrize("scale", [200.0, 2000.0, 60000.0])
def test_low_precision_float_matches_torchvision(dtype, scale):
    a, b = _float_boxes(80, scale, 3).to(dtype), _float_boxes(50, scale, 4).to(dtype)
    area, iou = box_area(a), pairwise_iou(a, b)
    assert area.dtype == torch.float32 and iou.dtype == torch.float32
    assert torch.isfinite(area).all() and torch.isfinite(iou).all()
    # Same values as torchvision on the float32 copy of the same boxes (no rounding of ours).
    assert torch.equal(area, tv_box_area(a.float()))
    torch.testing.assert_close(iou, tv_box_iou(a.float(), b.float()).nan_to_num(nan=0.0), rtol=1e-6, atol=1e-7)
    # torchvision on the fp16/bf16 boxes themselves subtracts corners in that precision.
    tol = 2e-3 if dtype == torch.float16 else 2e-2
    torch.testing.assert_close(area, tv_box_area(a), rtol=1e-6, atol=0)
    torch.testing.assert_close(iou, tv_box_iou(a, b).nan_to_num(nan=0.0), rtol=tol, atol=tol)
    torch.testing.assert_close(iou.double(), _iou64(a, b), rtol=1e-5, atol=1e-6)
    assert iou.max() > 0.3


def test_large_fp16_boxes_are_not_zero():
    boxes = torch.tensor([[0, 0, 300, 300], [100, 100, 400, 400], [0, 0, 60000, 60000]], dtype=torch.float16)
    iou = pairwise_iou(boxes, boxes)
    torch.testing.assert_close(iou, tv_box_iou(boxes, boxes), rtol=1e-6, atol=1e-7)
    assert iou.diagonal().tolist() == [1.0, 1.0, 1.0]
    assert box_area(boxes).tolist() == [90000.0, 90000.0, 3.6e9]


@pytest.mark.parametrize(
    "dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16, torch.float32, torch.float64]
)
def test_empty_inputs(dtype):
    empty, some = torch.zeros(0, 4, dtype=dtype), torch.tensor([[0, 0, 4, 4], [1, 1, 2, 2]], dtype=dtype)
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert box_area(empty).shape == (0,)
    for a, b, shape in ((empty, some, (0, 2)), (some, empty, (2, 0)), (empty, empty, (0, 0))):
        iou = pairwise_iou(a, b)
        assert iou.shape == shape and iou.dtype == out_dtype
        assert tv_box_iou(a, b).shape == shape


@pytest.mark.parametrize("dtype", [torch.int16, torch.int64, torch.float16, torch.float32, torch.float64])
def test_degenerate_and_inverted_boxes(dtype):
    """Zero-area boxes as torchvision (empty union -> 0); inverted boxes as their empty collapse."""
    boxes = torch.tensor([[0, 0, 0, 0], [5, 5, 5, 9], [5, 5, 2, 2], [0, 0, 10, 10], [2, 2, 12, 8], [8, 3, 4, 7]], dtype=dtype)
    collapsed = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2])], dim=1)
    assert box_area(boxes).double().tolist() == [0.0, 0.0, 0.0, 100.0, 60.0, 0.0]
    iou = pairwise_iou(boxes, boxes)
    assert torch.isfinite(iou).all()
    torch.testing.assert_close(iou, tv_box_iou(collapsed, collapsed).nan_to_num(nan=0.0).to(iou.dtype), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(iou.double(), _iou64(boxes, boxes), rtol=1e-6, atol=1e-7)


def test_iou_gradient_is_finite_with_empty_pairs():
    boxes = torch.tensor([[0.0, 0, 0, 0], [0, 0, 10, 10], [3, 3, 3, 3]], requires_grad=True)
    pairwise_iou(boxes, boxes).sum().backward()
    assert torch.isfinite(boxes.grad).all()
