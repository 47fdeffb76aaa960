"""CUDA kernels vs the CPU kernels (run on a machine with a GPU; skipped otherwise).

CPU and CUDA share one exp, so scores are compared bit for bit (``torch.equal``); decoded
boxes within a small absolute tolerance. Skipped unless :func:`retinakit.ops.has_cuda` (the
extension's CUDA kernels are registered and a GPU is visible).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from rk_ops_testutils import KINDS, has_cuda, random_boxes, with_nonfinite

from retinakit import ops

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not has_cuda, reason=f"needs CUDA: {ops.cuda_unavailable_reason()}")]
two_gpus = pytest.mark.skipif(not has_cuda or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
GRID_LIMIT = r"65535|65,535|too many"
DECODE_ARGS = (0.05, (1.0, 1.0, 1.0, 1.0), math.log(1000 / 16))  # score_thresh, weights, scale_clamp


def _same(got, ref):
    """Bit-equal values (NaN where the CPU result has NaN), same dtype and shape."""
    got = got.cpu()
    assert got.dtype == ref.dtype and got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True)


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
    assert torch.equal(s.cpu(), rs)


def _assert_decode_equal(got, ref):
    """Decode outputs (boxes, scores, classes, num_valid) on any device vs the CPU kernel's."""
    got = [t.cpu() for t in got]
    assert all(g.shape == r.shape and g.dtype == r.dtype for g, r in zip(got, ref))
    assert torch.equal(got[3], ref[3]) and torch.equal(got[2], ref[2]) and torch.equal(got[1], ref[1])
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-3)


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
    _assert_decode_equal(got, ref)


@pytest.mark.parametrize("nms_type", ["batched", "agnostic", "soft"])
def test_multiclass_nms_cuda_equal_cpu(nms_type):
    bs, ss, cs = zip(*[random_boxes(3000, "normal", seed=i, num_classes=80) for i in range(4)])
    boxes, scores, classes = torch.stack(bs), torch.stack(ss), torch.stack(cs)
    valid = torch.tensor([3000, 2500, 0, 1])
    args = (nms_type, 0.5, 100, "gaussian", 0.5, 0.001)
    ref = ops.multiclass_nms(boxes, scores, classes, valid, *args)
    got = ops.multiclass_nms(boxes.cuda(), scores.cuda(), classes.cuda(), valid.cuda(), *args)
    assert torch.equal(got[3].cpu(), ref[3]) and torch.equal(got[2].cpu(), ref[2])
    assert torch.equal(got[1].cpu(), ref[1])
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
        assert torch.equal(g.pred_classes.cpu(), r.pred_classes) and torch.equal(g.scores.cpu(), r.scores)
        torch.testing.assert_close(g.pred_boxes.tensor.cpu(), r.pred_boxes.tensor, rtol=1e-5, atol=1e-3)


def _to(tensors, device):
    return [t.to(device) for t in tensors]


def _decode_on(cls, box, anc, sizes, topk, device):
    """decode_detections with every input on ``device``."""
    thr, weights, clamp = DECODE_ARGS
    return ops.decode_detections(_to(cls, device), _to(box, device), _to(anc, device), sizes.to(device), thr, topk, weights, clamp)


# ---- devices and streams -------------------------------------------------------------------


@two_gpus
def test_all_ops_on_second_gpu():
    """Inputs on cuda:1 while cuda:0 is current: outputs on cuda:1, equal to CPU."""
    with torch.cuda.device(0):
        _check_ops_on(torch.device("cuda:1"))


