"""soft_nms: compiled CPU kernel vs the pure-torch reference."""
from __future__ import annotations

import itertools

import pytest
import torch
from rk_ops_testutils import KINDS, needs_ext, random_boxes, with_nonfinite

from retinakit import ops

pytestmark = needs_ext


@pytest.mark.parametrize("n,kind", list(itertools.product((0, 1, 2, 40, 400), KINDS)))
@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_matches_reference(n, kind, method):
    boxes, scores, classes = random_boxes(n, kind, seed=n + 5, num_classes=3)
    keep, new = ops.soft_nms(boxes, scores, classes, method, 0.5, 0.3, 0.01)
    rk, rn = ops.reference.soft_nms(boxes, scores, classes, method, 0.5, 0.3, 0.01)
    assert keep.dtype == torch.int64 and new.dtype == torch.float32
    assert torch.equal(keep, rk)
    torch.testing.assert_close(new, rn, rtol=1e-6, atol=1e-7)
    assert (new[1:] <= new[:-1]).all()
    assert (new >= 0.01).all()


def test_soft_nms_nonfinite_and_dtypes():
    boxes, scores, classes = random_boxes(300, "normal", seed=9, num_classes=80)
    s = with_nonfinite(scores)
    keep, _ = ops.soft_nms(boxes, s, classes, "gaussian", 0.5, 0.3, 0.001)
    assert torch.isfinite(s[keep]).all()
    assert torch.equal(keep, ops.reference.soft_nms(boxes, s, classes, "gaussian", 0.5, 0.3, 0.001)[0])
    for dt in (torch.float16, torch.bfloat16):
        k, n = ops.soft_nms(boxes.to(dt), scores.to(dt), classes, "linear", 0.5, 0.3, 0.001)
        rk, _ = ops.reference.soft_nms(boxes.to(dt), scores.to(dt), classes, "linear", 0.5, 0.3, 0.001)
        assert torch.equal(k, rk) and n.dtype == torch.float32


def test_soft_nms_linear_below_threshold_keeps_scores():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 12.0], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep, new = ops.soft_nms(boxes, scores, torch.zeros(3, dtype=torch.int64), "linear", 0.5, 0.9, 0.001)
    assert keep.tolist() == [0, 1, 2] and torch.equal(new, scores)  # IoU 0.83 < 0.9: no decay
    keep, new = ops.soft_nms(boxes, scores, torch.zeros(3, dtype=torch.int64), "linear", 0.5, 0.5, 0.001)
    assert keep.tolist() == [0, 2, 1]
    torch.testing.assert_close(new[2], torch.tensor(0.8 * (1 - 100 / 120)))


def test_bad_method():
    with pytest.raises(ValueError, match="linear"):
        ops.soft_nms(torch.zeros(1, 4), torch.ones(1), torch.zeros(1, dtype=torch.int64), "hard")
