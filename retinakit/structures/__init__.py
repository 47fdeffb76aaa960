"""Data structures shared by every part: boxes, per-image instances, padded image batches."""
from .boxes import Boxes, box_area, pairwise_iou
from .image_list import ImageList
from .instances import Instances

__all__ = ["Boxes", "ImageList", "Instances", "box_area", "pairwise_iou"]
