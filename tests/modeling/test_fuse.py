"""fuse_frozen_batchnorm: folded models compute what the unfolded ones compute."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from retinakit.config import get_cfg
from retinakit.modeling import ResNet, build_model, fuse_frozen_batchnorm
from retinakit.modeling.backbone.norm import FrozenBatchNorm2d


def _randomize_frozen_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)


def _count_frozen(model: nn.Module) -> int:
    return sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("depth,pairs", [(18, 1 + 8 * 2 + 3), (50, 1 + 16 * 3 + 4)])
def test_resnet_features_unchanged_and_every_frozen_bn_folded(depth, pairs):
    torch.manual_seed(0)
    net = ResNet(depth=depth, out_features=("res2", "res3", "res4", "res5"), norm="FrozenBN").eval()
    _randomize_frozen_bn(net)
    fused = copy.deepcopy(net)
    assert fuse_frozen_batchnorm(fused) == pairs  # stem + every block conv + each downsample
    assert _count_frozen(fused) == 0
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ref, out = net(x), fused(x)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-4)


def _small_retinanet() -> nn.Module:
    """R18 RetinaNet, 3 classes, every detection kept, seeded weights and frozen-BN statistics."""
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 18, "MODEL.RETINANET.NUM_CLASSES", 3, "MODEL.DEVICE", "cpu",
                         "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0, "INPUT.MIN_SIZE_TEST", 0])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    _randomize_frozen_bn(model)
    return model


def _assert_same_detections(model: nn.Module, other: nn.Module) -> None:
    img = (torch.rand(3, 128, 160) * 255).to(torch.uint8)
    with torch.no_grad():
        a = model([{"image": img}])[0]["instances"]
        b = other([{"image": img}])[0]["instances"]
    assert len(a) == len(b) > 0
    torch.testing.assert_close(b.scores, a.scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
    assert torch.equal(b.pred_classes, a.pred_classes)


def test_retinanet_detections_unchanged():
    model = _small_retinanet()
    fused = copy.deepcopy(model)
    assert fuse_frozen_batchnorm(fused) > 0
    _assert_same_detections(model, fused)


def test_sequential_pairs_with_bias_and_groups():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=True), FrozenBatchNorm2d(8), nn.ReLU(),
                        FrozenBatchNorm2d(8))  # the second norm follows a ReLU: not foldable
    _randomize_frozen_bn(seq)
    x = torch.randn(1, 4, 10, 10)
    ref = seq(x)
    assert fuse_frozen_batchnorm(seq) == 1
    assert isinstance(seq[1], nn.Identity) and isinstance(seq[3], FrozenBatchNorm2d)
    torch.testing.assert_close(seq(x), ref, rtol=1e-5, atol=1e-5)


class _Undeclared(nn.Module):
    """conv1/bn1 siblings whose forward does NOT apply bn1 to conv1's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 1)
        self.bn1 = FrozenBatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x) + self.bn1(x)


def test_pairs_are_folded_only_when_declared():
    m = _Undeclared()
    _randomize_frozen_bn(m)
    x = torch.randn(1, 3, 5, 5)
    ref = m(x)
    assert fuse_frozen_batchnorm(m) == 0
    torch.testing.assert_close(m(x), ref)


def test_trainable_batchnorm_is_left_alone():
    net = ResNet(depth=18, norm="BN").eval()
    assert fuse_frozen_batchnorm(net) == 0
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) > 0


def test_torch_backend_folds_a_copy():
    from retinakit.export.predictor import TorchBackend

    model = _small_retinanet()
    before = _count_frozen(model)
    backend = TorchBackend(model)
    assert before > 0 and _count_frozen(model) == before  # the caller's model is untouched
    assert _count_frozen(backend.model) == 0


def test_prepare_for_inference_channels_last_same_detections():
    from retinakit.modeling import prepare_for_inference

    model = _small_retinanet()
    prepared = prepare_for_inference(copy.deepcopy(model))
    conv = prepared.backbone.bottom_up.conv1 if hasattr(prepared.backbone, "bottom_up") else None
    assert conv is not None and conv.weight.is_contiguous(memory_format=torch.channels_last)
    _assert_same_detections(model, prepared)
