"""Converted detectron2 / ODTK weights give the source model's outputs in retinakit.

The references below are independent re-implementations of detectron2's and ODTK's RetinaNet
inference (they share no code with ``retinakit.modeling``); the tests convert their state dicts
with the converters, load them into the model built from the matching config and compare:

* detectron2: per anchor (matched by geometry, so the anchor-order permutation is checked
  numerically), the class logits and the decoded boxes;
* ODTK: the final detections (scores, classes, boxes), ResNet-18 and ResNet-50 FPN, default
  and custom anchors, through ``tools/convert_weights.py`` and the config it writes.

Written from those projects' documented behaviour (key names, layer order, anchor order, box
decoding), not from retinakit: they share no code with ``retinakit.modeling``.

* :func:`detectron2_state_dict` - a synthetic detectron2 RetinaNet state dict (key names and
  shapes of detectron2's ResNet-FPN RetinaNet) and :func:`detectron2_dense` - its forward pass
  (functional; FrozenBN; stride on the 1x1 conv) up to per-anchor logits, anchors and boxes.
* :class:`OdtkRetinaNet` - ODTK's model layout (torchvision ResNet ``features``, ``lateral*``,
  ``smooth*``, ``pyramid*``, ``cls_head``/``box_head`` Sequentials) and :func:`odtk_detect` -
  its inference (anchors, +1 box decoding with clamping, per-level top-n, per-class NMS).
"""
from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

D2_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


# ----------------------------------------------------------------------------- detectron2
def detectron2_state_dict(depth: int = 50, num_classes: int = 5, num_anchors: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under detectron2's RetinaNet key names (BN statistics are placeholders;
    :func:`calibrate_detectron2_bn` sets realistic ones)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, out_ch: int, in_ch: int, k: int, bias: bool = False, std: float = 0.0) -> None:
        std = std or math.sqrt(2.0 / (in_ch * k * k))
        sd[name + ".weight"] = torch.randn(out_ch, in_ch, k, k, generator=g) * std
        if bias:
            sd[name + ".bias"] = torch.randn(out_ch, generator=g) * 0.01

    def norm(name: str, ch: int) -> None:
        sd[name + ".weight"] = 0.5 + torch.rand(ch, generator=g)
        sd[name + ".bias"] = torch.randn(ch, generator=g) * 0.1
        sd[name + ".running_mean"] = torch.zeros(ch)
        sd[name + ".running_var"] = torch.ones(ch)

    bottleneck = depth >= 50
    conv("backbone.bottom_up.stem.conv1", 64, 3, 7)
    norm("backbone.bottom_up.stem.conv1.norm", 64)
    in_ch = 64
    stage_channels = {}
    for s, n in zip(range(2, 6), D2_BLOCKS[depth]):
        planes = 64 * 2 ** (s - 2)
        out_ch = planes * 4 if bottleneck else planes
        for b in range(n):
            p = f"backbone.bottom_up.res{s}.{b}"
            if bottleneck:
                conv(p + ".conv1", planes, in_ch, 1)
                conv(p + ".conv2", planes, planes, 3)
                conv(p + ".conv3", out_ch, planes, 1)
                parts = [(".conv1", planes), (".conv2", planes), (".conv3", out_ch)]
            else:
                conv(p + ".conv1", planes, in_ch, 3)
                conv(p + ".conv2", planes, planes, 3)
                parts = [(".conv1", planes), (".conv2", planes)]
            if in_ch != out_ch:
                conv(p + ".shortcut", out_ch, in_ch, 1)
                parts.append((".shortcut", out_ch))
            for part, ch in parts:
                norm(p + part + ".norm", ch)
            in_ch = out_ch
        stage_channels[s] = out_ch
    for s in (3, 4, 5):
        conv(f"backbone.fpn_lateral{s}", 256, stage_channels[s], 1, bias=True)
        conv(f"backbone.fpn_output{s}", 256, 256, 3, bias=True)
    conv("backbone.top_block.p6", 256, stage_channels[5], 3, bias=True)
    conv("backbone.top_block.p7", 256, 256, 3, bias=True)
    for tower, out in (("cls", num_anchors * num_classes), ("bbox", num_anchors * 4)):
        for i in range(4):
            conv(f"head.{tower}_subnet.{2 * i}", 256, 256, 3, bias=True, std=0.01)
        conv(f"head.{'cls_score' if tower == 'cls' else 'bbox_pred'}", out, 256, 3, bias=True, std=0.01 if tower == "cls" else 0.003)
    sd["head.cls_score.bias"] = torch.randn(num_anchors * num_classes, generator=g) - 4.0
    # Buffers detectron2 keeps in some checkpoints; they are not weights.
    sd["pixel_mean"] = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    sd["pixel_std"] = torch.ones(3, 1, 1)
    return sd


