"""fuse_frozen_batchnorm: folded models compute what the unfolded ones compute."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from retinakit.config import get_cfg
from retinakit.modeling import ResNet, build_model, fuse_frozen_batchnorm
from retinakit.modeling.backbone.norm import FrozenBatchNorm2d

from rk_model_testutils import (Detections, NmsSettings, assert_close_to_scale, assert_same_detections,  # isort: skip
                                condition_backbone_, condition_heads_)


def _randomize_frozen_bn(model: nn.Module, seed: int = 0) -> None:
    """Random statistics for small modules (no depth: stay well-conditioned without damping)."""
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


def _resnet(depth: int) -> ResNet:
    """Seeded ResNet with damped residual branches and calibrated frozen-BN statistics (O(1) features)."""
    torch.manual_seed(0)
    net = ResNet(depth=depth, out_features=("res2", "res3", "res4", "res5"), norm="FrozenBN").eval()
    calib = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    condition_backbone_(net, lambda: net(calib), seed=depth)
    return net


@pytest.mark.parametrize("depth,pairs", [(18, 1 + 8 * 2 + 3), (50, 1 + 16 * 3 + 4)])
def test_resnet_features_unchanged_and_every_frozen_bn_folded(depth, pairs):
    net = _resnet(depth)
    fused = copy.deepcopy(net)
    assert fuse_frozen_batchnorm(fused) == pairs  # stem + every block conv + each downsample
    assert _count_frozen(fused) == 0
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, out = net(x), fused(x)
    for k in ref:
        assert 0.5 < float(ref[k].abs().max()) < 50, f"{k}: features should be O(1)"
        assert_close_to_scale(out[k], ref[k], rtol=1e-4, name=k)


def _calibration_images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [(torch.rand(3, 128, 160, generator=g) * 255).to(torch.uint8) for _ in range(2)]


# The small model's post-processing: every candidate above 0.05, NMS at 0.5, 100 detections.
_NMS = NmsSettings(score_thresh=0.05, nms_thresh=0.5, max_detections=100)


def _small_retinanet() -> nn.Module:
    """R18 RetinaNet, 3 classes, seeded weights; O(1) features, spread scores, boxes near anchors."""
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 18, "MODEL.RETINANET.NUM_CLASSES", 3, "MODEL.DEVICE", "cpu",
                         "MODEL.RETINANET.SCORE_THRESH_TEST", _NMS.score_thresh, "MODEL.RETINANET.NMS_THRESH_TEST", _NMS.nms_thresh,
                         "TEST.DETECTIONS_PER_IMAGE", _NMS.max_detections, "INPUT.MIN_SIZE_TEST", 0])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = [{"image": im} for im in _calibration_images()]
    with torch.no_grad():
        images = model.preprocess_image(batch)
        condition_backbone_(model.backbone, lambda: model.backbone(images.tensor), seed=0)
        condition_heads_(model.head.cls_score, model.head.bbox_pred, lambda: model.inference_outputs(images), seed=0)
    return model


def _assert_same_detections(model: nn.Module, other: nn.Module) -> None:
    img = (torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    with torch.no_grad():
        a = Detections.of(model([{"image": img}])[0]["instances"])
        b = Detections.of(other([{"image": img}])[0]["instances"])
    assert len(a) >= 50 and float(a.scores.max()) > 0.3, "the test model should give confident, spread detections"
    assert_same_detections(b, a, _NMS, score_tol=1e-4, box_rtol=1e-4)


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
