"""Backbones: ResNet and MobileNetV3 bottom-up networks and the RetinaNet FPN."""
from .backbone import Backbone, ShapeSpec
from .build import BACKBONE_REGISTRY, build_backbone
from .fpn import FPN, LastLevelP6P7, build_retinanet_fpn_backbone, build_retinanet_resnet_fpn_backbone
from .mobilenet import MobileNetV3, build_mobilenet_v3_backbone, build_retinanet_mobilenet_v3_fpn_backbone
from .norm import FrozenBatchNorm2d, get_norm
from .resnet import ResNet, build_resnet_backbone

__all__ = [
    "BACKBONE_REGISTRY",
    "FPN",
    "Backbone",
    "FrozenBatchNorm2d",
    "LastLevelP6P7",
    "MobileNetV3",
    "ResNet",
    "ShapeSpec",
    "build_backbone",
    "build_mobilenet_v3_backbone",
    "build_resnet_backbone",
    "build_retinanet_fpn_backbone",
    "build_retinanet_mobilenet_v3_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
    "get_norm",
]