def _d2_conv(sd, x, name, stride=1, padding=0):
    return F.conv2d(x, sd[name + ".weight"], sd.get(name + ".bias"), stride, padding)


def _d2_norm(sd, x, name, calibrate):
    if calibrate:  # use the batch statistics and store them as the running ones
        sd[name + ".running_mean"] = x.mean(dim=(0, 2, 3)).detach()
        sd[name + ".running_var"] = x.var(dim=(0, 2, 3), unbiased=False).detach()
    scale = sd[name + ".weight"] / torch.sqrt(sd[name + ".running_var"] + 1e-5)
    shift = sd[name + ".bias"] - sd[name + ".running_mean"] * scale
    return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def detectron2_backbone(sd, x, depth, stride_in_1x1=True, calibrate=False) -> list[torch.Tensor]:
    """detectron2's ResNet (MSRA: stride on the 1x1) + FPN + P6/P7 from res5 -> [p3..p7]."""
    x = F.relu(_d2_norm(sd, _d2_conv(sd, x, "backbone.bottom_up.stem.conv1", 2, 3), "backbone.bottom_up.stem.conv1.norm", calibrate))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    feats = {}
    for s, n in zip(range(2, 6), D2_BLOCKS[depth]):
        for b in range(n):
            p = f"backbone.bottom_up.res{s}.{b}"
            stride = 2 if (b == 0 and s > 2) else 1
            if p + ".shortcut.weight" in sd:
                short = _d2_norm(sd, _d2_conv(sd, x, p + ".shortcut", stride), p + ".shortcut.norm", calibrate)
            else:
                short = x
            if depth >= 50:
                s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
                y = F.relu(_d2_norm(sd, _d2_conv(sd, x, p + ".conv1", s1), p + ".conv1.norm", calibrate))
                y = F.relu(_d2_norm(sd, _d2_conv(sd, y, p + ".conv2", s3, 1), p + ".conv2.norm", calibrate))
                y = _d2_norm(sd, _d2_conv(sd, y, p + ".conv3"), p + ".conv3.norm", calibrate)
            else:
                y = F.relu(_d2_norm(sd, _d2_conv(sd, x, p + ".conv1", stride, 1), p + ".conv1.norm", calibrate))
                y = _d2_norm(sd, _d2_conv(sd, y, p + ".conv2", 1, 1), p + ".conv2.norm", calibrate)
            x = F.relu(y + short)
        feats[s] = x
    prev = _d2_conv(sd, feats[5], "backbone.fpn_lateral5")
    outs = {5: _d2_conv(sd, prev, "backbone.fpn_output5", 1, 1)}
    for s in (4, 3):
        prev = _d2_conv(sd, feats[s], f"backbone.fpn_lateral{s}") + F.interpolate(prev, scale_factor=2.0, mode="nearest")
        outs[s] = _d2_conv(sd, prev, f"backbone.fpn_output{s}", 1, 1)
    p6 = _d2_conv(sd, feats[5], "backbone.top_block.p6", 2, 1)
    p7 = _d2_conv(sd, F.relu(p6), "backbone.top_block.p7", 2, 1)
    return [outs[3], outs[4], outs[5], p6, p7]


def calibrate_detectron2_bn(sd, depth, seed=0) -> None:
    """Set every BN's running statistics from a random batch (realistic activation scale)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        detectron2_backbone(sd, torch.randn(2, 3, 128, 128, generator=g) * 50, depth, calibrate=True)


def detectron2_cell_anchors(sizes, ratios) -> torch.Tensor:
    """detectron2's cell anchors: size-major, ``w = sqrt(size^2 / ratio)``, ``h = ratio * w``."""
    rows = []
    for size in sizes:
        for ratio in ratios:
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            rows.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(rows)


