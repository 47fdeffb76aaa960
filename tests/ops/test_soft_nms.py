"""soft_nms: compiled CPU kernel vs the pure-torch reference."""
from __future__ import annotations

import itertools
import math

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


def test_soft_nms_negative_scores_keep_selection_order():
    """A decayed negative score grows toward 0: selection order is not score order.

    Boxes 0 and 1 are identical (IoU 1) in category 0, box 2 is alone in category 1. Steps:
    box 2 (-0.3), box 0 (-0.5), then box 1 decayed to -0.6 * exp(-1 / 0.5) > -0.5.
    """
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60.0]])
    scores = torch.tensor([-0.5, -0.6, -0.3])
    classes = torch.tensor([0, 0, 1])
    keep, new = ops.soft_nms(boxes, scores, classes, "gaussian", 0.5, 0.3, -1.0)
    assert keep.tolist() == [2, 0, 1]
    torch.testing.assert_close(new, torch.tensor([-0.3, -0.5, -0.6 * math.exp(-2.0)]))
    rk, rn = ops.reference.soft_nms(boxes, scores, classes, "gaussian", 0.5, 0.3, -1.0)
    assert torch.equal(keep, rk) and torch.equal(new, rn)


def _signed_scores(n: int, seed: int, ties: bool) -> torch.Tensor:
    """Scores in [-1, 1] (ties: quarter steps), with NaN, +inf and -inf mixed in."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(n, generator=g) * 2 - 1
    return with_nonfinite((s * 4).round() / 4 if ties else s, seed=seed)


@pytest.mark.parametrize("n", [1, 40, 400])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("score_threshold", [-math.inf, -0.5, 0.01])
def test_soft_nms_signed_nonfinite_and_tied_scores_match_reference(n, ties, method, score_threshold):
    """Negative, NaN, +/-inf and tied scores: the CPU kernel equals the reference bit for bit."""
    boxes, _, classes = random_boxes(n, "normal", seed=n, num_classes=3)
    scores = _signed_scores(n, n + 1, ties)
    keep, new = ops.soft_nms(boxes, scores, classes, method, 0.5, 0.3, score_threshold)
    rk, rn = ops.reference.soft_nms(boxes, scores, classes, method, 0.5, 0.3, score_threshold)
    assert torch.equal(keep, rk) and torch.equal(new, rn)
    assert torch.isfinite(scores[keep]).all() and (new >= score_threshold).all()


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_multiclass_soft_nms_negative_scores_match_reference(method):
    bs, ss, cs = [], [], []
    for i in range(2):
        b, _, c = random_boxes(200, "ties", seed=i, num_classes=4)
        bs.append(b), ss.append(_signed_scores(200, 10 + i, ties=i == 1)), cs.append(c)
    args = (torch.stack(bs), torch.stack(ss), torch.stack(cs), torch.tensor([200, 150]), "soft", 0.3, 120, method, 0.5, -0.7)
    got, ref = ops.multiclass_nms(*args), ops.reference.multiclass_nms(*args)
    for g, r in zip(got, ref):
        assert torch.equal(g, r)
