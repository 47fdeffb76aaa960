"""Box coders: ``BOX_CODER_REGISTRY`` and the RetinaNet ``DeltaXYWHBoxCoder``."""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch

from ..config import configurable
from ..utils.registry import Registry

__all__ = ["BOX_CODER_REGISTRY", "DeltaXYWHBoxCoder", "build_box_coder"]

BOX_CODER_REGISTRY = Registry(
    "BOX_CODER",
    doc="""Box coders. Entries are called as ``cls(cfg)`` (or with keyword arguments) and provide

    * ``encode(anchors [N, 4], boxes [N, 4]) -> deltas [N, 4]`` (regression targets);
    * ``decode(deltas [N, 4], anchors [N, 4]) -> boxes [N, 4]`` (XYXY, float32).

    A coder may also expose ``fused_decode_params() -> (weights, scale_clamp)`` when it is
    the (dx, dy, dw, dh) delta coder, so the post-processor can use the fused kernel.
    """,
)


class DeltaXYWHBoxCoder:
    """(dx, dy, dw, dh) deltas between anchors and boxes (Faster R-CNN / RetinaNet).

    ``dx = wx * (cx_box - cx_anchor) / w_anchor``, ``dw = ww * log(w_box / w_anchor)``;
    decoding clamps ``dw, dh`` at ``scale_clamp`` before ``exp``. Everything is computed in
    float32 whatever the input dtype.
    """

    @configurable
    def __init__(self, *, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), scale_clamp: float = math.log(1000.0 / 16)) -> None:
        if len(weights) != 4:
            raise ValueError(f"MODEL.RETINANET.BBOX_REG_WEIGHTS needs 4 values, got {list(weights)}.")
        self.weights: Tuple[float, float, float, float] = tuple(float(w) for w in weights)  # type: ignore[assignment]
        self.scale_clamp = float(scale_clamp)

    @classmethod
    def from_config(cls, cfg) -> dict:
        return dict(weights=cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS, scale_clamp=cfg.MODEL.RETINANET.BBOX_REG_SCALE_CLAMP)

    def fused_decode_params(self) -> Tuple[Tuple[float, float, float, float], float]:
        return self.weights, self.scale_clamp

    @staticmethod
    def _centers(boxes: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h

    def encode(self, anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """``anchors [N, 4]``, ``boxes [N, 4]`` (XYXY) -> ``deltas [N, 4]``."""
        anchors, boxes = anchors.float(), boxes.float()
        ax, ay, aw, ah = self._centers(anchors)
        bx, by, bw, bh = self._centers(boxes)
        wx, wy, ww, wh = self.weights
        return torch.stack(
            [wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)], dim=1
        )

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """``deltas [N, 4]``, ``anchors [N, 4]`` -> boxes ``[N, 4]`` (XYXY, float32)."""
        deltas, anchors = deltas.float(), anchors.float()
        ax, ay, aw, ah = self._centers(anchors)
        wx, wy, ww, wh = self.weights
        dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
        dw = torch.clamp(deltas[:, 2] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3] / wh, max=self.scale_clamp)
        cx, cy = dx * aw + ax, dy * ah + ay
        half_w, half_h = 0.5 * torch.exp(dw) * aw, 0.5 * torch.exp(dh) * ah
        return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)

    def __repr__(self) -> str:
        return f"DeltaXYWHBoxCoder(weights={self.weights}, scale_clamp={self.scale_clamp:.4f})"


BOX_CODER_REGISTRY.register(DeltaXYWHBoxCoder)


def build_box_coder(cfg):
    """Build ``cfg.MODEL.RETINANET.BOX_CODER_NAME``."""
    return BOX_CODER_REGISTRY.get(cfg.MODEL.RETINANET.BOX_CODER_NAME)(cfg)
