"""Post-processing of RetinaNet head outputs into per-image detections.

``POSTPROCESSOR_REGISTRY`` holds the post-processors; the default,
:class:`RetinaNetPostProcessor`, runs two compiled ops for the whole batch:
:func:`retinakit.ops.decode_detections` (threshold, per-level top-k, decode, clip) and
:func:`retinakit.ops.multiclass_nms` (per-class, class-agnostic or soft NMS, then the best
``max_detections``). Its detections equal torchvision's ``RetinaNet.postprocess_detections``,
except that by default (``MODEL.POSTPROCESSOR.FILTER_EMPTY_BOXES``) candidates whose clipped box
has zero width or height (or NaN coordinates; e.g. from inf or huge deltas) are dropped
before NMS, as detectron2's ``Boxes.nonempty()`` filter does; torchvision keeps them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..config import CfgNode, ConfigError
from ..config.configurable import configurable
from ..structures import Boxes, Instances
from ..utils.registry import Registry
from .protocols import BoxCoder, PostProcessor, fused_decode_params

__all__ = ["POSTPROCESSOR_REGISTRY", "RetinaNetPostProcessor", "build_postprocessor", "clip_to_sizes", "drop_empty_candidates"]

POSTPROCESSOR_REGISTRY = Registry(
    "POSTPROCESSOR",
    doc="""Turns head outputs into detections. Selected by ``MODEL.POSTPROCESSOR.NAME``.

Call signature: ``cls(cfg, box_coder)`` or ``cls(**kwargs)`` -> an ``nn.Module`` meeting
:class:`retinakit.modeling.protocols.PostProcessor` (checked when built), whose
``forward(cls_logits, box_deltas, anchors, image_sizes) -> list[Instances]`` takes per level
``cls_logits [N, A*K, H, W]``, ``box_deltas [N, A*4, H, W]``, ``anchors [H*W*A, 4]`` and the
``(height, width)`` of each image, and returns ``Instances(pred_boxes, scores, pred_classes)``.
A box coder meeting :class:`~retinakit.modeling.protocols.FusedDecodeBoxCoder` lets
:class:`RetinaNetPostProcessor` use the fused decode kernel. A post-processor that also meets
:class:`~retinakit.modeling.protocols.ExportablePostProcessor` (``check_exportable`` and
``forward_static``) exports end to end to ONNX; others export heads-only.
""",
    protocol=PostProcessor,
)

_NMS_TYPES = ("batched", "agnostic", "soft")


def build_postprocessor(cfg: CfgNode, box_coder: BoxCoder) -> nn.Module:
    """Build ``MODEL.POSTPROCESSOR.NAME`` from the config (checked against the :class:`PostProcessor` protocol)."""
    return POSTPROCESSOR_REGISTRY.build(cfg.MODEL.POSTPROCESSOR.NAME, cfg, box_coder)


def drop_empty_candidates(
    boxes: Tensor, scores: Tensor, classes: Tensor, num_valid: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Remove the candidates whose box is empty from the packed decode outputs.

    Takes and returns ``boxes [N, M, 4]`` (XYXY), ``scores [N, M]``, ``classes [N, M]`` and
    ``num_valid [N]`` (valid rows first). A box is kept when its width and height are both
    > 0 (NaN boxes are dropped). Kept rows stay in their order, moved to the front; the
    rest is padding (zero boxes and scores, class -1). No host synchronisation.
    """
    m = boxes.shape[1]
    in_range = torch.arange(m, device=boxes.device)[None, :] < num_valid[:, None]
    wh = boxes[..., 2:] - boxes[..., :2]
    keep = in_range & (wh[..., 0] > 0) & (wh[..., 1] > 0)
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)  # kept rows first, in order
    count = keep.sum(dim=1)
    valid = torch.arange(m, device=boxes.device)[None, :] < count[:, None]
    boxes = torch.where(valid[..., None], torch.gather(boxes, 1, order[..., None].expand(-1, -1, 4)), torch.zeros_like(boxes))
    scores = torch.where(valid, torch.gather(scores, 1, order), torch.zeros_like(scores))
    classes = torch.where(valid, torch.gather(classes, 1, order), torch.full_like(classes, -1))
    return boxes, scores, classes, count.to(num_valid.dtype)


