"""Post-processing: retinakit vs torchvision's RetinaNet.postprocess_detections.

Generates head outputs of a RetinaNet R50-FPN (P3-P7, 9 anchors, 80 classes) for an
800x1333 input with a realistic logit distribution (background around the focal-loss prior,
plus object blobs), so a few thousand candidates pass the 0.05 threshold, and times in the
same run:

* retinakit  - RetinaNetPostProcessor (compiled decode + multiclass NMS) on NCHW head outputs,
* torchvision - RetinaNet.postprocess_detections on the same outputs in its own layout
  (the NCHW -> [N, HWA, K] permute is done before timing, in torchvision's favour),
* tv-batched_nms - a plain batched torch pipeline (sigmoid, threshold, batched top-k, decode)
  followed by torchvision.ops.batched_nms per image.

Detections are compared with torchvision's (same classes, boxes within 1e-3).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

# Run from a source checkout without installing: make the repository importable.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

NUM_ANCHORS = 9
SCALE_CLAMP = math.log(1000.0 / 16)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--image-size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (torch.set_num_threads)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the results to this JSON file")


class _Coder:
    """Delta coder with torchvision's weights (1, 1, 1, 1) for the fused path."""

    weights = (1.0, 1.0, 1.0, 1.0)
    scale_clamp = SCALE_CLAMP

    def fused_decode_params(self) -> tuple[tuple[float, ...], float]:
        return self.weights, self.scale_clamp


def make_anchors(h: int, w: int, stride: int) -> Tensor:
    """[H*W*9, 4] anchors of size 4*stride, 3 octaves x 3 ratios, location-major."""
    scales = torch.tensor([4.0 * stride * 2 ** (i / 3) for i in range(3)])
    hr = torch.tensor([0.5, 1.0, 2.0]).sqrt()
    ws = (scales[None, :] / hr[:, None]).reshape(-1)
    hs = (scales[None, :] * hr[:, None]).reshape(-1)
    base = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
    ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
    shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4).float()
    return (shifts + base[None]).reshape(-1, 4)


