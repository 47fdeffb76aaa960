"""Pure-torch reference implementations of every ``torch.ops.retinakit`` op.

They define the semantics the compiled kernels must reproduce bit for bit (same float32
arithmetic order), and are used by the tests. They are slow (Python loops) and are used
by the library only when the user allows it explicitly (see :mod:`retinakit.ops._ext`).

Conventions shared by all NMS ops:

* Boxes are XYXY. IoU follows torchvision's kernels exactly:
  ``area = (x1 - x0) * (y1 - y0)`` (negative for inverted boxes, not clamped),
  ``inter = max(0, min(x1) - max(x0)) * max(0, min(y1) - max(y0))``,
  ``iou = inter / ((area_a + area_b) - inter)`` in the boxes' dtype; a box is suppressed when
  ``iou > threshold`` compared in float64 as torchvision's CPU kernel does (so a NaN IoU, e.g.
  two identical zero-area boxes, never suppresses).
* Order is decreasing score, ties broken by the lower index.
* Boxes whose score is NaN or +/-Inf are never kept.
* float16/bfloat16 boxes and scores are computed in float32; float64 stays float64.

Every float32 exp (the sigmoid of the logits, the box decode's exp(dw), soft-NMS's gaussian
decay) is :func:`exp_f32`, the same operation sequence as the kernels' ``rk_expf``
(``retinakit/_C/rk_exp.h``): device and glibc ``expf`` differ by an ulp, and so do
``torch.exp`` on CPU and CUDA, so one explicit exp makes CPU, CUDA and this reference agree
bit for bit. It is within 1 ulp of the true exp.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "batched_nms",
    "box_iou_matrix",
    "decode_detections",
    "exp_f32",
    "multiclass_nms",
    "nms",
    "select_candidates",
    "sigmoid_f32",
    "soft_nms",
]

# rk_expf's float32 constants (hex: exact on both sides).
_LOG2E = float.fromhex("0x1.715476p+0")
_LN2_HI = float.fromhex("0x1.62e430p-1")
_LN2_LO = -float.fromhex("0x1.05c610p-29")
_TAYLOR = [float.fromhex(h) for h in ("0x1.a01a02p-13", "0x1.6c16c2p-10", "0x1.111112p-7", "0x1.555556p-5", "0x1.555556p-3")]


def _fma_f32(a: Tensor, b: Tensor | float, c: Tensor | float) -> Tensor:
    """Correctly rounded float32 ``a * b + c`` (C's ``fmaf``) of float32 values, elementwise.

    ``a * b`` is exact in float64; the float64 sum is rounded to odd (an inexact sum gets an
    odd last bit), after which rounding to float32 is correct (53 >= 24 + 2 bits).
    """
    p = a.double() * b
    c64 = torch.as_tensor(c, dtype=torch.float64, device=a.device)
    s = p + c64
    t = s - p
    err = (p - (s - t)) + (c64 - t)  # exact s - (p + c) up to sign (TwoSum)
    even = (s.view(torch.int64) & 1) == 0
    towards = torch.where(err > 0, math.inf, -math.inf).to(torch.float64)
    s = torch.where((err != 0) & even, torch.nextafter(s, towards), s)
    return s.float()


def _pow2_f32(k: Tensor) -> Tensor:
    """Exact float32 ``2**k`` of int32 ``k`` in [-126, 127] (built from the exponent bits)."""
    return ((k + 127) << 23).view(torch.float32)


def exp_f32(x: Tensor) -> Tensor:
    """float32 ``exp(x)`` computed as the kernels' ``rk_expf`` (same bits): ``x [*] -> [*]``.

    ``x = n ln2 + r`` (two-part ln2, fmaf steps), degree-7 Taylor polynomial of ``exp(r)``
    by Horner with fmaf, times ``2**n`` as two exact scalings. NaN stays NaN, ``x > 89`` gives
    inf, ``x < -104`` gives 0.
    """
    x = x.float()
    xs = torch.where((x > 89) | (x < -104) | torch.isnan(x), torch.zeros_like(x), x)
    n = torch.round(xs * _LOG2E)  # ties to even, like rintf
    r = _fma_f32(-n, _LN2_HI, xs)
    r = _fma_f32(-n, _LN2_LO, r)
    p = torch.full_like(r, _TAYLOR[0])
    for c in (*_TAYLOR[1:], 0.5, 1.0, 1.0):
        p = _fma_f32(p, r, c)
    k = n.to(torch.int32)
    k1 = torch.div(k, 2, rounding_mode="trunc")
    e = (p * _pow2_f32(k1)) * _pow2_f32(k - k1)
    e = torch.where(x > 89, math.inf, torch.where(x < -104, 0.0, e))
    return torch.where(torch.isnan(x), x, e)


def sigmoid_f32(x: Tensor) -> Tensor:
    """float32 ``1 / (1 + exp_f32(-x))`` (the kernels' sigmoid): ``x [*] -> [*]``."""
    d = 1 + exp_f32(-x)
    return torch.div(torch.ones_like(d), d)


def _exp_like(x: Tensor) -> Tensor:
    """exp in x's precision: :func:`exp_f32` for float32, ``torch.exp`` for float64."""
    return torch.exp(x) if x.dtype == torch.float64 else exp_f32(x)


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def box_iou_matrix(boxes: Tensor) -> Tensor:
    """IoU of every pair of ``boxes [N, 4]`` -> ``[N, N]`` with the formula above."""
    x0, y0, x1, y1 = boxes.unbind(1)
    area = (x1 - x0) * (y1 - y0)
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    # max(0, v) as torchvision's C++ writes it: 0 when v is NaN.
    w = torch.minimum(x1[:, None], x1[None, :]) - torch.maximum(x0[:, None], x0[None, :])
    h = torch.minimum(y1[:, None], y1[None, :]) - torch.maximum(y0[:, None], y0[None, :])
    w = torch.where(w > 0, w, zero)
    h = torch.where(h > 0, h, zero)
    inter = w * h
    return inter / ((area[:, None] + area[None, :]) - inter)


def _sorted_finite(scores: Tensor) -> Tensor:
    """Indices of finite scores, by decreasing score, ties by lower index."""
    cand = torch.nonzero(torch.isfinite(scores)).flatten()
    order = torch.sort(scores[cand], descending=True, stable=True).indices
    return cand[order]


def _greedy(iou_gt: torch.Tensor) -> list[int]:
    """Greedy suppression over a [n, n] bool matrix ``iou > thr`` of score-ordered boxes."""
    import numpy as np

    m = iou_gt.cpu().numpy()
    rem = np.zeros(m.shape[0], dtype=bool)
    keep: list[int] = []
    for i in range(m.shape[0]):
        if rem[i]:
            continue
        keep.append(i)
        rem[i + 1 :] |= m[i, i + 1 :]
    return keep


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Reference of :func:`retinakit.ops.nms`: ``boxes [N, 4]``, ``scores [N]`` -> ``keep [K]`` int64."""
    dt = _compute_dtype(boxes)
    boxes, scores = boxes.to(dt), scores.to(dt)
    order = _sorted_finite(scores)
    if order.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    iou = box_iou_matrix(boxes[order])
    keep = _greedy(iou.double() > iou_threshold)
    return order[torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Reference of :func:`retinakit.ops.batched_nms`: NMS within each ``idxs`` category.

    Exact per-category IoU (no coordinate-offset trick). Returns ``keep [K]`` int64 sorted by
    decreasing score, ties by lower index.
    """
    dt = _compute_dtype(boxes)
    boxes, scores = boxes.to(dt), scores.to(dt)
    keeps = []
    for c in torch.unique(idxs).tolist():
        sel = torch.nonzero(idxs == c).flatten()
        keeps.append(sel[nms(boxes[sel], scores[sel], iou_threshold)])
    if not keeps:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    keep = torch.sort(torch.cat(keeps)).values
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Reference of :func:`retinakit.ops.soft_nms` (per-category soft-NMS).

    Repeatedly selects the remaining box with the highest current score (ties: lower index),
    then decays the current scores of the remaining boxes of the same category by
    ``linear``: ``1 - iou`` when ``iou > iou_threshold``; ``gaussian``: ``exp(-iou^2 / sigma)``
    for every ``iou > 0``. Boxes whose current score drops below ``score_threshold`` (and
    non-finite scores) are discarded. Returns ``keep [K]`` int64 in selection order and
    ``new_scores [K]`` (their scores when selected: non-increasing for non-negative scores; a
    decayed negative score grows toward 0, so it may be selected later with a higher score).
    """
    if method not in ("linear", "gaussian"):
        raise ValueError(f"soft_nms method must be 'linear' or 'gaussian', got {method!r}.")
    dt = _compute_dtype(boxes)
    boxes, cur = boxes.to(dt), scores.to(dt).clone()
    n = boxes.shape[0]
    alive = torch.isfinite(cur) & (cur.double() >= score_threshold)
    iou = box_iou_matrix(boxes) if n else boxes.new_zeros(0, 0)
    same = idxs[:, None] == idxs[None, :]
    keep, new_scores = [], []
    neg_inf = torch.tensor(-math.inf, dtype=dt, device=boxes.device)
    while bool(alive.any()):
        i = int(torch.argmax(torch.where(alive, cur, neg_inf)))
        keep.append(i)
        new_scores.append(cur[i].clone())
        alive[i] = False
        r = iou[i]
        hit = alive & same[i] & (r > 0)
        if method == "linear":
            hit = hit & (r.double() > iou_threshold)
            decay = 1 - r
        else:
            decay = _exp_like(-(r * r) / sigma)
        cur = torch.where(hit, cur * decay, cur)
        alive = alive & (cur.double() >= score_threshold)
    k = torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)
    s = torch.stack(new_scores) if new_scores else cur.new_zeros(0)
    return k, s.to(torch.float32) if dt != torch.float64 else s


def _logit_prefilter(thresh: float) -> float:
    """Logit below which ``sigmoid > thresh`` is impossible (with a margin; as the kernels)."""
    if not thresh > 0:
        return -math.inf
    if thresh >= 1:
        return math.inf
    lg = math.log(thresh) - math.log1p(-thresh)
    return lg - 1e-3 * (1 + abs(lg))


def select_candidates(
    cls_logits: Sequence[Tensor], score_thresh: float, topk: int
) -> list[list[tuple[Tensor, Tensor]]]:
    """Per image, per level: ``(flat_idx [k], scores [k])`` of the top-k sigmoid scores > thresh.

    ``flat_idx`` indexes the level flattened as ``(h, w, a, k)``; order: decreasing score,
    ties by lower index. Scores are float32.
    """
    n_img = cls_logits[0].shape[0] if cls_logits else 0
    out: list[list[tuple[Tensor, Tensor]]] = []
    for n in range(n_img):
        per_level = []
        for logits in cls_logits:
            x = logits[n].float().permute(1, 2, 0).reshape(-1)
            cand = torch.nonzero(x > _logit_prefilter(score_thresh)).flatten()
            s = sigmoid_f32(x[cand])
            keep = s > score_thresh
            idx, s = cand[keep], s[keep]
            order = torch.sort(s, descending=True, stable=True).indices[:topk]
            per_level.append((idx[order], s[order]))
        out.append(per_level)
    return out


def decode_boxes(deltas: Tensor, anchors: Tensor, weights: Sequence[float], scale_clamp: float) -> Tensor:
    """Delta (dx, dy, dw, dh) decode of ``deltas [M, 4]`` against ``anchors [M, 4]`` in float32."""
    d = deltas.float()
    a = anchors.float()
    w = a[:, 2] - a[:, 0]
    h = a[:, 3] - a[:, 1]
    cx = a[:, 0] + 0.5 * w
    cy = a[:, 1] + 0.5 * h
    dx, dy = d[:, 0] / weights[0], d[:, 1] / weights[1]
    dw = torch.clamp(d[:, 2] / weights[2], max=scale_clamp)
    dh = torch.clamp(d[:, 3] / weights[3], max=scale_clamp)
    pcx = dx * w + cx
    pcy = dy * h + cy
    hw = 0.5 * (exp_f32(dw) * w)
    hh = 0.5 * (exp_f32(dh) * h)
    return torch.stack((pcx - hw, pcy - hh, pcx + hw, pcy + hh), dim=1)


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Clamp XYXY ``boxes [M, 4]`` to ``[0, width] x [0, height]`` (NaN stays NaN)."""
    x = boxes[:, 0::2].clamp(min=0, max=width)
    y = boxes[:, 1::2].clamp(min=0, max=height)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)


def num_candidates(cls_logits: Sequence[Tensor], topk: int) -> int:
    """Capacity ``M`` of the decode output: ``sum_l min(topk, A*K*H_l*W_l)``."""
    return sum(min(topk, int(t.shape[1] * t.shape[2] * t.shape[3])) for t in cls_logits)


def decode_detections(
    cls_logits: Sequence[Tensor],
    box_deltas: Sequence[Tensor],
    anchors: Sequence[Tensor],
    image_sizes: Tensor,
    score_thresh: float,
    topk: int,
    weights: Sequence[float],
    scale_clamp: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference of :func:`retinakit.ops.decode_detections` (same inputs and packed outputs)."""
    n_img = cls_logits[0].shape[0]
    dev = cls_logits[0].device
    m = num_candidates(cls_logits, topk)
    boxes = torch.zeros(n_img, m, 4, dtype=torch.float32, device=dev)
    scores = torch.zeros(n_img, m, dtype=torch.float32, device=dev)
    classes = torch.full((n_img, m), -1, dtype=torch.int64, device=dev)
    counts = torch.zeros(n_img, dtype=torch.int64, device=dev)
    sel = select_candidates(cls_logits, score_thresh, topk)
    sizes = image_sizes.tolist()
    for n in range(n_img):
        pos = 0
        for lvl, (flat, s) in enumerate(sel[n]):
            a_num = box_deltas[lvl].shape[1] // 4
            k_num = cls_logits[lvl].shape[1] // a_num
            anchor_idx = flat // k_num
            d = box_deltas[lvl][n].permute(1, 2, 0).reshape(-1, 4)[anchor_idx]
            b = decode_boxes(d, anchors[lvl][anchor_idx], weights, scale_clamp)
            b = clip_boxes(b, int(sizes[n][0]), int(sizes[n][1]))
            k = s.numel()
            boxes[n, pos : pos + k] = b
            scores[n, pos : pos + k] = s
            classes[n, pos : pos + k] = flat % k_num
            pos += k
        counts[n] = pos
    return boxes, scores, classes, counts


def multiclass_nms(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    num_valid: Tensor,
    nms_type: str,
    iou_threshold: float,
    max_detections: int,
    soft_method: str = "gaussian",
    soft_sigma: float = 0.5,
    soft_score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference of :func:`retinakit.ops.multiclass_nms` (same inputs and padded outputs)."""
    n_img = boxes.shape[0]
    dev = boxes.device
    out_b = torch.zeros(n_img, max_detections, 4, dtype=torch.float32, device=dev)
    out_s = torch.zeros(n_img, max_detections, dtype=torch.float32, device=dev)
    out_c = torch.full((n_img, max_detections), -1, dtype=torch.int64, device=dev)
    out_n = torch.zeros(n_img, dtype=torch.int64, device=dev)
    for n in range(n_img):
        v = int(num_valid[n])
        b, s, c = boxes[n, :v].float(), scores[n, :v].float(), classes[n, :v]
        if nms_type == "batched":
            keep = batched_nms(b, s, c, iou_threshold)
            ks = s[keep]
        elif nms_type == "agnostic":
            keep = nms(b, s, iou_threshold)
            ks = s[keep]
        elif nms_type == "soft":
            keep, ks = soft_nms(b, s, c, soft_method, soft_sigma, iou_threshold, soft_score_threshold)
        else:
            raise ValueError(f"nms_type must be 'batched', 'agnostic' or 'soft', got {nms_type!r}.")
        keep, ks = keep[:max_detections], ks[:max_detections]
        d = keep.numel()
        out_b[n, :d] = b[keep]
        out_s[n, :d] = ks
        out_c[n, :d] = c[keep]
        out_n[n] = d
    return out_b, out_s, out_c, out_n
