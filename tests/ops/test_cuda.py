"""CUDA kernels vs the CPU kernels (run on a machine with a GPU; skipped otherwise)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from rk_ops_testutils import KINDS, has_cuda, random_boxes, with_nonfinite

from retinakit import ops

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not has_cuda, reason="needs a CUDA GPU and the built extension")]


@pytest.mark.parametrize("n,kind", list(itertools.product((0, 1, 17, 300, 5000), KINDS)))
def test_nms_and_batched_nms_cuda_equal_cpu(n, kind):
    boxes, scores, classes = random_boxes(n, kind, seed=n, num_classes=80)
    scores = with_nonfinite(scores) if kind == "normal" else scores
    for thr in (0.3, 0.5, 0.7):
        assert torch.equal(ops.nms(boxes.cuda(), scores.cuda(), thr).cpu(), ops.nms(boxes, scores, thr))
        got = ops.batched_nms(boxes.cuda(), scores.cuda(), classes.cuda(), thr).cpu()
        assert torch.equal(got, ops.batched_nms(boxes, scores, classes, thr))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_nms_cuda_dtypes_and_autocast(dtype):
    boxes, scores, classes = random_boxes(2000, "normal", seed=1, num_classes=5)
    b, s = boxes.to(dtype), scores.to(dtype)
    assert torch.equal(ops.nms(b.cuda(), s.cuda(), 0.5).cpu(), ops.nms(b, s, 0.5))
    with torch.autocast("cuda", dtype=torch.float16):
        assert torch.equal(ops.batched_nms(b.cuda(), s.cuda(), classes.cuda(), 0.5).cpu(), ops.batched_nms(b, s, classes, 0.5))


@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("n", [0, 1, 500, 3000])
def test_soft_nms_cuda_equal_cpu(method, n):
    boxes, scores, classes = random_boxes(n, "normal", seed=n, num_classes=10)
    k, s = ops.soft_nms(boxes.cuda(), scores.cuda(), classes.cuda(), method, 0.5, 0.3, 0.01)
    rk, rs = ops.soft_nms(boxes, scores, classes, method, 0.5, 0.3, 0.01)
    assert torch.equal(k.cpu(), rk)
    torch.testing.assert_close(s.cpu(), rs, rtol=1e-5, atol=1e-6)


def _heads(n, hws, k, seed, dtype=torch.float32, quantize=False):
    g = torch.Generator().manual_seed(seed)
    cls, box, anc = [], [], []
    for lvl, (h, w) in enumerate(hws):
        c = torch.randn(n, 9 * k, h, w, generator=g) * 1.5 - 4.0
        cls.append((c.round() if quantize else c).to(dtype))
        box.append((torch.randn(n, 36, h, w, generator=g)).to(dtype))
        xy = torch.rand(h * w * 9, 2, generator=g) * 8 * 2 ** lvl * max(h, w)
        anc.append(torch.cat([xy - 16, xy + 16], 1))
    return cls, box, anc


@pytest.mark.parametrize("k,topk,quantize", [(80, 1000, False), (80, 50, True), (1, 7, True), (3, 100000, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_decode_cuda_equal_cpu(k, topk, quantize, dtype):
    cls, box, anc = _heads(3, [(50, 84), (25, 42), (13, 21), (7, 11), (4, 6)], k, seed=k, dtype=dtype, quantize=quantize)
    sizes = torch.tensor([[400, 667], [390, 600], [300, 667]])
    args = (0.05, topk, (1.0, 1.0, 1.0, 1.0), math.log(1000 / 16))
    ref = ops.decode_detections(cls, box, anc, sizes, *args)
    got = ops.decode_detections([c.cuda() for c in cls], [b.cuda() for b in box], [a.cuda() for a in anc], sizes.cuda(), *args)
    got = [t.cpu() for t in got]
    assert torch.equal(got[3], ref[3]) and torch.equal(got[2], ref[2])
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("nms_type", ["batched", "agnostic", "soft"])
def test_multiclass_nms_cuda_equal_cpu(nms_type):
    bs, ss, cs = zip(*[random_boxes(3000, "normal", seed=i, num_classes=80) for i in range(4)])
    boxes, scores, classes = torch.stack(bs), torch.stack(ss), torch.stack(cs)
    valid = torch.tensor([3000, 2500, 0, 1])
    args = (nms_type, 0.5, 100, "gaussian", 0.5, 0.001)
    ref = ops.multiclass_nms(boxes, scores, classes, valid, *args)
    got = ops.multiclass_nms(boxes.cuda(), scores.cuda(), classes.cuda(), valid.cuda(), *args)
    assert torch.equal(got[3].cpu(), ref[3]) and torch.equal(got[2].cpu(), ref[2])
    torch.testing.assert_close(got[1].cpu(), ref[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[0].cpu(), ref[0])


def test_postprocessor_cuda_equal_cpu():
    from retinakit.modeling.box_coder import DeltaXYWHBoxCoder
    from retinakit.modeling.postprocess import RetinaNetPostProcessor

    cls, box, anc = _heads(2, [(100, 167), (50, 84), (25, 42), (13, 21), (7, 11)], 80, seed=5)
    sizes = [(800, 1333), (780, 1300)]
    pp = RetinaNetPostProcessor(box_coder=DeltaXYWHBoxCoder())
    ref = pp(cls, box, anc, sizes)
    got = pp([c.cuda() for c in cls], [b.cuda() for b in box], [a.cuda() for a in anc], sizes)
    for g, r in zip(got, ref):
        assert torch.equal(g.pred_classes.cpu(), r.pred_classes)
        torch.testing.assert_close(g.pred_boxes.tensor.cpu(), r.pred_boxes.tensor, rtol=1e-5, atol=1e-3)
