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