def _check_ops_on(dev):
    boxes, scores, classes = random_boxes(3000, "normal", seed=11, num_classes=20)
    b, s, c = boxes.to(dev), scores.to(dev), classes.to(dev)
    keep = ops.nms(b, s, 0.5)
    assert keep.device == dev and torch.equal(keep.cpu(), ops.nms(boxes, scores, 0.5))
    assert torch.equal(ops.batched_nms(b, s, c, 0.5).cpu(), ops.batched_nms(boxes, scores, classes, 0.5))
    k, sc = ops.soft_nms(b, s, c, "gaussian", 0.5, 0.3, 0.01)
    rk, rs = ops.soft_nms(boxes, scores, classes, "gaussian", 0.5, 0.3, 0.01)
    assert sc.device == dev and torch.equal(k.cpu(), rk) and torch.equal(sc.cpu(), rs)
    cls, box, anc = _heads(2, [(25, 42), (13, 21), (7, 11)], 10, seed=11)
    sizes = torch.tensor([[200, 333], [190, 300]])
    got = _decode_on(cls, box, anc, sizes, 300, dev)
    assert all(t.device == dev for t in got)
    _assert_decode_equal(got, _decode_on(cls, box, anc, sizes, 300, "cpu"))
    args = ("batched", 0.5, 100, "gaussian", 0.5, 0.001)
    cand = _decode_on(cls, box, anc, sizes, 300, "cpu")
    mc = ops.multiclass_nms(*_to(cand, dev), *args)
    assert all(t.device == dev for t in mc)
    for g, r in zip(mc, ops.multiclass_nms(*cand, *args)):
        _same(g, r)


