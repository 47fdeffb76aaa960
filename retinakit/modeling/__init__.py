"""Models: every component has its own registry and is selectable from the config.

``build_model(cfg)`` builds ``MODEL.META_ARCHITECTURE`` after importing ``CUSTOM_IMPORTS``.
"""
from .anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator, build_anchor_generator
from .backbone import BACKBONE_REGISTRY, FPN, Backbone, ResNet, ShapeSpec, build_backbone
from .box_coder import BOX_CODER_REGISTRY, DeltaXYWHBoxCoder, LegacyDeltaXYWHBoxCoder, build_box_coder
from .fuse import fuse_frozen_batchnorm, prepare_for_inference
from .heads import HEAD_REGISTRY, RetinaNetHead, build_head
from .losses import LOSS_REGISTRY, build_loss
from .matcher import MATCHER_REGISTRY, ATSSMatcher, IoUMatcher, build_matcher
from .meta_arch import META_ARCH_REGISTRY, RetinaNet, build_model
from .postprocess import POSTPROCESSOR_REGISTRY, build_postprocessor
from .protocols import BoxCoder, FusedDecodeBoxCoder, Matcher, MatchInputs, PostProcessor

__all__ = [
    "ANCHOR_GENERATOR_REGISTRY",
    "BACKBONE_REGISTRY",
    "BOX_CODER_REGISTRY",
    "FPN",
    "HEAD_REGISTRY",
    "LOSS_REGISTRY",
    "MATCHER_REGISTRY",
    "META_ARCH_REGISTRY",
    "POSTPROCESSOR_REGISTRY",
    "ATSSMatcher",
    "Backbone",
    "BoxCoder",
    "DefaultAnchorGenerator",
    "DeltaXYWHBoxCoder",
    "FusedDecodeBoxCoder",
    "IoUMatcher",
    "LegacyDeltaXYWHBoxCoder",
    "MatchInputs",
    "Matcher",
    "PostProcessor",
    "ResNet",
    "RetinaNet",
    "RetinaNetHead",
    "ShapeSpec",
    "build_anchor_generator",
    "build_backbone",
    "build_box_coder",
    "build_head",
    "build_loss",
    "build_matcher",
    "build_model",
    "build_postprocessor",
    "fuse_frozen_batchnorm",
    "prepare_for_inference",
]
