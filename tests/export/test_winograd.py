"""Winograd F(4x4,3x3) rewrite: ONNX Runtime outputs equal torch's direct convolution."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import random_images
from .test_onnx_export import assert_same_detections


def _export(module: torch.nn.Module, x: torch.Tensor, path: str):
    import onnx

    dims = {0: torch.export.Dim("batch", min=1, max=64), 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    program = torch.onnx.export(module, (x,), dynamo=True, dynamic_shapes=({**dims},), verbose=False)
    program.save(path)
    return onnx.load(path)


def _ort(proto, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


def _rel_err(out: np.ndarray, ref: torch.Tensor) -> float:
    return float(np.abs(out - ref.numpy()).max() / ref.abs().max().item())


def test_filter_transform_is_lavins_gw_gt():
    """U[6i+j, k, c] = (G w[k, c] G^T)[i, j], checked on one filter against a plain matrix product."""
    from retinakit.export.winograd import _G, winograd_filter

    w = np.random.default_rng(0).standard_normal((5, 3, 3, 3))
    u = winograd_filter(w)
    assert u.shape == (36, 5, 3) and u.dtype == np.float32
    np.testing.assert_allclose(u[:, 2, 1].reshape(6, 6), _G @ w[2, 1] @ _G.T, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(1, 64, 20, 24), (2, 32, 13, 19), (3, 16, 7, 5), (1, 16, 1, 1)], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_rewritten_conv_equals_torch(tmp_path, shape, bias):
    """Batch, odd sizes (partial tiles, cropped) and 1x1 maps; with and without bias; shapes stay dynamic."""
    from retinakit.export.winograd import winograd_rewrite

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(shape[1], 24, 3, padding=1, bias=bias).eval()
    proto = _export(conv, torch.randn(2, shape[1], 16, 16), str(tmp_path / "conv.onnx"))
    assert winograd_rewrite(proto, min_channels=1) == 1
    assert "Conv" not in [n.op_type for n in proto.graph.node if "winograd" not in n.name]
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = conv(x)
    out = _ort(proto, x)
    assert out.shape == tuple(ref.shape)
    assert _rel_err(out, ref) < 5e-5


class _Mixed(torch.nn.Module):
    """One eligible convolution among ineligible ones (stride 2, 1x1, grouped, dilated, few channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.small = torch.nn.Conv2d(8, 32, 3, padding=1)
        self.eligible = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.strided = torch.nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.pointwise = torch.nn.Conv2d(32, 32, 1)
        self.grouped = torch.nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.dilated = torch.nn.Conv2d(32, 32, 3, padding=2, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.small(x))
        x = torch.relu(self.eligible(x))
        return self.dilated(self.grouped(self.pointwise(self.strided(x))))


def test_only_eligible_convolutions_are_rewritten(tmp_path):
    from retinakit.export.winograd import winograd_rewrite

    torch.manual_seed(0)
    model = _Mixed().eval()
    proto = _export(model, torch.randn(1, 8, 32, 32), str(tmp_path / "mixed.onnx"))
    plain_convs = sum(n.op_type == "Conv" for n in proto.graph.node)
    assert winograd_rewrite(proto, min_channels=16) == 1  # "small" has 8 input channels
    assert sum(n.op_type == "Conv" and "winograd" not in n.name for n in proto.graph.node) == plain_convs - 1
    x = torch.randn(2, 8, 30, 26)
    with torch.no_grad():
        ref = model(x)
    assert _rel_err(_ort(proto, x), ref) < 5e-5


def test_e2e_winograd_detections_equal_plain_export(random_setup, e2e_onnx, tmp_path):
    """The quickstart model's e2e export, rewritten: same detections as PyTorch, metadata kept."""
    from retinakit.data import build_inference_preprocess
    from retinakit.export import Predictor, load_predictor, read_metadata, winograd_onnx
    from retinakit.export.predictor import TorchBackend
    from retinakit.export.winograd import WINOGRAD_ALGORITHM

    cfg, model = random_setup
    path = winograd_onnx(e2e_onnx, str(tmp_path / "model_winograd.onnx"), min_channels=64)
    meta = read_metadata(path)
    assert meta["conv_algorithm"] == WINOGRAD_ALGORITHM and meta["winograd_convs"] > 10
    assert meta["mode"] == "e2e" and meta["size_divisibility"] == read_metadata(e2e_onnx)["size_divisibility"]
    images = random_images([(160, 160), (120, 200), (200, 90)])
    ref = Predictor(TorchBackend(model), build_inference_preprocess(cfg))(images)
    out = load_predictor(path)(images)
    for a, b in zip(ref, out):
        assert_same_detections(a, b)


def test_winograd_onnx_refuses_bad_inputs(e2e_onnx, tmp_path):
    from retinakit.export import winograd_onnx

    with pytest.raises(ValueError, match="does not exist"):
        winograd_onnx(str(tmp_path / "missing.onnx"), str(tmp_path / "out.onnx"))
    with pytest.raises(ValueError, match="nothing to rewrite"):
        winograd_onnx(e2e_onnx, str(tmp_path / "out.onnx"), min_channels=100_000)
    done = winograd_onnx(e2e_onnx, str(tmp_path / "w.onnx"), min_channels=64)
    with pytest.raises(ValueError, match="already a Winograd rewrite"):
        winograd_onnx(done, str(tmp_path / "ww.onnx"), min_channels=64)