def test_all_ops_on_a_side_stream():
    """Ops launched on the current (side) stream: the inputs are written on that stream after a
    long sleep, so a kernel launched on another stream would read the zeros still there."""
    boxes, scores, classes = random_boxes(4000, "normal", seed=12, num_classes=20)
    cls, box, anc = _heads(2, [(25, 42), (13, 21)], 10, seed=12)
    sizes = torch.tensor([[200, 333], [190, 300]])
    srcs = _to([boxes, scores, classes, *cls, *box], "cuda")
    dsts = [torch.zeros_like(t) for t in srcs]
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)
        for d, t in zip(dsts, srcs):
            d.copy_(t, non_blocking=True)
        b, s, c = dsts[:3]
        keep = ops.nms(b, s, 0.5)
        bkeep = ops.batched_nms(b, s, c, 0.5)
        soft = ops.soft_nms(b, s, c, "linear", 0.5, 0.3, 0.01)
        dec = ops.decode_detections(dsts[3:5], dsts[5:7], _to(anc, "cuda"), sizes.cuda(), DECODE_ARGS[0], 300, *DECODE_ARGS[1:])
        mc = ops.multiclass_nms(*dec, "agnostic", 0.5, 100, "gaussian", 0.5, 0.001)
    side.synchronize()
    assert torch.equal(keep.cpu(), ops.nms(boxes, scores, 0.5))
    assert torch.equal(bkeep.cpu(), ops.batched_nms(boxes, scores, classes, 0.5))
    rk, rs = ops.soft_nms(boxes, scores, classes, "linear", 0.5, 0.3, 0.01)
    _same(soft[0], rk)
    _same(soft[1], rs)
    ref = _decode_on(cls, box, anc, sizes, 300, "cpu")
    _assert_decode_equal(dec, ref)
    rmc = ops.multiclass_nms(*ref, "agnostic", 0.5, 100, "gaussian", 0.5, 0.001)
    for g, r in zip(mc[1:], rmc[1:]):
        _same(g, r)
    torch.testing.assert_close(mc[0].cpu(), rmc[0], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("nms_type", ["batched", "agnostic"])
def test_decode_and_multiclass_nms_in_cuda_graph(nms_type):
    """decode_detections + multiclass_nms (fixed-size outputs) captured in a CUDA graph and
    replayed on new inputs copied into the captured buffers: equal to CPU on those inputs."""
    hws, k, sizes = [(25, 42), (13, 21), (7, 11)], 10, torch.tensor([[200, 333], [190, 300]])
    cls0, box0, anc = _heads(2, hws, k, seed=13)
    cls1, box1, _ = _heads(2, hws, k, seed=14)
    s_cls, s_box, s_anc, s_sizes = _to(cls0, "cuda"), _to(box0, "cuda"), _to(anc, "cuda"), sizes.cuda()
    args = (nms_type, 0.5, 100, "gaussian", 0.5, 0.001)

    def run():
        dec = ops.decode_detections(s_cls, s_box, s_anc, s_sizes, DECODE_ARGS[0], 300, *DECODE_ARGS[1:])
        return dec, ops.multiclass_nms(*dec, *args)

    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dec, mc = run()
    for cls, box in ((cls0, box0), (cls1, box1)):
        for dst, src in zip(s_cls + s_box, cls + box):
            dst.copy_(src)
        graph.replay()
        torch.cuda.synchronize()
        ref = _decode_on(cls, box, anc, sizes, 300, "cpu")
        _assert_decode_equal(dec, ref)
        rmc = ops.multiclass_nms(*ref, *args)
        for g, r in zip(mc[1:], rmc[1:]):
            _same(g, r)
        torch.testing.assert_close(mc[0].cpu(), rmc[0], rtol=1e-5, atol=1e-3)
        assert int(rmc[3].sum()) > 0


# ---- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n,kind", [(16449, "normal"), (20000, "ties"), (40000, "normal"), (70000, "zero_area")])
def test_nms_beyond_one_reduce_stride(n, kind):
    """More than 257 64-box column blocks (16,448 boxes): the reduce kernel's 256 threads loop over
    the later blocks with a stride when they clear the boxes a kept block suppresses."""
    boxes, scores, classes = random_boxes(n, kind, seed=n, num_classes=50)
    keep = ops.nms(boxes, scores, 0.5)
    _same(ops.nms(boxes.cuda(), scores.cuda(), 0.5), keep)
    _same(ops.batched_nms(boxes.cuda(), scores.cuda(), classes.cuda(), 0.5), ops.batched_nms(boxes, scores, classes, 0.5))
    assert 0 < keep.numel() < n  # boxes were suppressed (across column blocks far apart in score order)


def test_multiclass_nms_beyond_one_reduce_stride():
    bs, ss, cs = zip(*[random_boxes(20000, "normal", seed=20 + i, num_classes=30) for i in range(2)])
    boxes, scores, classes = torch.stack(bs), torch.stack(ss), torch.stack(cs)
    valid = torch.tensor([20000, 17000])
    for nms_type in ("batched", "agnostic"):
        args = (nms_type, 0.5, 20000, "gaussian", 0.5, 0.001)
        ref = ops.multiclass_nms(boxes, scores, classes, valid, *args)
        got = ops.multiclass_nms(boxes.cuda(), scores.cuda(), classes.cuda(), valid.cuda(), *args)
        for g, r in zip(got, ref):
            _same(g, r)
        assert (ref[3] < valid).all() and (ref[3] > 0).all()


def test_more_than_65535_images_is_a_clear_error():
    n = 65536
    cls = [torch.zeros(n, 1, 1, 1, device="cuda")]
    box = [torch.zeros(n, 4, 1, 1, device="cuda")]
    anc = [torch.tensor([[0.0, 0.0, 8.0, 8.0]], device="cuda")]
    sizes = torch.full((n, 2), 16, dtype=torch.int64, device="cuda")
    with pytest.raises(RuntimeError, match=GRID_LIMIT):
        ops.decode_detections(cls, box, anc, sizes, 0.05, 10, *DECODE_ARGS[1:])
    boxes = torch.tensor([0.0, 0.0, 8.0, 8.0], device="cuda").expand(n, 2, 4).contiguous()
    scores, classes = torch.ones(n, 2, device="cuda"), torch.zeros(n, 2, dtype=torch.int64, device="cuda")
    valid = torch.full((n,), 2, dtype=torch.int64, device="cuda")
    for nms_type in ("batched", "agnostic"):
        with pytest.raises(RuntimeError, match=GRID_LIMIT):
            ops.multiclass_nms(boxes, scores, classes, valid, nms_type, 0.5, 10, "gaussian", 0.5, 0.001)


def test_more_boxes_than_the_grid_holds_is_a_clear_error():
    """ceil(M / 64) column blocks on gridDim.y: more than 65,535 * 64 boxes in one NMS."""
    m = 65535 * 64 + 1
    boxes = torch.rand(m, 4, device="cuda").cumsum(1)
    scores = torch.rand(m, device="cuda")
    with pytest.raises(RuntimeError, match=GRID_LIMIT):
        ops.nms(boxes, scores, 0.5)
    with pytest.raises(RuntimeError, match=GRID_LIMIT):
        ops.batched_nms(boxes, scores, torch.zeros(m, dtype=torch.int64, device="cuda"), 0.5)


# ---- soft-NMS scores ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("case", ["nonfinite", "negative", "ties"])
def test_soft_nms_special_scores_cuda_equal_cpu(method, case):
    boxes, scores, classes = random_boxes(800, "ties" if case == "ties" else "normal", seed=30, num_classes=5)
    if case == "nonfinite":
        scores = with_nonfinite(scores, seed=30)
    elif case == "negative":
        scores = scores * 2 - 1.5  # mostly negative, some below -1
    for score_thr in (0.01, -1.0):
        k, s = ops.soft_nms(boxes.cuda(), scores.cuda(), classes.cuda(), method, 0.5, 0.3, score_thr)
        rk, rs = ops.soft_nms(boxes, scores, classes, method, 0.5, 0.3, score_thr)
        _same(k, rk)
        _same(s, rs)
    bs, ss, cs = zip(*[(boxes, scores, classes)] * 2)
    args = ("soft", 0.3, 200, method, 0.5, 0.001)
    valid = torch.tensor([800, 333])
    got = ops.multiclass_nms(torch.stack(bs).cuda(), torch.stack(ss).cuda(), torch.stack(cs).cuda(), valid.cuda(), *args)
    ref = ops.multiclass_nms(torch.stack(bs), torch.stack(ss), torch.stack(cs), valid, *args)
    for g, r in zip(got, ref):
        _same(g, r)


# ---- decode inputs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtypes,channels_last",
    [
        ((torch.float64,) * 3, False),
        ((torch.float32,) * 3, True),
        ((torch.float16, torch.float32, torch.bfloat16), False),
        ((torch.float64, torch.float16, torch.float32), True),
    ],
    ids=["fp64", "channels_last", "mixed", "mixed_channels_last"],
)
def test_decode_layouts_and_dtypes_cuda_equal_cpu(dtypes, channels_last):
    cls, box, anc = _heads(2, [(25, 42), (13, 21), (7, 11)], 20, seed=40)
    cls = [c.to(dt) for c, dt in zip(cls, dtypes)]
    box = [b.to(dt) for b, dt in zip(box, dtypes)]
    if channels_last:
        cls = [c.contiguous(memory_format=torch.channels_last) for c in cls]
        box = [b.contiguous(memory_format=torch.channels_last) for b in box]
    sizes = torch.tensor([[200, 333], [190, 300]])
    ref = _decode_on(cls, box, anc, sizes, 500, "cpu")
    assert int(ref[3].min()) > 0
    _assert_decode_equal(_decode_on(cls, box, anc, sizes, 500, "cuda"), ref)


