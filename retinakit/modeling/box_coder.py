"""Box coders: ``BOX_CODER_REGISTRY`` and the RetinaNet ``DeltaXYWHBoxCoder``."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..config import CfgNode, ConfigError, configurable
from ..utils.registry import Registry
from .protocols import BoxCoder

__all__ = ["BOX_CODER_REGISTRY", "DeltaXYWHBoxCoder", "LegacyDeltaXYWHBoxCoder", "build_box_coder"]

BOX_CODER_REGISTRY = Registry(
    "BOX_CODER",
    doc="""Box coders. Entries are called as ``cls(cfg)`` (or with keyword arguments) and return an
    object meeting :class:`retinakit.modeling.protocols.BoxCoder` (checked when built):

    * ``encode(anchors [R, 4], boxes [R, 4]) -> deltas [R, 4]`` (regression targets);
    * ``decode(deltas [R, 4], anchors [R, 4]) -> boxes [R, 4]`` (XYXY, float32). For end-to-end
      ONNX export, ``decode`` must also take ``[N, k, 4]`` (any leading shape) and trace with
      ``torch.export`` (plain tensor ops, no Python branches on values): the export graph decodes
      with it (see docs/custom_components.md).

    A (dx, dy, dw, dh) delta coder with continuous anchors may also meet
    :class:`~retinakit.modeling.protocols.FusedDecodeBoxCoder`:
    ``fused_decode_params() -> (weights (wx, wy, ww, wh), scale_clamp)``, so the
    post-processor (and the ONNX export) can use the fused decode kernel.
    """,
    protocol=BoxCoder,
)


class _DeltaCoderBase:
    """(dx, dy, dw, dh) deltas between anchors and boxes (Faster R-CNN / RetinaNet).

    ``dx = wx * (cx_box - cx_anchor) / w_anchor``, ``dw = ww * log(w_box / w_anchor)``;
    decoding clamps ``dw, dh`` at ``scale_clamp`` before ``exp``. Everything is computed in
    float32 whatever the input dtype.
    """

    @configurable
    def __init__(self, *, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), scale_clamp: float = math.log(1000.0 / 16)) -> None:
        """
        Args:
            weights: ``(wx, wy, ww, wh)``: deltas ``[R, 4]`` are the normalised offsets times these.
            scale_clamp: upper bound of ``dw, dh`` (after dividing by ``ww, wh``) before ``exp`` in
                :meth:`decode`, so that no decoded box grows by more than ``exp(scale_clamp)``.
        """
        if len(weights) != 4:
            raise ConfigError(f"MODEL.RETINANET.BBOX_REG_WEIGHTS needs 4 values, got {list(weights)}.")
        self.weights: tuple[float, float, float, float] = tuple(float(w) for w in weights)  # type: ignore[assignment]
        self.scale_clamp = float(scale_clamp)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return dict(weights=cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS, scale_clamp=cfg.MODEL.RETINANET.BBOX_REG_SCALE_CLAMP)

    # Added to anchor widths/heights: 0 for continuous anchors, 1 for the legacy pixel convention.
    anchor_pixel_offset = 0.0

    @staticmethod
    def _centers(boxes: torch.Tensor, offset: float = 0.0) -> tuple[torch.Tensor, ...]:
        w = boxes[..., 2] - boxes[..., 0] + offset
        h = boxes[..., 3] - boxes[..., 1] + offset
        return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h

    def encode(self, anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """``anchors [..., 4]``, ``boxes [..., 4]`` (XYXY, same leading shape) -> ``deltas [..., 4]``."""
        anchors, boxes = anchors.float(), boxes.float()
        ax, ay, aw, ah = self._centers(anchors, self.anchor_pixel_offset)
        bx, by, bw, bh = self._centers(boxes)
        wx, wy, ww, wh = self.weights
        return torch.stack(
            [wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)], dim=-1
        )

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """``deltas [..., 4]``, ``anchors [..., 4]`` (same leading shape, e.g. ``[R, 4]`` or the
        export graph's ``[N, k, 4]``) -> boxes ``[..., 4]`` (XYXY, float32)."""
        deltas, anchors = deltas.float(), anchors.float()
        ax, ay, aw, ah = self._centers(anchors, self.anchor_pixel_offset)
        wx, wy, ww, wh = self.weights
        dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
        dw = torch.clamp(deltas[..., 2] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.scale_clamp)
        cx, cy = dx * aw + ax, dy * ah + ay
        half_w, half_h = 0.5 * torch.exp(dw) * aw, 0.5 * torch.exp(dh) * ah
        return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={self.weights}, scale_clamp={self.scale_clamp:.4f})"


class DeltaXYWHBoxCoder(_DeltaCoderBase):
    __doc__ = _DeltaCoderBase.__doc__

    def fused_decode_params(self) -> tuple[tuple[float, float, float, float], float]:
        """``(weights, scale_clamp)`` for the post-processor's fused decode kernel."""
        return self.weights, self.scale_clamp


BOX_CODER_REGISTRY.register(DeltaXYWHBoxCoder)


def build_box_coder(cfg: CfgNode) -> BoxCoder:
    """Build ``cfg.MODEL.RETINANET.BOX_CODER_NAME`` (checked against the :class:`BoxCoder` protocol)."""
    return BOX_CODER_REGISTRY.build(cfg.MODEL.RETINANET.BOX_CODER_NAME, cfg)


class LegacyDeltaXYWHBoxCoder(_DeltaCoderBase):
    """(dx, dy, dw, dh) deltas with anchors in the legacy "+1" pixel convention.

    Detectron (v1) and NVIDIA's retinanet-examples (ODTK) treat an anchor ``[x1, y1, x2, y2]``
    as a set of pixels, so its width is ``x2 - x1 + 1`` and its centre ``x1 + 0.5 * width``;
    their decoded boxes are inclusive too (``x2 = ctr + 0.5 * w - 1``). retinakit boxes are
    continuous (COCO ``[x, y, w, h]`` -> ``x2 = x + w``), so this coder returns the continuous
    box of the decoded pixels: ``x2 = ctr + 0.5 * w``, which is exactly what those projects
    write to a COCO results file (``w = x2 - x1 + 1``). Ground-truth boxes passed to
    :meth:`encode` are continuous, as everywhere in retinakit.

    It has no fused decode (the post-processor decodes its candidates with :meth:`decode`).
    ``weights`` and ``scale_clamp`` mean the same as in :class:`DeltaXYWHBoxCoder`; ODTK uses
    unit weights and no clamp (use a large ``MODEL.RETINANET.BBOX_REG_SCALE_CLAMP``).
    """

    anchor_pixel_offset = 1.0  # no fused_decode_params: the fused kernel uses continuous anchors


BOX_CODER_REGISTRY.register(LegacyDeltaXYWHBoxCoder)