def detectron2_dense(sd, x, depth, num_classes) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per level ``(anchors [HWA, 4], logits [HWA, K], boxes [HWA, 4])`` for one image ``x [1, 3, H, W]``."""
    out = []
    with torch.no_grad():
        feats = detectron2_backbone(sd, x, depth)
        for lvl, f in enumerate(feats):
            stride = 8 * 2**lvl
            base = 32 * 2**lvl
            cell = detectron2_cell_anchors([base, base * 2 ** (1 / 3), base * 2 ** (2 / 3)], [0.5, 1.0, 2.0])
            h, w = f.shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
            shifts = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).float()
            anchors = (shifts + cell.view(1, -1, 4)).reshape(-1, 4)
            c, b = f, f
            for i in range(4):
                c = F.relu(_d2_conv(sd, c, f"head.cls_subnet.{2 * i}", 1, 1))
                b = F.relu(_d2_conv(sd, b, f"head.bbox_subnet.{2 * i}", 1, 1))
            logits = _d2_conv(sd, c, "head.cls_score", 1, 1)
            deltas = _d2_conv(sd, b, "head.bbox_pred", 1, 1)
            a = cell.shape[0]
            logits = logits.view(1, a, num_classes, h, w).permute(0, 3, 4, 1, 2).reshape(-1, num_classes)
            deltas = deltas.view(1, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(-1, 4)
            out.append((anchors, logits, _delta_decode(deltas, anchors)))
    return out


_CLAMP = math.log(1000.0 / 16)


def _delta_decode(deltas, anchors, clamp=_CLAMP):
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    cx = anchors[:, 0] + 0.5 * w + deltas[:, 0] * w
    cy = anchors[:, 1] + 0.5 * h + deltas[:, 1] * h
    pw = torch.exp(deltas[:, 2].clamp(max=clamp)) * w
    ph = torch.exp(deltas[:, 3].clamp(max=clamp)) * h
    return torch.stack([cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2], 1)


# ----------------------------------------------------------------------------- ODTK
class OdtkFPN(nn.Module):
    """ODTK's FPN layout around a torchvision ResNet (``features``)."""

    def __init__(self, features: nn.Module, channels: list[int]) -> None:
        super().__init__()
        self.features = features
        self.lateral3 = nn.Conv2d(channels[0], 256, 1)
        self.lateral4 = nn.Conv2d(channels[1], 256, 1)
        self.lateral5 = nn.Conv2d(channels[2], 256, 1)
        self.pyramid6 = nn.Conv2d(channels[2], 256, 3, stride=2, padding=1)
        self.pyramid7 = nn.Conv2d(256, 256, 3, stride=2, padding=1)
        self.smooth3 = nn.Conv2d(256, 256, 3, padding=1)
        self.smooth4 = nn.Conv2d(256, 256, 3, padding=1)
        self.smooth5 = nn.Conv2d(256, 256, 3, padding=1)

    def forward(self, x):
        r = self.features
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        c2 = r.layer1(x)
        c3 = r.layer2(c2)
        c4 = r.layer3(c3)
        c5 = r.layer4(c4)
        p5 = self.lateral5(c5)
        p4 = self.lateral4(c4) + F.interpolate(p5, scale_factor=2)
        p3 = self.lateral3(c3) + F.interpolate(p4, scale_factor=2)
        p6 = self.pyramid6(c5)
        p7 = self.pyramid7(F.relu(p6))
        return [self.smooth3(p3), self.smooth4(p4), self.smooth5(p5), p6, p7]


def _odtk_head(out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()]
    layers.append(nn.Conv2d(256, out_channels, 3, padding=1))
    return nn.Sequential(*layers)


