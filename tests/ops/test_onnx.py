"""ONNX export of retinakit::nms to the standard NonMaxSuppression, checked with onnxruntime."""
from __future__ import annotations

import pytest
import torch
from rk_ops_testutils import needs_ext, random_boxes

from retinakit import ops

pytestmark = needs_ext
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


class NmsModel(torch.nn.Module):
    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return ops.nms(boxes, scores, 0.5)


def test_nms_exports_to_standard_nonmaxsuppression(tmp_path):
    from retinakit.ops.onnx import custom_translation_table

    boxes, scores, _ = random_boxes(300, "normal", seed=0)
    path = tmp_path / "nms.onnx"
    prog = torch.onnx.export(
        NmsModel(), (boxes, scores), dynamo=True, custom_translation_table=custom_translation_table(),
        dynamic_shapes=({0: torch.export.Dim("n")}, {0: torch.export.Dim("n")}),
    )
    prog.save(str(path))
    import onnx

    model = onnx.load(str(path))
    assert "NonMaxSuppression" in {n.op_type for n in model.graph.node}
    assert not any(n.domain.startswith("retinakit") for n in model.graph.node)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed, n in [(1, 300), (2, 57), (3, 1000)]:
        b, s, _ = random_boxes(n, "normal", seed=seed)
        (keep,) = sess.run(None, {sess.get_inputs()[0].name: b.numpy(), sess.get_inputs()[1].name: s.numpy()})
        assert keep.tolist() == ops.nms(b, s, 0.5).tolist()


def _class_scores(n_img: int, m: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``boxes [N, M, 4]``, ``scores [N, C, M]`` (-1 except at each box's class), ``cls [N, M]``, ``s [N, M]``."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n_img, m, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(n_img, m, 2, generator=g) * 20], dim=2)
    cls = torch.randint(0, num_classes, (n_img, m), generator=g)
    s = torch.rand(n_img, m, generator=g)
    scores = torch.full((n_img, num_classes, m), -1.0)
    scores.scatter_(1, cls[:, None, :], s[:, None, :])
    return boxes, scores, cls, s


def test_nms_keep_matches_torchvision_batched_nms():
    """The static-shape keep mask keeps what torchvision's per-class NMS keeps, capped per class."""
    from torchvision.ops import batched_nms

    boxes, scores, cls, s = _class_scores(2, 50, 3, seed=0)
    keep = ops.nms_keep(boxes, scores, 0.5, 0.05, 1000).bool()
    for n in range(2):
        idx = torch.nonzero(s[n] > 0.05).flatten()
        ref = idx[batched_nms(boxes[n, idx], s[n, idx], cls[n, idx], 0.5)]
        assert set(ref.tolist()) == set(torch.nonzero(keep[n]).flatten().tolist())
    capped = ops.nms_keep(boxes, scores, 0.5, 0.05, 2)
    for n in range(2):
        for c in range(3):
            assert int(capped[n][cls[n] == c].sum()) <= 2


class NmsKeepModel(torch.nn.Module):
    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return ops.nms_keep(boxes, scores, 0.5, 0.05, 7)


def test_nms_keep_exports_to_standard_nonmaxsuppression(tmp_path):
    """The same NonMaxSuppression translation serves nms_keep: onnxruntime gives the eager mask."""
    from retinakit.ops.onnx import custom_translation_table

    boxes, scores, _, _ = _class_scores(2, 60, 3, seed=1)
    path = tmp_path / "nms_keep.onnx"
    batch, m = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("m", min=2, max=100000)
    prog = torch.onnx.export(
        NmsKeepModel(), (boxes, scores), dynamo=True, custom_translation_table=custom_translation_table(),
        dynamic_shapes=({0: batch, 1: m}, {0: batch, 2: m}),
    )
    prog.save(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed, (n_img, n_box) in [(2, (2, 60)), (3, (3, 200)), (4, (1, 5))]:
        b, sc, _, _ = _class_scores(n_img, n_box, 3, seed=seed)
        (keep,) = sess.run(None, {sess.get_inputs()[0].name: b.numpy(), sess.get_inputs()[1].name: sc.numpy()})
        assert keep.tolist() == ops.nms_keep(b, sc, 0.5, 0.05, 7).tolist()
