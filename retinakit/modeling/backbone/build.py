"""``BACKBONE_REGISTRY`` and ``build_backbone``."""
from __future__ import annotations

from ...config import CfgNode
from ...utils.registry import Registry
from .backbone import Backbone, ShapeSpec

BACKBONE_REGISTRY = Registry(
    "BACKBONE",
    doc="""Backbones. Entries are called as ``fn(cfg, input_shape: ShapeSpec) -> Backbone``.

    The returned Backbone maps ``[N, C, H, W]`` images to a dict of named feature maps and
    describes them with ``output_shape()``; RetinaNet reads ``MODEL.RETINANET.IN_FEATURES``.
    """,
)


def build_backbone(cfg: CfgNode, input_shape: ShapeSpec | None = None) -> Backbone:
    """Build ``cfg.MODEL.BACKBONE.NAME`` from the registry."""
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    backbone = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, input_shape)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"Backbone '{cfg.MODEL.BACKBONE.NAME}' returned {type(backbone).__name__}, not a retinakit Backbone.")
    return backbone
