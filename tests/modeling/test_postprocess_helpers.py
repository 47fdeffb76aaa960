"""Shared helpers of the post-processor tests: synthetic RetinaNet heads and torchvision's result."""
from __future__ import annotations

import math
import types

import torch
from torch import Tensor

SCALE_CLAMP = math.log(1000.0 / 16)


class MiniDeltaCoder:
    """Minimal copy of DeltaXYWHBoxCoder (torchvision semantics) for tests."""

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), scale_clamp=SCALE_CLAMP, fused=True):
        self.weights = tuple(weights)
        self.scale_clamp = scale_clamp
        if not fused:
            self.fused_decode_params = None

    def fused_decode_params(self):
        return self.weights, self.scale_clamp

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        from torchvision.models.detection._utils import BoxCoder

        return BoxCoder(self.weights, self.scale_clamp).decode_single(deltas, anchors)


def make_anchors(h: int, w: int, stride: int, size: float) -> Tensor:
    """[H*W*9, 4] XYXY, location-major, anchor-minor (torchvision order)."""
    scales = torch.tensor([size * 2 ** (i / 3) for i in range(3)])
    ratios = torch.tensor([0.5, 1.0, 2.0])
    hr = ratios.sqrt()
    ws = (scales[None, :] / hr[:, None]).reshape(-1)
    hs = (scales[None, :] * hr[:, None]).reshape(-1)
    base = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
    ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
    shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4).float()
    return (shifts + base[None]).reshape(-1, 4)


def make_heads(
    n: int, img_hw: tuple[int, int], num_classes: int = 80, seed: int = 0, mean: float = -5.0, std: float = 1.0,
    dtype: torch.dtype = torch.float32, levels: int = 5,
):
    """Random NCHW head outputs + anchors for P3..P(2+levels) of an ``img_hw`` image."""
    g = torch.Generator().manual_seed(seed)
    a = 9
    cls, box, anchors = [], [], []
    for lvl in range(levels):
        stride = 2 ** (lvl + 3)
        h, w = math.ceil(img_hw[0] / stride), math.ceil(img_hw[1] / stride)
        cls.append((torch.randn(n, a * num_classes, h, w, generator=g) * std + mean).to(dtype))
        box.append((torch.randn(n, a * 4, h, w, generator=g) * 0.5).to(dtype))
        anchors.append(make_anchors(h, w, stride, 4.0 * stride))
    return cls, box, anchors


def to_torchvision_layout(cls: list[Tensor], box: list[Tensor], num_anchors: int = 9):
    """NCHW -> torchvision's per-level [N, H*W*A, K] / [N, H*W*A, 4]."""
    out_c, out_b = [], []
    for c, b in zip(cls, box):
        n, ak, h, w = c.shape
        k = ak // num_anchors
        out_c.append(c.view(n, num_anchors, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k))
        out_b.append(b.view(n, num_anchors, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
    return out_c, out_b


def torchvision_postprocess(cls, box, anchors, image_sizes, score_thresh=0.05, topk=1000, nms_thresh=0.5, max_det=100):
    """torchvision.models.detection.RetinaNet.postprocess_detections on the same head outputs."""
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.retinanet import RetinaNet

    tv_c, tv_b = to_torchvision_layout(cls, box)
    owner = types.SimpleNamespace(
        box_coder=det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)),
        score_thresh=score_thresh, topk_candidates=topk, nms_thresh=nms_thresh, detections_per_img=max_det,
    )
    per_image_anchors = [list(anchors) for _ in image_sizes]
    return RetinaNet.postprocess_detections(owner, {"cls_logits": tv_c, "bbox_regression": tv_b}, per_image_anchors, list(image_sizes))


def drop_empty_reference(boxes: Tensor, scores: Tensor, classes: Tensor, num_valid: Tensor):
    """Per-row loop: keep the valid candidates with width > 0 and height > 0 (same packed layout)."""
    out_b, out_s = torch.zeros_like(boxes), torch.zeros_like(scores)
    out_c, out_n = torch.full_like(classes, -1), torch.zeros_like(num_valid)
    for n in range(boxes.shape[0]):
        rows = [i for i in range(int(num_valid[n])) if boxes[n, i, 2] > boxes[n, i, 0] and boxes[n, i, 3] > boxes[n, i, 1]]
        idx = torch.tensor(rows, dtype=torch.int64)
        out_b[n, : len(rows)], out_s[n, : len(rows)], out_c[n, : len(rows)] = boxes[n, idx], scores[n, idx], classes[n, idx]
        out_n[n] = len(rows)
    return out_b, out_s, out_c, out_n


def inject_bad_deltas(box: list[Tensor], seed: int = 0, frac: float = 0.1) -> list[Tensor]:
    """Copies of ``box`` deltas where ``frac`` of the anchors get inf, -inf, NaN or huge (1e30) values."""
    g = torch.Generator().manual_seed(seed)
    bad = torch.tensor([float("inf"), float("-inf"), 1e30, -1e30, float("nan")])
    out = []
    for b in box:
        b = b.clone()
        n, a4, h, w = b.shape
        d = b.view(n, a4 // 4, 4, h, w)
        hit = torch.rand(n, a4 // 4, 1, h, w, generator=g) < frac
        coord = torch.randint(0, 4, (n, a4 // 4, 1, h, w), generator=g)
        val = bad[torch.randint(0, bad.numel(), (n, a4 // 4, 1, h, w), generator=g)]
        mask = hit & (torch.arange(4)[None, None, :, None, None] == coord)
        d[mask.expand_as(d)] = val.expand_as(d)[mask.expand_as(d)]
        out.append(b)
    return out