def make_heads(n: int, img_hw: tuple[int, int], k: int, seed: int, objects: int = 25):
    """NCHW logits/deltas + anchors. Background ~ N(-6.5, 1); each object is a 3x3-location
    blob of one class on one or two adjacent levels with logits ~ N(-1, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    cls, box, anchors = [], [], []
    for lvl in range(5):
        stride = 2 ** (lvl + 3)
        h, w = math.ceil(img_hw[0] / stride), math.ceil(img_hw[1] / stride)
        c = torch.randn(n, NUM_ANCHORS * k, h, w, generator=g) - 6.5
        cls.append(c)
        box.append(torch.randn(n, NUM_ANCHORS * 4, h, w, generator=g) * 0.3)
        anchors.append(make_anchors(h, w, stride))
    for i in range(n):
        for _ in range(objects):
            lvl = int(torch.randint(0, 4, (1,), generator=g))
            kk = int(torch.randint(0, k, (1,), generator=g))
            for ll in (lvl, lvl + 1):
                _, _, h, w = cls[ll].shape
                y, x = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
                ys, xs = slice(max(0, y - 1), y + 2), slice(max(0, x - 1), x + 2)
                ch = torch.arange(NUM_ANCHORS) * k + kk
                blob = cls[ll][i, ch, ys, xs]
                cls[ll][i, ch, ys, xs] = torch.randn(blob.shape, generator=g) * 1.5 - 1.0
    return cls, box, anchors


def _tv_layout(cls: list[Tensor], box: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    out_c, out_b = [], []
    for c, b in zip(cls, box):
        n, ak, h, w = c.shape
        k = ak // NUM_ANCHORS
        out_c.append(c.view(n, NUM_ANCHORS, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k).contiguous())
        out_b.append(b.view(n, NUM_ANCHORS, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4).contiguous())
    return out_c, out_b


def torchvision_fn(cls, box, anchors, sizes) -> Callable[[], Any]:
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.retinanet import RetinaNet

    tv_c, tv_b = _tv_layout(cls, box)
    owner = types.SimpleNamespace(
        box_coder=det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)), score_thresh=0.05, topk_candidates=1000,
        nms_thresh=0.5, detections_per_img=100,
    )
    heads = {"cls_logits": tv_c, "bbox_regression": tv_b}
    per_image = [list(anchors) for _ in sizes]
    return lambda: RetinaNet.postprocess_detections(owner, heads, per_image, sizes)


def plain_pipeline_fn(cls, box, anchors, sizes) -> Callable[[], Any]:
    """Batched torch threshold/top-k/decode, then torchvision.ops.batched_nms per image."""
    from torchvision.models.detection import _utils as det_utils
    from torchvision.ops import batched_nms, clip_boxes_to_image

    tv_c, tv_b = _tv_layout(cls, box)
    coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))

    def run():
        n = tv_c[0].shape[0]
        bs, ss, ls = [], [], []
        for c, b, a in zip(tv_c, tv_b, anchors):
            k = c.shape[-1]
            s = torch.sigmoid(c.flatten(1))
            s = torch.where(s > 0.05, s, torch.zeros((), dtype=s.dtype))
            top, idx = s.topk(min(1000, s.shape[1]), dim=1)
            anc = idx // k
            d = torch.gather(b, 1, anc[..., None].expand(-1, -1, 4))
            boxes = coder.decode_single(d.reshape(-1, 4), a[anc.reshape(-1)]).reshape(n, -1, 4)
            bs.append(boxes), ss.append(top), ls.append(idx % k)
        boxes, scores, labels = torch.cat(bs, 1), torch.cat(ss, 1), torch.cat(ls, 1)
        out = []
        for i in range(n):
            v = scores[i] > 0.05
            bi = clip_boxes_to_image(boxes[i][v], sizes[i])
            keep = batched_nms(bi, scores[i][v], labels[i][v], 0.5)[:100]
            out.append({"boxes": bi[keep], "scores": scores[i][v][keep], "labels": labels[i][v][keep]})
        return out

    return run


def retinakit_fn(cls, box, anchors, sizes) -> Callable[[], Any]:
    from retinakit.modeling.postprocess import RetinaNetPostProcessor

    # torchvision keeps fully clipped (empty) boxes: the same selection, so that detections compare.
    pp = RetinaNetPostProcessor(box_coder=_Coder(), filter_empty_boxes=False)
    return lambda: pp(cls, box, anchors, sizes)


def _time(fn: Callable[[], Any], repeats: int, warmup: int, sync: Callable[[], None]) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def same_detections(ours, theirs, atol: float = 1e-3) -> bool:
    for inst, det in zip(ours, theirs):
        if len(inst) != det["boxes"].shape[0] or not torch.equal(inst.pred_classes.cpu(), det["labels"].cpu()):
            return False
        if not torch.allclose(inst.pred_boxes.tensor.cpu(), det["boxes"].cpu(), atol=atol, rtol=0):
            return False
        if not torch.allclose(inst.scores.cpu(), det["scores"].cpu(), atol=1e-5, rtol=0):
            return False
    return True


def main(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rows, results = [], []
    for n in args.batch_sizes:
        cls, box, anchors = make_heads(n, tuple(args.image_size), args.num_classes, args.seed)
        cls, box, anchors = [c.to(dev) for c in cls], [b.to(dev) for b in box], [a.to(dev) for a in anchors]
        sizes = [tuple(args.image_size)] * n
        fns = {
            "retinakit": retinakit_fn(cls, box, anchors, sizes),
            "torchvision": torchvision_fn(cls, box, anchors, sizes),
            "tv-batched_nms": plain_pipeline_fn(cls, box, anchors, sizes),
        }
        ours, theirs = fns["retinakit"](), fns["torchvision"]()
        identical = same_detections(ours, theirs)
        with torch.no_grad():
            candidates = sum(int((torch.sigmoid(c.float()) > 0.05).sum()) for c in cls) / n
        times = {name: _time(fn, args.repeats, args.warmup, sync) for name, fn in fns.items()}
        base = statistics.median(times["torchvision"])
        for name, t in times.items():
            med = statistics.median(t)
            res = {
                "batch": n, "impl": name, "median_ms": med, "min_ms": min(t), "max_ms": max(t),
                "speedup_vs_torchvision": base / med, "identical_to_torchvision": identical if name == "retinakit" else None,
                "candidates_per_image": candidates, "detections_per_image": sum(len(i) for i in ours) / n,
                "device": str(dev), "threads": args.threads,
            }
            results.append(res)
            rows.append([n, name, f"{med:.2f}", f"{min(t):.2f}-{max(t):.2f}", f"{base / med:.1f}x",
                         "" if res["identical_to_torchvision"] is None else ("yes" if identical else "NO"), f"{candidates:.0f}"])
    print(tabulate(rows, headers=["batch", "impl", "median ms", "min-max ms", "vs torchvision", "same dets", "cand/img"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 0 if all(r["identical_to_torchvision"] in (None, True) for r in results) else 1
