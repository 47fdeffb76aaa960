"""``nn.Module`` wrappers around a RetinaNet that define the exported ONNX graphs.

Both take ``images [N, 3, H, W]`` float32 in the 0-255 range (``INPUT.FORMAT`` channel order,
already resized, padded bottom/right to a multiple of the backbone's size divisibility) and
``image_sizes [N, 2]`` float32 ``(height, width)`` of the valid (unpadded) region of each
image. Normalisation happens in the graph and the padding is zeroed after it, exactly as
the PyTorch model pads its normalised ``ImageList``: any padding value gives the same result.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .onnx_ops import nms_keep

__all__ = ["E2E_OUTPUTS", "EndToEndModule", "HeadsOnlyModule"]

E2E_OUTPUTS = ("num_dets", "boxes", "scores", "classes")


class _Trunk(nn.Module):
    """Normalisation, padding mask, backbone and head of ``model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head
        self.in_features = list(model.head_in_features)
        self.register_buffer("pixel_mean", model.preprocessor.pixel_mean.detach().clone().float(), persistent=False)
        self.register_buffer("pixel_std", model.preprocessor.pixel_std.detach().clone().float(), persistent=False)

    def features(self, images: Tensor, image_sizes: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """-> per level ``cls_logits [N, A*K, H_l, W_l]``, ``box_deltas [N, A*4, H_l, W_l]``, ``features``."""
        x = (images - self.pixel_mean) / self.pixel_std
        h, w = images.shape[-2], images.shape[-1]
        ys = torch.arange(h, device=images.device, dtype=torch.float32)
        xs = torch.arange(w, device=images.device, dtype=torch.float32)
        valid_y = ys[None, :] < image_sizes[:, 0:1]  # [N, H]
        valid_x = xs[None, :] < image_sizes[:, 1:2]  # [N, W]
        mask = (valid_y[:, :, None] & valid_x[:, None, :]).to(x.dtype)
        x = x * mask[:, None]
        feats = self.backbone(x)
        feats = [feats[f] for f in self.in_features]
        cls_logits, box_deltas = self.head(feats)
        return list(cls_logits), list(box_deltas), feats


class HeadsOnlyModule(_Trunk):
    """Raw head outputs: ``cls_logits_i [N, A*K, H_i, W_i]`` then ``box_deltas_i [N, A*4, H_i, W_i]``."""

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        cls_logits, box_deltas, _ = self.features(images, image_sizes)
        return tuple(cls_logits) + tuple(box_deltas)


class EndToEndModule(_Trunk):
    """Backbone + head + decode + NMS with fixed-size outputs.

    Returns ``num_dets [N]`` int32, ``boxes [N, D, 4]`` float32 XYXY in the network input
    coordinates (clipped to each image's ``image_sizes``), ``scores [N, D]`` float32 and
    ``classes [N, D]`` int32 (``-1`` in padding rows), ``D = max_detections``, rows by
    decreasing score. Same selection as ``RetinaNetPostProcessor`` (threshold, per-level
    top-k, delta decode with weights and clamp, clip, empty-box filter when its
    ``filter_empty_boxes`` is set, per-class or class-agnostic NMS).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        pp = model.postprocessor
        from ..modeling.postprocess import RetinaNetPostProcessor

        if type(pp) is not RetinaNetPostProcessor:  # a subclass may change forward(): never re-implement it silently
            raise ValueError(
                f"End-to-end ONNX export reproduces the built-in RetinaNetPostProcessor, but the model uses "
                f"{type(pp).__name__} (MODEL.POSTPROCESSOR.NAME): export with mode='heads' (tools/deploy.py "
                "--mode heads) and run your post-processing on the raw outputs."
            )
        if getattr(pp, "nms_type", "batched") not in ("batched", "agnostic"):
            raise ValueError(
                f"End-to-end ONNX export supports MODEL.POSTPROCESSOR.NMS_TYPE 'batched' or 'agnostic', not "
                f"{pp.nms_type!r} (soft-NMS has no standard ONNX op): export with mode='heads' instead."
            )
        fused = getattr(model.box_coder, "fused_decode_params", None)
        if fused is None:
            raise ValueError(
                f"End-to-end ONNX export needs a (dx, dy, dw, dh) box coder with fused_decode_params(); "
                f"{type(model.box_coder).__name__} has none: export with mode='heads' instead."
            )
        self.weights, self.scale_clamp = (tuple(float(w) for w in fused()[0]), float(fused()[1]))
        self.num_classes = int(model.num_classes)
        self.score_thresh = float(pp.score_thresh)
        self.topk = int(pp.topk_candidates)
        self.nms_thresh = float(pp.nms_thresh)
        self.max_detections = int(pp.max_detections)
        self.agnostic = pp.nms_type == "agnostic"
        self.filter_empty_boxes = bool(getattr(pp, "filter_empty_boxes", False))
        gen = model.anchor_generator
        if not hasattr(gen, "cell_anchors") or not hasattr(gen, "strides"):
            raise ValueError(f"End-to-end export needs DefaultAnchorGenerator-like anchors; got {type(gen).__name__}.")
        self.strides = list(gen.strides)
        self.offset = float(gen.offset)
        self.strides_from_image = bool(getattr(gen, "strides_from_image", False))
        for i in range(len(self.strides)):
            self.register_buffer(f"cell_{i}", gen.cell_anchors(i).detach().clone().float(), persistent=False)

    def _anchors(self, level: int, feat: Tensor, image_h: int, image_w: int) -> Tensor:
        """``[H_l*W_l*A, 4]`` anchors of one level (location-major, anchor-minor)."""
        gh, gw = feat.shape[-2], feat.shape[-1]
        if self.strides_from_image:
            sy, sx = image_h // gh, image_w // gw
        else:
            sy = sx = self.strides[level]
        ys = (torch.arange(gh, device=feat.device, dtype=torch.float32) + self.offset) * sy
        xs = (torch.arange(gw, device=feat.device, dtype=torch.float32) + self.offset) * sx
        yy = ys[:, None].expand(gh, gw).reshape(-1)
        xx = xs[None, :].expand(gh, gw).reshape(-1)
        shifts = torch.stack([xx, yy, xx, yy], dim=-1)
        cell = getattr(self, f"cell_{level}")
        return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4)

    def _decode(self, deltas: Tensor, anchors: Tensor, image_sizes: Tensor) -> Tensor:
        """``deltas [N, M, 4]``, ``anchors [N, M, 4]`` -> clipped XYXY ``[N, M, 4]``."""
        w = anchors[..., 2] - anchors[..., 0]
        h = anchors[..., 3] - anchors[..., 1]
        cx = anchors[..., 0] + 0.5 * w
        cy = anchors[..., 1] + 0.5 * h
        wx, wy, ww, wh = self.weights
        dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
        dw = torch.clamp(deltas[..., 2] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.scale_clamp)
        pcx, pcy = dx * w + cx, dy * h + cy
        hw, hh = 0.5 * (torch.exp(dw) * w), 0.5 * (torch.exp(dh) * h)
        img_h, img_w = image_sizes[:, 0:1], image_sizes[:, 1:2]
        zero = torch.zeros_like(pcx)
        x0 = torch.minimum(torch.maximum(pcx - hw, zero), img_w)
        y0 = torch.minimum(torch.maximum(pcy - hh, zero), img_h)
        x1 = torch.minimum(torch.maximum(pcx + hw, zero), img_w)
        y1 = torch.minimum(torch.maximum(pcy + hh, zero), img_h)
        return torch.stack([x0, y0, x1, y1], dim=-1)

    def _level_candidates(
        self, level: int, logits: Tensor, deltas: Tensor, feat: Tensor, image_sizes: Tensor, image_hw: Sequence[int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k of one level -> ``boxes [N, k, 4]``, ``scores [N, k]`` (-1 where invalid), ``classes [N, k]``."""
        n = logits.shape[0]
        k_cls = self.num_classes
        gh, gw = logits.shape[-2], logits.shape[-1]
        a = logits.shape[1] // k_cls
        scores = torch.sigmoid(logits.float().reshape(n, a, k_cls, gh, gw).permute(0, 3, 4, 1, 2).reshape(n, -1))
        num = scores.shape[1]
        # Pad with -1 so that top-k always has self.topk entries (levels smaller than topk).
        padded = torch.cat([scores, scores.new_full((n, self.topk), -1.0)], dim=1)
        top_scores, top_idx = torch.topk(padded, self.topk, dim=1, largest=True, sorted=True)
        top_idx = torch.clamp(top_idx, max=num - 1)
        valid = top_scores > self.score_thresh
        anchor_idx = top_idx // k_cls
        classes = top_idx - anchor_idx * k_cls
        d = deltas.float().reshape(n, a, 4, gh, gw).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        d = torch.gather(d, 1, anchor_idx[:, :, None].expand(n, self.topk, 4))
        anchors = self._anchors(level, feat, image_hw[0], image_hw[1])[anchor_idx]  # [N, k, 4]
        boxes = self._decode(d, anchors, image_sizes)
        if self.filter_empty_boxes:  # as drop_empty_candidates: zero width/height or NaN -> not a candidate
            valid = valid & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        return boxes, torch.where(valid, top_scores, torch.full_like(top_scores, -1.0)), classes

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        cls_logits, box_deltas, feats = self.features(images, image_sizes)
        image_hw = (images.shape[-2], images.shape[-1])
        parts = [
            self._level_candidates(i, c, d, f, image_sizes, image_hw)
            for i, (c, d, f) in enumerate(zip(cls_logits, box_deltas, feats))
        ]
        boxes = torch.cat([p[0] for p in parts], dim=1)  # [N, M, 4]
        scores = torch.cat([p[1] for p in parts], dim=1)  # [N, M]
        classes = torch.cat([p[2] for p in parts], dim=1)  # [N, M]
        if self.agnostic:
            class_scores = scores[:, None, :]
        else:
            cls_range = torch.arange(self.num_classes, device=scores.device)
            onehot = classes[:, None, :] == cls_range[None, :, None]  # [N, K, M]
            class_scores = torch.where(onehot, scores[:, None, :], torch.full_like(onehot, -1.0, dtype=scores.dtype))
        keep = nms_keep(boxes, class_scores, self.nms_thresh, self.score_thresh, self.max_detections)
        kept_scores = torch.where(keep > 0.5, scores, torch.full_like(scores, -1.0))
        d = min(self.max_detections, kept_scores.shape[1])
        top_scores, top_idx = torch.topk(kept_scores, d, dim=1, largest=True, sorted=True)
        is_det = top_scores > -0.5
        num_dets = is_det.to(torch.int32).sum(dim=1).to(torch.int32)
        out_boxes = torch.gather(boxes, 1, top_idx[:, :, None].expand(-1, -1, 4))
        out_boxes = torch.where(is_det[:, :, None], out_boxes, torch.zeros_like(out_boxes))
        out_scores = torch.where(is_det, top_scores, torch.zeros_like(top_scores))
        out_classes = torch.where(is_det, torch.gather(classes, 1, top_idx), torch.full_like(top_idx, -1)).to(torch.int32)
        return num_dets, out_boxes, out_scores, out_classes
