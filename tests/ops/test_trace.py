"""Fake kernels: torch.compile and torch.export trace through the ops."""
from __future__ import annotations

import torch
from rk_ops_testutils import needs_ext, random_boxes

from retinakit import ops

pytestmark = needs_ext


class Post(torch.nn.Module):
    def forward(self, c0, c1, b0, b1, a0, a1, sizes):
        b, s, c, n = torch.ops.retinakit.decode_detections([c0, c1], [b0, b1], [a0, a1], sizes, 0.05, 20, [1.0, 1.0, 1.0, 1.0], 4.135)
        return torch.ops.retinakit.multiclass_nms(b, s, c, n, "batched", 0.5, 10, "gaussian", 0.5, 0.001)


def _inputs():
    g = torch.Generator().manual_seed(0)
    c0, c1 = torch.randn(2, 6, 4, 4, generator=g), torch.randn(2, 6, 2, 2, generator=g)
    b0, b1 = torch.randn(2, 12, 4, 4, generator=g), torch.randn(2, 12, 2, 2, generator=g)
    a0 = torch.rand(48, 4, generator=g) * 20
    a1 = torch.rand(12, 4, generator=g) * 40
    a0[:, 2:] += a0[:, :2]
    a1[:, 2:] += a1[:, :2]
    return c0, c1, b0, b1, a0, a1, torch.tensor([[64, 64], [60, 50]])


def test_fake_kernels_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        x = [mode.from_tensor(t) for t in _inputs()]
        b, s, c, n = torch.ops.retinakit.decode_detections(x[:2], x[2:4], x[4:6], x[6], 0.05, 20, [1.0] * 4, 4.0)
        assert b.shape == (2, 40, 4) and s.shape == (2, 40) and c.dtype == torch.int64 and n.shape == (2,)


def test_export_postprocess_graph():
    m = Post()
    inputs = _inputs()
    ep = torch.export.export(m, inputs)
    got, ref = ep.module()(*inputs), m(*inputs)
    for g, r in zip(got, ref):
        assert torch.equal(g, r)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "retinakit.decode_detections.default" in targets and "retinakit.multiclass_nms.default" in targets


def test_compile_nms_with_data_dependent_output():
    boxes, scores, classes = random_boxes(200, "normal", seed=1, num_classes=4)

    def f(b, s, c):
        keep = torch.ops.retinakit.batched_nms(b, s, c, 0.5)
        return b[keep] * 2, torch.ops.retinakit.nms(b, s, 0.5).shape[0]

    for backend in ("eager", "aot_eager"):
        torch._dynamo.reset()
        cf = torch.compile(f, backend=backend, fullgraph=False)
        got, ref = cf(boxes, scores, classes), f(boxes, scores, classes)
        assert torch.equal(got[0], ref[0]) and got[1] == ref[1]


def test_compile_soft_nms_fullgraph():
    boxes, scores, classes = random_boxes(100, "normal", seed=2, num_classes=2)

    def f(b, s, c):
        keep, new = torch.ops.retinakit.soft_nms(b, s, c, "gaussian", 0.5, 0.3, 0.01)
        return keep, new * 1

    torch._dynamo.reset()
    cf = torch.compile(f, backend="aot_eager", fullgraph=True)
    got, ref = cf(boxes, scores, classes), f(boxes, scores, classes)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_wrappers_trace_with_dynamo():
    boxes, scores, _ = random_boxes(100, "normal", seed=3)
    torch._dynamo.reset()
    cf = torch.compile(lambda b, s: ops.nms(b, s, 0.5), backend="eager")
    assert torch.equal(cf(boxes, scores), ops.nms(boxes, scores, 0.5))
