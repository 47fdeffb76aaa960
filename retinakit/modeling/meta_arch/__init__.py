"""Meta-architectures (whole detectors)."""
from .build import META_ARCH_REGISTRY, build_model
from .retinanet import RetinaNet

__all__ = ["META_ARCH_REGISTRY", "RetinaNet", "build_model"]