@pytest.mark.parametrize("hws,topk", [([(25, 42), (13, 21)], 0), ([(25, 42), (0, 21), (13, 0)], 100), ([(0, 4)], 10)])
def test_decode_topk_zero_and_empty_levels_cuda_equal_cpu(hws, topk):
    cls, box, anc = _heads(2, hws, 5, seed=41)
    sizes = torch.tensor([[200, 333], [190, 300]])
    ref = _decode_on(cls, box, anc, sizes, topk, "cpu")
    _assert_decode_equal(_decode_on(cls, box, anc, sizes, topk, "cuda"), ref)


def test_decode_ties_at_the_kth_value_decide_the_candidates():
    """Every level holds many logits equal to its k-th largest value: which of the tied scores
    enter the top-k (the lower flat indices) decides the candidate set and boxes."""
    n, k, hws, topk = 2, 4, [(40, 50), (20, 25), (10, 13)], 200
    cls, box, anc = _heads(n, hws, k, seed=42)
    g = torch.Generator().manual_seed(42)
    for c in cls:
        flat = c.view(n, -1)
        flat.fill_(-6.0)  # below the threshold
        hot = torch.randperm(flat.shape[1], generator=g)[: topk // 2]
        flat[:, hot] = 2.0  # above the k-th value
        tied = torch.randperm(flat.shape[1], generator=g)[: topk * 3]
        tied = tied[~torch.isin(tied, hot)]
        flat[:, tied] = 0.5  # the k-th value, shared by ~2.5 * topk entries
    sizes = torch.tensor([[320, 400], [300, 380]])
    ref = _decode_on(cls, box, anc, sizes, topk, "cpu")
    assert torch.equal(ref[3], torch.tensor([topk * 3, topk * 3]))
    tied = (ref[1] > 0.6) & (ref[1] < 0.65)  # sigmoid(0.5) = 0.6225; sigmoid(2) = 0.88
    assert 0 < int(tied.sum()) < topk * 3 * n  # some tied scores made it in, not all of them
    _assert_decode_equal(_decode_on(cls, box, anc, sizes, topk, "cuda"), ref)
