"""nms / batched_nms: compiled CPU kernels vs the pure-torch reference and torchvision."""
from __future__ import annotations

import itertools

import pytest
import torch
import torchvision
from rk_ops_testutils import KINDS, needs_ext, random_boxes, with_nonfinite

from retinakit import ops

pytestmark = needs_ext
SIZES = (0, 1, 2, 17, 300, 2000)


@pytest.mark.parametrize("n,kind", list(itertools.product(SIZES, KINDS)))
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_reference_and_torchvision(n, kind, thr):
    boxes, scores, _ = random_boxes(n, kind, seed=n)
    keep = ops.nms(boxes, scores, thr)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, ops.reference.nms(boxes, scores, thr))
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, thr))


@pytest.mark.parametrize("n,kind", list(itertools.product(SIZES, KINDS)))
@pytest.mark.parametrize("num_classes", [1, 80])
def test_batched_nms_matches_reference_and_torchvision(n, kind, num_classes):
    boxes, scores, classes = random_boxes(n, kind, seed=n + 1, num_classes=num_classes)
    keep = ops.batched_nms(boxes, scores, classes, 0.5)
    assert torch.equal(keep, ops.reference.batched_nms(boxes, scores, classes, 0.5))
    # torchvision's per-class path (exact IoU); its final sort is not stable for equal scores.
    tv = torchvision.ops.boxes._batched_nms_vanilla(boxes, scores, classes, 0.5)
    if kind == "ties":
        assert sorted(keep.tolist()) == sorted(tv.tolist())
    else:
        assert torch.equal(keep, tv)


def test_batched_nms_vs_torchvision_public_api():
    """torchvision.ops.batched_nms (coordinate trick for small inputs) on moderate coordinates."""
    for seed in range(5):
        boxes, scores, classes = random_boxes(500, "normal", seed=seed, num_classes=80)
        assert torch.equal(ops.batched_nms(boxes, scores, classes, 0.5), torchvision.ops.batched_nms(boxes, scores, classes, 0.5))


def test_batched_nms_exact_where_offset_trick_is_not():
    """Huge coordinates x many classes: per-class IoU stays exact (the offset trick rounds)."""
    boxes, scores, classes = random_boxes(800, "huge", seed=3, num_classes=80)
    keep = ops.batched_nms(boxes, scores, classes, 0.5)
    assert torch.equal(keep, ops.reference.batched_nms(boxes, scores, classes, 0.5))
    assert torch.equal(keep, torchvision.ops.boxes._batched_nms_vanilla(boxes, scores, classes, 0.5))


@pytest.mark.parametrize("kind", ["normal", "ties", "inverted"])
def test_nonfinite_scores_are_never_kept(kind):
    boxes, scores, classes = random_boxes(400, kind, seed=7, num_classes=5)
    s = with_nonfinite(scores)
    bad = ~torch.isfinite(s)
    for keep, ref in [
        (ops.nms(boxes, s, 0.5), ops.reference.nms(boxes, s, 0.5)),
        (ops.batched_nms(boxes, s, classes, 0.5), ops.reference.batched_nms(boxes, s, classes, 0.5)),
    ]:
        assert torch.equal(keep, ref)
        assert not bad[keep].any()


def test_ties_lower_index_first():
    boxes = torch.tensor([[0, 0, 10, 10], [100, 100, 110, 110], [0, 0, 10, 10.5], [200, 200, 210, 210]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.5, 0.5])
    assert ops.nms(boxes, scores, 0.5).tolist() == [1, 0, 3]
    assert ops.batched_nms(boxes, scores, torch.tensor([0, 0, 1, 0]), 0.5).tolist() == [1, 0, 2, 3]


def test_identical_zero_area_boxes_are_not_suppressed():
    """IoU of two identical empty boxes is 0/0 = NaN, which never exceeds the threshold (as torchvision)."""
    boxes = torch.tensor([[5, 5, 5, 5], [5, 5, 5, 5], [1, 1, 3, 3.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 1, 2] == torchvision.ops.nms(boxes, scores, 0.5).tolist()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs(dtype):
    boxes, scores, classes = random_boxes(500, "normal", seed=11, num_classes=3)
    b, s = boxes.to(dtype), scores.to(dtype)
    assert torch.equal(ops.nms(b, s, 0.5), ops.reference.nms(b, s, 0.5))
    assert torch.equal(ops.batched_nms(b, s, classes, 0.5), ops.reference.batched_nms(b, s, classes, 0.5))
    if dtype == torch.float64:
        assert torch.equal(ops.nms(b, s, 0.5), torchvision.ops.nms(b, s, 0.5))


def test_autocast_runs_in_float32():
    boxes, scores, classes = random_boxes(300, "normal", seed=12, num_classes=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k = ops.batched_nms(boxes.bfloat16(), scores.bfloat16(), classes, 0.5)
    assert torch.equal(k, ops.reference.batched_nms(boxes.bfloat16(), scores.bfloat16(), classes, 0.5))


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(RuntimeError, match=r"boxes must be \[N, 4\]"):
        ops.nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(RuntimeError, match=r"scores must be \[N\]"):
        ops.nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(RuntimeError, match=r"idxs must be \[N\]"):
        ops.batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, dtype=torch.int64), 0.5)