class OdtkRetinaNet(nn.Module):
    """State-dict layout of ODTK's ``Model`` with one backbone."""

    def __init__(self, name: str, classes: int, ratios=(1.0, 2.0, 0.5), scales=tuple(4 * 2 ** (i / 3) for i in range(3))) -> None:
        super().__init__()
        import torchvision

        arch = name[: -len("FPN")].lower()  # ResNet50FPN -> resnet50, ResNeXt50_32x4dFPN -> resnext50_32x4d
        depth = int(arch.split("_")[0].lstrip("resnxt"))
        features = getattr(torchvision.models, arch)(weights=None)
        channels = [128, 256, 512] if depth < 50 else [512, 1024, 2048]
        self.backbones = nn.ModuleDict({name: OdtkFPN(features, channels)})
        self.ratios, self.scales, self.classes = list(ratios), list(scales), classes
        a = len(ratios) * len(scales)
        self.cls_head = _odtk_head(classes * a)
        self.box_head = _odtk_head(4 * a)

    def checkpoint(self) -> dict:
        return {"backbone": list(self.backbones.keys()), "classes": self.classes, "state_dict": self.state_dict(),
                "ratios": self.ratios, "scales": self.scales}

    def randomize(self, seed: int) -> OdtkRetinaNet:
        """Well-conditioned random weights: calibrated BN statistics with damped residual
        branches (features O(1)), class logits spread over locations with fewer candidates above
        0.05 than the per-level top 1000 (no cut among near-ties), small box deltas."""
        import torchvision

        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    m.weight.normal_(0, math.sqrt(2.0 / fan_in), generator=g)
                    if m.bias is not None:
                        m.bias.normal_(0, 0.01, generator=g)
                elif isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5, generator=g)
                    m.bias.normal_(0, 0.1, generator=g)
            feats = next(iter(self.backbones.values())).features
            for m in feats.modules():  # the last norm of each residual branch
                if isinstance(m, (torchvision.models.resnet.BasicBlock, torchvision.models.resnet.Bottleneck)):
                    (m.bn3 if hasattr(m, "bn3") else m.bn2).weight.mul_(0.3)
            for m in feats.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None
            feats.train()
            feats((torch.rand(2, 3, 128, 128, generator=g) * 255 - 117.0) / 57.6)
            self.eval()
            fpn = next(iter(self.backbones.values()))
            mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
            std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
            x = (torch.rand(1, 3, 128, 256, generator=g) * 255 - mean) / std  # what the test feeds
            tu = _model_testutils()
            tu.condition_heads_(self.cls_head[-1], self.box_head[-1], lambda: [(self.cls_head(f), self.box_head(f)) for f in fpn(x)],
                                seed=seed, logit_std=1.0, logit_mean=-5.0)
        return self


def _model_testutils():
    """tests/modeling/rk_model_testutils.py (generic conditioning helpers), imported by path."""
    import importlib.util
    import sys

    name = "rk_model_testutils"
    if name not in sys.modules:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "modeling", name + ".py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def odtk_anchors(stride: int, ratios, scales) -> torch.Tensor:
    """ODTK's cell anchors: scale-major, ratio-minor, centred at stride/2 of cell (0, 0)."""
    rows = []
    for scale in scales:
        for ratio in ratios:
            w = math.sqrt(stride * stride / ratio)
            h = w * ratio
            rows.append([0.5 * (stride - w * scale), 0.5 * (stride - h * scale),
                         0.5 * (stride + w * scale), 0.5 * (stride + h * scale)])
    return torch.tensor(rows)


