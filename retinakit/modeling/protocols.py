"""Typed contracts of the swappable RetinaNet components.

The meta-architecture talks to its box coder, matcher and post-processor only through these
``typing.Protocol`` s; a registered component meets its Protocol structurally (no base class
needed). The builders check it when the component is built
(:meth:`retinakit.utils.registry.Registry.check_protocol`), so a missing method fails with
one message naming it instead of an ``AttributeError`` in the middle of training.

* :class:`BoxCoder`: ``encode(anchors [R, 4], boxes [R, 4]) -> deltas [R, 4]`` and
  ``decode(deltas [R, 4], anchors [R, 4]) -> boxes [R, 4]`` (XYXY, float32).
* :class:`FusedDecodeBoxCoder`: a :class:`BoxCoder` that is the (dx, dy, dw, dh) delta coder
  and adds ``fused_decode_params() -> (weights, scale_clamp)`` for the fused decode kernel.
* :class:`Matcher`: ``match(MatchInputs) -> (matches [R] int64, labels [R] int8)``. The inputs
  carry the anchors *per level* and the ground-truth boxes, so a matcher that needs the levels
  or anchor centres (ATSS) fits the same call as the IoU matcher.
* :class:`PostProcessor`: ``(cls_logits, box_deltas, anchors, image_sizes) -> list[Instances]``.
* :class:`ExportablePostProcessor`: a :class:`PostProcessor` that also has the static-shape
  ``forward_static`` the end-to-end ONNX graph is traced from (optional: without it a model
  exports heads-only).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..structures import Instances, pairwise_iou

__all__ = [
    "BoxCoder",
    "ExportablePostProcessor",
    "FusedDecodeBoxCoder",
    "MatchInputs",
    "Matcher",
    "PostProcessor",
    "fused_decode_params",
]


@runtime_checkable
class BoxCoder(Protocol):
    """Encodes ground-truth boxes as regression targets against anchors, and decodes back."""

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """``anchors [R, 4]``, ``boxes [R, 4]`` (XYXY) -> regression targets ``[R, 4]``."""
        ...

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """``deltas [R, 4]``, ``anchors [R, 4]`` -> boxes ``[R, 4]`` (XYXY, float32).

        End-to-end export also calls it with ``[N, k, 4]`` inputs (any leading shape)."""
        ...


@runtime_checkable
class FusedDecodeBoxCoder(BoxCoder, Protocol):
    """A (dx, dy, dw, dh) coder with continuous anchors that the fused decode kernel can run."""

    def fused_decode_params(self) -> tuple[tuple[float, float, float, float], float]:
        """``(weights (wx, wy, ww, wh), scale_clamp)`` of :func:`retinakit.ops.decode_detections`."""
        ...


def fused_decode_params(box_coder: Any) -> tuple[tuple[float, float, float, float], float] | None:
    """``box_coder.fused_decode_params()`` when the coder offers it (a callable), else ``None``."""
    fn = getattr(box_coder, "fused_decode_params", None)
    return fn() if callable(fn) else None


@dataclass
class MatchInputs:
    """What a matcher sees for one image.

    Attributes:
        anchors: per level ``[R_l, 4]`` XYXY, location-major, anchor-minor; their
            concatenation (level after level) is the image's ``R`` anchors.
        gt_boxes: ``[G, 4]`` XYXY ground-truth boxes to match (crowd / ignored boxes excluded).
    """

    anchors: Sequence[Tensor]
    gt_boxes: Tensor
    _iou: Tensor | None = field(default=None, init=False, repr=False)

    def all_anchors(self) -> Tensor:
        """``[R, 4]``: the levels concatenated."""
        return torch.cat(list(self.anchors)) if len(self.anchors) != 1 else self.anchors[0]

    def num_anchors_per_level(self) -> list[int]:
        """``R_l`` of each level."""
        return [int(a.shape[0]) for a in self.anchors]

    def iou(self) -> Tensor:
        """``[G, R]`` IoU of every ground-truth box with every anchor (computed once)."""
        if self._iou is None:
            self._iou = pairwise_iou(self.gt_boxes, self.all_anchors())
        return self._iou


@runtime_checkable
class Matcher(Protocol):
    """Assigns each anchor to a ground-truth box.

    ``match(inputs)`` returns ``matches [R]`` int64 (index into ``inputs.gt_boxes``; any value
    when ``G == 0``) and ``labels [R]`` int8: 1 foreground, 0 background, -1 ignore.
    """

    def match(self, inputs: MatchInputs) -> tuple[Tensor, Tensor]:
        """``MatchInputs`` -> ``matches [R]`` int64, ``labels [R]`` int8."""
        ...


@runtime_checkable
class PostProcessor(Protocol):
    """Turns head outputs into per-image detections."""

    def __call__(
        self,
        cls_logits: list[Tensor],
        box_deltas: list[Tensor],
        anchors: list[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Instances]:
        """Per level ``cls_logits [N, A*K, H_l, W_l]``, ``box_deltas [N, A*4, H_l, W_l]``,
        ``anchors [H_l*W_l*A, 4]``; ``image_sizes``: ``N`` ``(height, width)``. Returns ``N``
        ``Instances(pred_boxes, scores, pred_classes)`` in those image sizes."""
        ...


@runtime_checkable
class ExportablePostProcessor(PostProcessor, Protocol):
    """A post-processor with a static-shape path for ``torch.export`` / ONNX.

    ``forward_static`` gives the same detections as ``__call__`` (up to float rounding) for a
    traced graph: fixed output shapes, image sizes as a tensor, no host synchronisation.
    """

    def check_exportable(self) -> None:
        """Raise ``ValueError`` naming what cannot be exported (a setting, the box coder)."""
        ...

    def forward_static(
        self, cls_logits: list[Tensor], box_deltas: list[Tensor], anchors: list[Tensor], image_sizes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per level ``cls_logits [N, A*K, H_l, W_l]``, ``box_deltas [N, A*4, H_l, W_l]``,
        ``anchors [H_l*W_l*A, 4]``; ``image_sizes [N, 2]`` float ``(height, width)``. Returns
        ``num_dets [N]`` int32, ``boxes [N, D, 4]`` float32, ``scores [N, D]`` float32 and
        ``classes [N, D]`` int32 (``-1`` in padding rows), rows by decreasing score."""
        ...
