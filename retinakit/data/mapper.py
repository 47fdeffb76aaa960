"""``DatasetMapper``: one dataset dict -> the model's input dict (image tensor + Instances)."""
from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch

from ..config import configurable
from ..structures import Boxes, Instances
from .errors import BadImageError, check_policy
from .image_io import read_image, size_mismatch
from .transforms import DetectionTransform, TransformParams

__all__ = ["DatasetMapper", "annotations_to_instances"]

logger = logging.getLogger(__name__)


def annotations_to_instances(annos: list, boxes: torch.Tensor | None, image_size: tuple[int, int]) -> Instances:
    """Build ``Instances(image_size)`` with ``gt_boxes`` (Boxes, float32 ``[N, 4]`` XYXY),
    ``gt_classes`` (int64 ``[N]``) and ``gt_ignore`` (bool ``[N]``, True for iscrowd).

    ``boxes`` are the already-transformed boxes (default: the annotations' own ``bbox``).
    """
    if boxes is None:
        boxes = torch.tensor([a["bbox"] for a in annos], dtype=torch.float32).reshape(-1, 4)
    inst = Instances(image_size)
    gt = Boxes(boxes.to(torch.float32).reshape(-1, 4))
    gt.clip(image_size)
    inst.gt_boxes = gt
    inst.gt_classes = torch.tensor([int(a["category_id"]) for a in annos], dtype=torch.int64)
    inst.gt_ignore = torch.tensor([bool(a.get("iscrowd", 0)) for a in annos], dtype=torch.bool)
    return inst


class DatasetMapper:
    """Reads the image of a dataset dict, applies the transform and builds the model input.

    Output: ``{"image": uint8 [3, H, W] (image_format order, resized), "height", "width"
    (original size), "image_id", "file_name", "instances": Instances((H, W)) with gt_boxes,
    gt_classes, gt_ignore}``. At test time ``instances`` is left out unless
    ``keep_instances``. A bad image raises :class:`BadImageError` (``on_bad_image="error"``)
    or makes the mapper return ``None`` (``"skip"``; the loaders count and log these).
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        transform: DetectionTransform,
        image_format: str = "RGB",
        keep_instances: bool | None = None,
        on_bad_image: str = "error",
    ) -> None:
        self.is_train = is_train
        self.transform = transform
        self.image_format = image_format
        self.keep_instances = is_train if keep_instances is None else keep_instances
        self.on_bad_image = check_policy(on_bad_image, "DATALOADER.ON_BAD_IMAGE")
        self.skipped = 0
        # Source of the random transform parameters (None: torch's global RNG). The train
        # loader gives each worker its own seeded generator.
        self.generator: torch.Generator | None = None

    @classmethod
    def from_config(cls, cfg: Any, is_train: bool = True, keep_instances: bool | None = None) -> dict[str, Any]:
        return {
            "is_train": is_train,
            "transform": DetectionTransform.from_config(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "keep_instances": keep_instances,
            "on_bad_image": cfg.DATALOADER.ON_BAD_IMAGE,
        }

    def read(self, d: dict[str, Any]) -> np.ndarray | None:
        """The decoded ``uint8 [H, W, 3]`` image of ``d``, size-checked; None if skipped."""
        context = f"image id {d.get('image_id')}"
        try:
            img = read_image(d["file_name"], self.image_format, context)
            msg = size_mismatch(d["file_name"], context, img.shape[:2], (d.get("height"), d.get("width")), seen="when decoded")
            if msg:
                raise BadImageError(msg)
        except BadImageError as e:
            if self.on_bad_image == "error":
                raise BadImageError(f"{e} (To drop such images and go on, set DATALOADER.ON_BAD_IMAGE skip.)") from e
            self.skipped += 1
            logger.warning("Skipping an image (DATALOADER.ON_BAD_IMAGE skip; %d so far in this process): %s", self.skipped, e)
            return None
        return img

    def map_decoded(self, d: dict[str, Any], image: torch.Tensor, params: TransformParams | None = None) -> dict[str, Any]:
        """Apply the transform to a decoded ``uint8 [3, H, W]`` image and the annotations of ``d``."""
        h, w = int(image.shape[1]), int(image.shape[2])
        p = params or self.transform.sample_params(h, w, self.generator)
        out = {k: v for k, v in d.items() if k != "annotations"}
        out["height"], out["width"] = int(d.get("height") or h), int(d.get("width") or w)
        out["image"] = self.transform.apply_image(image, p)
        if self.keep_instances and "annotations" in d:
            annos = d["annotations"]
            boxes = torch.tensor([a["bbox"] for a in annos], dtype=torch.float32).reshape(-1, 4)
            boxes = self.transform.apply_boxes(boxes, (h, w), p)
            out["instances"] = annotations_to_instances(annos, boxes, p.out_size)
        return out

    def advance(self, dataset_dict: dict[str, Any]) -> None:
        """Consume the random draws that mapping ``dataset_dict`` would (used to resume a stream)."""
        d = dataset_dict
        if d.get("height") and d.get("width"):
            self.transform.sample_params(int(d["height"]), int(d["width"]), self.generator)

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any] | None:
        d = copy.copy(dataset_dict)
        params = None
        if d.get("height") and d.get("width"):  # drawn before reading, so a skipped image consumes them too
            params = self.transform.sample_params(int(d["height"]), int(d["width"]), self.generator)
        img = self.read(d)
        if img is None:
            return None
        return self.map_decoded(d, torch.from_numpy(img).permute(2, 0, 1).contiguous(), params)