def odtk_detect(model: OdtkRetinaNet, x: torch.Tensor, threshold=0.05, top_n=1000, nms=0.5, detections=100):
    """ODTK inference for one normalised image ``x [1, 3, H, W]`` (H, W multiples of 128).

    Returns ``(scores, boxes, classes)`` with boxes in continuous coordinates: ODTK's inclusive
    boxes ``[x1, y1, x2, y2]`` become ``[x1, y1, x2 + 1, y2 + 1]`` (what ODTK writes to COCO JSON).
    """
    import torchvision

    with torch.no_grad():
        feats = next(iter(model.backbones.values()))(x)
        all_s, all_b, all_c = [], [], []
        for f in feats:
            cls = model.cls_head(f).sigmoid()[0]
            box = model.box_head(f)[0]
            h, w = cls.shape[-2:]
            stride = x.shape[-1] // w
            anchors = odtk_anchors(stride, model.ratios, model.scales)
            a = anchors.shape[0]
            k = cls.shape[0] // a
            flat = cls.reshape(-1)  # index = ((anchor * K + class) * H + y) * W + x
            keep = torch.nonzero(flat >= threshold).view(-1)
            scores, order = flat[keep].topk(min(top_n, keep.numel()))
            idx = keep[order]
            xs, ys = idx % w, (idx // w) % h
            classes = (idx // (w * h)) % k
            anc = idx // (k * h * w)
            d = box.view(a, 4, h, w)[anc, :, ys, xs]
            grid = torch.stack([xs, ys, xs, ys], 1).float() * stride + anchors[anc]
            wh = grid[:, 2:] - grid[:, :2] + 1
            ctr = grid[:, :2] + 0.5 * wh
            pctr = d[:, :2] * wh + ctr
            pwh = torch.exp(d[:, 2:]) * wh
            hi = torch.tensor([w * stride - 1.0, h * stride - 1.0])
            x1y1 = torch.max(torch.zeros(2), torch.min(pctr - 0.5 * pwh, hi))
            x2y2 = torch.max(torch.zeros(2), torch.min(pctr + 0.5 * pwh - 1, hi))
            all_s.append(scores)
            all_b.append(torch.cat([x1y1, x2y2 + 1], 1))  # inclusive -> continuous
            all_c.append(classes)
        s, b, c = torch.cat(all_s), torch.cat(all_b), torch.cat(all_c)
        # ODTK's NMS: per class, IoU on inclusive boxes (= IoU of the continuous boxes).
        keep = torchvision.ops.batched_nms(b, s, c, nms)[:detections]
        return s[keep], b[keep], c[keep]


# ----------------------------------------------------------------------------- tests
pytest.importorskip("torchvision")

# after the references (which need no retinakit) and the skip: E402 on purpose
from retinakit.checkpoint.converters import convert  # noqa: E402
from retinakit.checkpoint.model_loading import load_model_weights  # noqa: E402
from retinakit.config import get_cfg  # noqa: E402
from retinakit.modeling import build_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_tool():
    spec = importlib.util.spec_from_file_location("convert_weights", os.path.join(REPO, "tools", "convert_weights.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def model_from_info(info, extra=()):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, info["config"]))
    cfg.merge_from_list([*info.get("config_overrides", []), "MODEL.DEVICE", "cpu", *extra])
    return build_model(cfg).eval()


def _image(h, w, seed):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_detectron2_per_anchor_outputs_match():
    """R-50 (bottleneck stride on the 1x1 conv, BGR caffe input): logits and decoded boxes of
    every anchor equal detectron2's for the anchor of the same geometry."""
    from retinakit.modeling.meta_arch.retinanet import permute_to_N_HWA_K

    k = 5
    sd = detectron2_state_dict(50, num_classes=k, seed=0)
    calibrate_detectron2_bn(sd, 50)
    out, info = convert("detectron2", sd)
    model = model_from_info(info)
    report = load_model_weights(model, {"model": out})
    assert report.missing == [] and report.skipped_class_specific == []
    img = _image(128, 128, 1)
    ref = detectron2_dense(sd, img.float()[None] - torch.tensor([103.53, 116.28, 123.675]).view(1, 3, 1, 1), 50, k)
    with torch.no_grad():
        images = model.preprocess_image([{"image": img}])
        feats = model.backbone(images.tensor)
        feats = [feats[f] for f in model.head_in_features]
        anchors = model.anchor_generator(feats, tuple(images.tensor.shape[-2:]))
        logits, deltas = model.head(feats)
    for lvl, (r_anchors, r_logits, r_boxes) in enumerate(ref):
        a = r_anchors.shape[0] // (feats[lvl].shape[-2] * feats[lvl].shape[-1])
        ours_a = anchors[lvl].view(-1, a, 4)
        ref_a = r_anchors.view(-1, a, 4)
        # pair anchors of each location by geometry (independent of the converter's permutation)
        diff = (ours_a[:, :, None, :] - ref_a[:, None, :, :]).abs().amax(-1)
        pair = diff.argmin(-1)
        assert diff.amin(-1).max() < 1e-3
        assert all(len(set(p.tolist())) == a for p in pair[:3])
        idx = (torch.arange(ours_a.shape[0])[:, None] * a + pair).reshape(-1)
        our_logits = permute_to_N_HWA_K(logits[lvl], k)[0]
        our_boxes = model.box_coder.decode(permute_to_N_HWA_K(deltas[lvl], 4)[0], anchors[lvl])
        torch.testing.assert_close(our_logits, r_logits[idx], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(our_boxes, r_boxes[idx], rtol=1e-4, atol=1e-2)
        # the anchors really are reordered: without the permutation the logits would differ
        assert not torch.allclose(our_logits, r_logits, atol=1e-2)
    with torch.no_grad():
        inst = model([{"image": img}])[0]["instances"]
    assert len(inst) > 0
    boxes = inst.pred_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 128).all()


def _odtk_clamp(boxes: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int]:
    """ODTK clamps ``x1``/``y1`` to ``width - 1``/``height - 1`` (its boxes are inclusive),
    retinakit to ``width``/``height``: the two differ only for boxes starting in or beyond the
    last pixel column/row. Returns the boxes with ODTK's clamp and how many it moved."""
    hi = torch.tensor([width - 1.0, height - 1.0])
    x1y1 = torch.minimum(boxes[:, :2], hi)
    return torch.cat([x1y1, boxes[:, 2:]], dim=1), int((x1y1 != boxes[:, :2]).any(dim=1).sum())


def _assert_same_detections(ours, ref, size):
    """Each detection has a counterpart with the same class, score within 1e-4 and box within
    1e-4 of the largest coordinate, except the few whose NMS decision is a near-tie
    (rk_model_testutils.assert_same_detections; ODTK: threshold 0.05, NMS 0.5, 100 detections).
    Boxes are compared with ODTK's far-edge clamp (:func:`_odtk_clamp`; at most 3 such boxes)."""
    tu = _model_testutils()
    (s, b, c), (rs, rb, rc) = ours, ref
    b, moved = _odtk_clamp(b, *size)
    assert moved <= 3, "too many boxes beyond the image: the test model is badly conditioned"
    nms = tu.NmsSettings(score_thresh=0.05, nms_thresh=0.5, max_detections=100)
    tu.assert_same_detections(tu.Detections(b, s, c), tu.Detections(rb, rs, rc), nms, score_tol=1e-4, box_rtol=1e-4, min_detections=11)


@pytest.mark.parametrize(
    "name, ratios, scales, size",
    [
        ("ResNet18FPN", (1.0, 2.0, 0.5), tuple(4 * 2 ** (i / 3) for i in range(3)), (128, 256)),
        ("ResNet50FPN", (1.0, 2.0, 0.5), tuple(4 * 2 ** (i / 3) for i in range(3)), (256, 128)),
        ("ResNet18FPN", (0.25, 1.0, 3.0, 0.5), (2.0, 3.0), (128, 256)),  # custom anchors: 8 per location
    ],
)
def test_odtk_detections_match(tmp_path, name, ratios, scales, size):
    """ODTK checkpoint -> tools/convert_weights.py -> OUT.yaml + OUT.pth -> same detections."""
    odtk = OdtkRetinaNet(name, classes=4, ratios=ratios, scales=scales)
    torch.manual_seed(0)
    odtk.randomize(seed=3)
    src = tmp_path / "odtk.pth"
    torch.save(odtk.checkpoint(), src)
    dst = tmp_path / "converted.pth"
    assert load_tool().main(["--source", "odtk", str(src), str(dst)]) == 0
    cfg = get_cfg()
    cfg.merge_from_file(str(tmp_path / "converted.yaml"))
    # ODTK keeps boxes predicted beyond the image (clamped onto its last pixel): keep them too.
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.POSTPROCESSOR.FILTER_EMPTY_BOXES", False])
    assert os.path.samefile(cfg.MODEL.WEIGHTS, dst)
    model = build_model(cfg).eval()
    report = load_model_weights(model, torch.load(dst, weights_only=True), cfg=cfg)
    assert report.missing == []
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    img = _image(*size, seed=1)  # a multiple of 128: ODTK's padding is a no-op
    ref = odtk_detect(odtk, ((img.float() - mean) / std)[None])
    with torch.no_grad():
        inst = model([{"image": img}])[0]["instances"]
    _assert_same_detections((inst.scores, inst.pred_boxes.tensor, inst.pred_classes), ref, size)