def clip_to_sizes(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Clip ``boxes [N, M, 4]`` XYXY to ``[0, width] x [0, height]`` of ``image_sizes [N, 2]`` ``(h, w)``."""
    hw = image_sizes.to(boxes.dtype)[:, None, :]  # [N, 1, 2]
    limit = torch.cat([hw.flip(-1), hw.flip(-1)], dim=-1)  # [N, 1, 4]: (w, h, w, h)
    return torch.minimum(torch.clamp(boxes, min=0.0), limit)


def _check_exportable_decode(box_coder: Any) -> None:
    """The end-to-end graph decodes ``[N, k, 4]`` tensors with ``box_coder.decode``: check it can."""
    name = type(box_coder).__name__
    anchors = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 20.0, 12.0]]])
    try:
        boxes = box_coder.decode(torch.zeros(1, 2, 4), anchors)
    except Exception as e:  # any failure means the same to the user
        raise ConfigError(
            f"End-to-end export decodes [N, k, 4] tensors with the box coder's decode(); {name}.decode failed on them "
            f"({type(e).__name__}: {e}). Make it accept [..., 4] inputs (docs/custom_components.md) or export with mode='heads'."
        ) from e
    if not isinstance(boxes, Tensor) or tuple(boxes.shape) != (1, 2, 4):
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ConfigError(
            f"End-to-end export needs {name}.decode(deltas [N, k, 4], anchors [N, k, 4]) -> boxes [N, k, 4]; it returned {got}. "
            "Make it accept [..., 4] inputs (docs/custom_components.md) or export with mode='heads'."
        )


@POSTPROCESSOR_REGISTRY.register()
class RetinaNetPostProcessor(nn.Module):
    """Score threshold, per-level top-k, box decode, clip, NMS and top ``max_detections``.

    Box coders exposing ``fused_decode_params() -> (weights, scale_clamp)`` (the built-in
    ``DeltaXYWHBoxCoder``) use the fused compiled decode. Any other box coder takes the
    generic path: candidates are selected in torch and decoded with its ``decode(deltas,
    anchors)``; NMS is still the compiled op.

    ``filter_empty_boxes`` (default True): drop candidates whose clipped box has zero width
    or height, or NaN coordinates, before NMS (:func:`drop_empty_candidates`), so that a
    fully clipped box from inf/huge deltas is never returned (with its score, possibly 1.0)
    and does not take one of the ``max_detections`` places. False keeps them (torchvision).
    """

    @configurable
    def __init__(
        self,
        *,
        box_coder: Any,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.5,
        max_detections: int = 100,
        nms_type: str = "batched",
        soft_nms_method: str = "gaussian",
        soft_nms_sigma: float = 0.5,
        soft_nms_score_thresh: float = 0.001,
        allow_reference_ops: bool = False,
        filter_empty_boxes: bool = True,
    ) -> None:
        """
        Args:
            box_coder: a :class:`~retinakit.modeling.protocols.BoxCoder` (only ``decode`` is used:
                ``deltas [R, 4]``, ``anchors [R, 4]`` -> boxes ``[R, 4]``); with
                ``fused_decode_params`` the fused kernel decodes instead.
            score_thresh: candidates need ``sigmoid(logit) > score_thresh``.
            topk_candidates: at most this many candidates per level and image (best scores).
            nms_thresh: IoU above which NMS drops the lower-scored box (``"batched"``/``"agnostic"``),
                or the soft-NMS IoU threshold of the linear method.
            max_detections: ``D``, detections kept per image after NMS (best scores).
            nms_type: ``"batched"`` (per class), ``"agnostic"`` or ``"soft"`` (per-class soft-NMS).
            soft_nms_method: ``"linear"`` or ``"gaussian"`` decay (``nms_type="soft"``).
            soft_nms_sigma: the Gaussian decay's ``sigma``.
            soft_nms_score_thresh: soft-NMS drops boxes whose decayed score falls below it.
            allow_reference_ops: use the pure-torch reference ops when the extension is not built.
            filter_empty_boxes: drop candidates whose clipped box is empty (or NaN) before NMS.

        ``forward`` takes per level ``cls_logits [N, A*K, H_l, W_l]``, ``box_deltas [N, A*4, H_l, W_l]``,
        ``anchors [H_l*W_l*A, 4]`` and ``N`` image sizes; see :meth:`forward`.
        """
        super().__init__()
        if nms_type not in _NMS_TYPES:
            raise ConfigError(f"MODEL.POSTPROCESSOR.NMS_TYPE must be one of {_NMS_TYPES}, got {nms_type!r}.")
        if soft_nms_method not in ("linear", "gaussian"):
            raise ConfigError(f"MODEL.POSTPROCESSOR.SOFT_NMS_METHOD must be 'linear' or 'gaussian', got {soft_nms_method!r}.")
        self.box_coder = box_coder
        self.score_thresh = float(score_thresh)
        self.topk_candidates = int(topk_candidates)
        self.nms_thresh = float(nms_thresh)
        self.max_detections = int(max_detections)
        self.nms_type = nms_type
        self.soft_nms_method = soft_nms_method
        self.soft_nms_sigma = float(soft_nms_sigma)
        self.soft_nms_score_thresh = float(soft_nms_score_thresh)
        self.allow_reference_ops = bool(allow_reference_ops)
        self.filter_empty_boxes = bool(filter_empty_boxes)

    @classmethod
    def from_config(cls, cfg: CfgNode, box_coder: Any) -> dict[str, Any]:
        pp = cfg.MODEL.POSTPROCESSOR
        return {
            "box_coder": box_coder,
            "score_thresh": cfg.MODEL.RETINANET.SCORE_THRESH_TEST,
            "topk_candidates": cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST,
            "nms_thresh": cfg.MODEL.RETINANET.NMS_THRESH_TEST,
            "max_detections": cfg.TEST.DETECTIONS_PER_IMAGE,
            "nms_type": pp.NMS_TYPE,
            "soft_nms_method": pp.SOFT_NMS_METHOD,
            "soft_nms_sigma": pp.SOFT_NMS_SIGMA,
            "soft_nms_score_thresh": pp.SOFT_NMS_SCORE_THRESH,
            "allow_reference_ops": pp.ALLOW_REFERENCE_OPS,
            "filter_empty_boxes": pp.FILTER_EMPTY_BOXES,
        }

    def extra_repr(self) -> str:
        return (
            f"score_thresh={self.score_thresh}, topk_candidates={self.topk_candidates}, nms_type={self.nms_type}, "
            f"nms_thresh={self.nms_thresh}, max_detections={self.max_detections}, filter_empty_boxes={self.filter_empty_boxes}"
        )

    def forward(
        self,
        cls_logits: list[Tensor],
        box_deltas: list[Tensor],
        anchors: list[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Instances]:
        """Per level ``cls_logits [N, A*K, H_l, W_l]``, ``box_deltas [N, A*4, H_l, W_l]``,
        ``anchors [H_l*W_l*A, 4]``; ``image_sizes`` ``N x (height, width)``.

        Returns ``N`` ``Instances`` with ``pred_boxes`` (``Boxes [D, 4]`` float32, clipped),
        ``scores [D]`` float32 and ``pred_classes [D]`` int64, ``D <= max_detections``.
        """
        from .. import ops

        device = cls_logits[0].device
        sizes = torch.as_tensor([[int(h), int(w)] for h, w in image_sizes], dtype=torch.int64).to(device, non_blocking=True)
        fused = fused_decode_params(self.box_coder)
        if fused is not None:
            weights, scale_clamp = fused
            boxes, scores, classes, num_valid = ops.decode_detections(
                cls_logits, box_deltas, anchors, sizes, self.score_thresh, self.topk_candidates,
                weights, scale_clamp, allow_reference=self.allow_reference_ops,
            )
        else:
            boxes, scores, classes, num_valid = self._generic_decode(cls_logits, box_deltas, anchors, image_sizes)
        if self.filter_empty_boxes:
            boxes, scores, classes, num_valid = drop_empty_candidates(boxes, scores, classes, num_valid)
        boxes, scores, classes, num_det = ops.multiclass_nms(
            boxes, scores, classes, num_valid, self.nms_type, self.nms_thresh, self.max_detections,
            self.soft_nms_method, self.soft_nms_sigma, self.soft_nms_score_thresh,
            allow_reference=self.allow_reference_ops,
        )
        counts = num_det.tolist()  # the single host sync of the batch
        return [
            Instances(
                (int(image_sizes[i][0]), int(image_sizes[i][1])),
                pred_boxes=Boxes(boxes[i, :c]),
                scores=scores[i, :c],
                pred_classes=classes[i, :c],
            )
            for i, c in enumerate(counts)
        ]

    def check_exportable(self) -> None:
        """Raise ``ValueError`` naming what :meth:`forward_static` cannot reproduce for this instance."""
        cls = type(self)
        if cls.forward is not RetinaNetPostProcessor.forward and cls.forward_static is RetinaNetPostProcessor.forward_static:
            raise ConfigError(
                f"{cls.__name__} (MODEL.POSTPROCESSOR.NAME) overrides forward() but not forward_static(), so an exported "
                "graph would not do what it does: implement forward_static() (docs/custom_components.md) or export "
                "with mode='heads' (tools/deploy.py --mode heads) and post-process the raw outputs."
            )
        if self.nms_type == "soft":
            raise ConfigError(
                "MODEL.POSTPROCESSOR.NMS_TYPE 'soft' cannot be exported end to end (soft-NMS has no standard ONNX op): "
                "export with mode='heads' (tools/deploy.py --mode heads) or use NMS_TYPE 'batched' / 'agnostic'."
            )
        _check_exportable_decode(self.box_coder)

    def forward_static(
        self, cls_logits: list[Tensor], box_deltas: list[Tensor], anchors: list[Tensor], image_sizes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Static-shape twin of :meth:`forward` for ``torch.export`` / ONNX (the end-to-end graph).

        Args:
            cls_logits, box_deltas, anchors: per level, as in :meth:`forward`.
            image_sizes: ``[N, 2]`` float ``(height, width)`` of each image's valid region.

        Returns:
            ``num_dets [N]`` int32, ``boxes [N, D, 4]`` float32 (clipped XYXY), ``scores [N, D]``
            float32 and ``classes [N, D]`` int32 (``-1`` in padding rows), ``D = max_detections``,
            rows by decreasing score. Same selection as :meth:`forward`: per-level top-k of the
            scores above the threshold, decode with the box coder's ``decode``, clip, empty-box
            filter, per-class or class-agnostic NMS (:func:`retinakit.ops.nms_keep`), best ``D``.
        """
        self.check_exportable()
        parts = [self._static_level(c, d, a, image_sizes) for c, d, a in zip(cls_logits, box_deltas, anchors)]
        boxes = torch.cat([p[0] for p in parts], dim=1)  # [N, M, 4]
        scores = torch.cat([p[1] for p in parts], dim=1)  # [N, M], -1 where not a candidate
        classes = torch.cat([p[2] for p in parts], dim=1)  # [N, M]
        num_classes = cls_logits[0].shape[1] // (box_deltas[0].shape[1] // 4)
        return self._static_nms(boxes, scores, classes, num_classes)

    def _static_level(
        self, logits: Tensor, deltas: Tensor, anchors: Tensor, image_sizes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One level's top-k -> ``boxes [N, k, 4]``, ``scores [N, k]`` (-1 where not a candidate), ``classes [N, k]``."""
        n, gh, gw = logits.shape[0], logits.shape[-2], logits.shape[-1]
        a = deltas.shape[1] // 4
        k_cls = logits.shape[1] // a
        scores = torch.sigmoid(logits.float().reshape(n, a, k_cls, gh, gw).permute(0, 3, 4, 1, 2).reshape(n, -1))
        num = scores.shape[1]
        # Padded with -1 so that top-k always has topk entries (levels with fewer anchors x classes).
        padded = torch.cat([scores, scores.new_full((n, self.topk_candidates), -1.0)], dim=1)
        top_scores, top_idx = torch.topk(padded, self.topk_candidates, dim=1, largest=True, sorted=True)
        top_idx = torch.clamp(top_idx, max=num - 1)
        anchor_idx = top_idx // k_cls
        d = deltas.float().reshape(n, a, 4, gh, gw).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        d = torch.gather(d, 1, anchor_idx[:, :, None].expand(-1, -1, 4))
        boxes = clip_to_sizes(self.box_coder.decode(d, anchors.float()[anchor_idx]).float(), image_sizes)
        valid = top_scores > self.score_thresh
        if self.filter_empty_boxes:  # as drop_empty_candidates (NaN compares False: dropped)
            valid = valid & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        return boxes, torch.where(valid, top_scores, torch.full_like(top_scores, -1.0)), top_idx - anchor_idx * k_cls

    def _static_nms(self, boxes: Tensor, scores: Tensor, classes: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """NMS of ``boxes [N, M, 4]``, ``scores [N, M]`` (-1: not a candidate), ``classes [N, M]``
        and the best ``max_detections``: the outputs of :meth:`forward_static`."""
        from ..ops import nms_keep

        if self.nms_type == "agnostic":
            class_scores = scores[:, None, :]
        else:
            onehot = classes[:, None, :] == torch.arange(num_classes, device=scores.device)[None, :, None]  # [N, K, M]
            class_scores = torch.where(onehot, scores[:, None, :], torch.full_like(onehot, -1.0, dtype=scores.dtype))
        keep = nms_keep(boxes, class_scores, self.nms_thresh, self.score_thresh, self.max_detections)
        kept_scores = torch.where(keep > 0.5, scores, torch.full_like(scores, -1.0))
        d = min(self.max_detections, kept_scores.shape[1])
        top_scores, top_idx = torch.topk(kept_scores, d, dim=1, largest=True, sorted=True)
        is_det = top_scores > -0.5
        out_boxes = torch.gather(boxes, 1, top_idx[:, :, None].expand(-1, -1, 4))
        out_boxes = torch.where(is_det[:, :, None], out_boxes, torch.zeros_like(out_boxes))
        out_scores = torch.where(is_det, top_scores, torch.zeros_like(top_scores))
        out_classes = torch.where(is_det, torch.gather(classes, 1, top_idx), torch.full_like(top_idx, -1))
        return is_det.to(torch.int32).sum(dim=1).to(torch.int32), out_boxes, out_scores, out_classes.to(torch.int32)

    def _generic_decode(
        self,
        cls_logits: list[Tensor],
        box_deltas: list[Tensor],
        anchors: list[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Selection in torch + ``box_coder.decode`` for coders without a fused decode.

        Same packed outputs as :func:`retinakit.ops.decode_detections`.
        """
        from ..ops import reference

        n_img = cls_logits[0].shape[0]
        device = cls_logits[0].device
        m = reference.num_candidates(cls_logits, self.topk_candidates)
        boxes = torch.zeros(n_img, m, 4, dtype=torch.float32, device=device)
        scores = torch.zeros(n_img, m, dtype=torch.float32, device=device)
        classes = torch.full((n_img, m), -1, dtype=torch.int64, device=device)
        counts = []
        sel = reference.select_candidates(cls_logits, self.score_thresh, self.topk_candidates)
        for n in range(n_img):
            b_l, s_l, c_l = [], [], []
            for lvl, (flat, s) in enumerate(sel[n]):
                k_num = cls_logits[lvl].shape[1] // (box_deltas[lvl].shape[1] // 4)
                a_idx = flat // k_num
                d = box_deltas[lvl][n].permute(1, 2, 0).reshape(-1, 4)[a_idx]
                b = self.box_coder.decode(d.float(), anchors[lvl][a_idx].float()).float()
                b_l.append(reference.clip_boxes(b, int(image_sizes[n][0]), int(image_sizes[n][1])))
                s_l.append(s)
                c_l.append(flat % k_num)
            b, s, c = torch.cat(b_l), torch.cat(s_l), torch.cat(c_l)
            boxes[n, : b.shape[0]] = b
            scores[n, : s.shape[0]] = s
            classes[n, : c.shape[0]] = c
            counts.append(b.shape[0])
        return boxes, scores, classes, torch.as_tensor(counts, dtype=torch.int64, device=device)
