"""Box-aware detection transforms (resize shortest edge, flips, photometric) on torchvision v2.

Every random choice is drawn first as :class:`TransformParams` (``sample_params``), then
applied to the image and to the boxes. The DALI pipeline draws the same parameters and
applies them to pixels in DALI, so both backends agree on output sizes and boxes.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..config import ConfigError, configurable
from .image_io import read_image, to_rgb_array

__all__ = [
    "DetectionTransform",
    "InferencePreprocessor",
    "TransformParams",
    "build_inference_preprocess",
    "resized_shape",
]


def resized_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Output ``(h, w)`` when the shorter edge becomes ``short`` and the longer at most ``max_size``.

    ``short <= 0`` keeps the size. Rounded to the nearest integer (at least 1).
    """
    if short <= 0:
        return h, w
    scale = short / min(h, w)
    if max_size > 0 and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


@dataclass(frozen=True)
class TransformParams:
    """What to do to one image: output size ``(h, w)``, flips, and a photometric seed."""

    out_size: tuple[int, int]
    hflip: bool = False
    vflip: bool = False
    photometric_seed: int | None = None


class DetectionTransform:
    """Resize-shortest-edge (+ jitter), flip and optional colour jitter for an image and its boxes.

    ``min_sizes``: candidate shorter-edge sizes; ``sampling`` "choice" draws one of them,
    "range" draws an integer uniformly in ``[min_sizes[0], min_sizes[-1]]``. ``max_size``
    caps the longer edge. ``flip``: "horizontal", "vertical" or "none" (probability
    ``flip_prob``). ``photometric``: kwargs of ``torchvision.transforms.v2.ColorJitter``
    or None. ``resize=False`` keeps the input size (used when the model resizes).
    """

    def __init__(
        self,
        min_sizes: Sequence[int],
        max_size: int,
        *,
        sampling: str = "choice",
        flip: str = "none",
        flip_prob: float = 0.5,
        photometric: dict[str, Any] | None = None,
        resize: bool = True,
    ) -> None:
        if sampling not in ("choice", "range"):
            raise ConfigError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING must be 'choice' or 'range', got {sampling!r}.")
        if sampling == "range" and len(min_sizes) != 2:
            raise ConfigError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING 'range' needs two sizes (low, high), got {list(min_sizes)}.")
        if flip not in ("horizontal", "vertical", "none"):
            raise ConfigError(f"INPUT.RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', got {flip!r}.")
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size, self.sampling, self.flip, self.flip_prob = int(max_size), sampling, flip, float(flip_prob)
        self.color = v2.ColorJitter(**photometric) if photometric else None
        self.resize = resize

    def sample_params(self, h: int, w: int, generator: torch.Generator | None = None) -> TransformParams:
        """Draw the random choices for an image of size ``(h, w)`` (torch RNG, or ``generator``)."""
        if self.sampling == "range":
            short = int(torch.randint(self.min_sizes[0], self.min_sizes[1] + 1, (1,), generator=generator))
        else:
            short = self.min_sizes[int(torch.randint(len(self.min_sizes), (1,), generator=generator))]
        out = resized_shape(h, w, short, self.max_size) if self.resize else (h, w)
        flip = self.flip != "none" and float(torch.rand((), generator=generator)) < self.flip_prob
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator)) if self.color is not None else None
        return TransformParams(out, self.flip == "horizontal" and flip, self.flip == "vertical" and flip, seed)

    def apply_image(self, image: torch.Tensor, p: TransformParams) -> torch.Tensor:
        """``uint8 [C, H, W]`` -> ``uint8 [C, out_h, out_w]`` (bilinear, antialiased)."""
        if tuple(image.shape[-2:]) != p.out_size:
            image = TF.resize(image, list(p.out_size), antialias=True)
        if p.hflip:
            image = TF.horizontal_flip(image)
        if p.vflip:
            image = TF.vertical_flip(image)
        if self.color is not None and p.photometric_seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(p.photometric_seed)
                image = self.color(image)
        return image

    def apply_boxes(self, boxes: torch.Tensor, in_size: tuple[int, int], p: TransformParams) -> torch.Tensor:
        """XYXY ``float [N, 4]`` in an image of ``in_size`` -> XYXY float32 in ``p.out_size``."""
        bb = tv_tensors.BoundingBoxes(boxes.to(torch.float32).reshape(-1, 4), format="XYXY", canvas_size=tuple(in_size))
        if tuple(in_size) != p.out_size:
            bb = TF.resize(bb, list(p.out_size))
        if p.hflip:
            bb = TF.horizontal_flip(bb)
        if p.vflip:
            bb = TF.vertical_flip(bb)
        return bb.as_subclass(torch.Tensor).to(torch.float32)

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor | None = None):
        """Sample params and apply them; returns ``(image, boxes, params)``."""
        h, w = image.shape[-2:]
        p = self.sample_params(int(h), int(w))
        out_boxes = None if boxes is None else self.apply_boxes(boxes, (int(h), int(w)), p)
        return self.apply_image(image, p), out_boxes, p

    @classmethod
    def from_config(cls, cfg: Any, is_train: bool) -> DetectionTransform:
        """The train or test transform described by ``cfg.INPUT``."""
        resize = not cfg.INPUT.RESIZE_IN_MODEL
        if not is_train:
            return cls([cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST, resize=resize and cfg.INPUT.MIN_SIZE_TEST > 0)
        photo = cfg.INPUT.PHOTOMETRIC
        jitter = (
            {"brightness": photo.BRIGHTNESS, "contrast": photo.CONTRAST, "saturation": photo.SATURATION, "hue": photo.HUE}
            if photo.ENABLED
            else None
        )
        return cls(
            list(cfg.INPUT.MIN_SIZE_TRAIN),
            cfg.INPUT.MAX_SIZE_TRAIN,
            sampling=cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
            flip=cfg.INPUT.RANDOM_FLIP,
            flip_prob=cfg.INPUT.FLIP_PROB,
            photometric=jitter,
            resize=resize,
        )


ImageInput = Union[str, os.PathLike, np.ndarray, Image.Image, torch.Tensor]  # a runtime alias: Union, not X | Y (Python 3.9)


class InferencePreprocessor:
    """The test-time preprocessing, shared by the test mapper, predictors and INT8 calibration.

    ``pre(image)`` takes an image file path, a PIL image, an ``HWC uint8`` numpy array or a
    ``CHW uint8`` tensor (arrays/tensors in ``input_format`` channel order, default "RGB")
    and returns ``(tensor, (orig_h, orig_w))``: ``tensor`` is ``uint8 [3, H, W]`` in
    ``INPUT.FORMAT`` order, resized by ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST`` exactly
    as the test data loader does (not resized when ``INPUT.RESIZE_IN_MODEL``). Files get
    EXIF orientation and RGB conversion. Normalisation and padding are the model's job.
    """

    @configurable
    def __init__(self, *, min_size: int, max_size: int, format: str = "RGB", resize: bool = True) -> None:
        self.transform = DetectionTransform([min_size], max_size, resize=resize and min_size > 0)
        self.format = format

    @classmethod
    def from_config(cls, cfg: Any) -> dict[str, Any]:
        return {
            "min_size": cfg.INPUT.MIN_SIZE_TEST,
            "max_size": cfg.INPUT.MAX_SIZE_TEST,
            "format": cfg.INPUT.FORMAT,
            "resize": not cfg.INPUT.RESIZE_IN_MODEL,
        }

    def to_tensor(self, image: ImageInput, input_format: str = "RGB") -> torch.Tensor:
        """Any accepted input -> ``uint8 [3, H, W]`` in ``self.format`` order, not resized."""
        if isinstance(image, (str, os.PathLike)):
            return torch.from_numpy(read_image(os.fspath(image), self.format)).permute(2, 0, 1).contiguous()
        if isinstance(image, Image.Image):
            image, input_format = to_rgb_array(image), "RGB"
        t = torch.as_tensor(image) if isinstance(image, np.ndarray) else image
        if isinstance(image, np.ndarray):
            if t.ndim != 3 or t.shape[2] != 3:
                raise ValueError(f"Expected an HWC image array with 3 channels, got shape {tuple(t.shape)}.")
            t = t.permute(2, 0, 1)
        if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"Expected uint8 [3, H, W] (tensor) or [H, W, 3] (array), got {t.dtype} {tuple(t.shape)}.")
        if input_format != self.format:
            t = t.flip(0)
        return t.contiguous()

    def __call__(self, image: ImageInput, input_format: str = "RGB") -> tuple[torch.Tensor, tuple[int, int]]:
        t = self.to_tensor(image, input_format)
        h, w = int(t.shape[1]), int(t.shape[2])
        p = self.transform.sample_params(h, w)
        return self.transform.apply_image(t, p), (h, w)


def build_inference_preprocess(cfg: Any) -> InferencePreprocessor:
    """The :class:`InferencePreprocessor` of ``cfg`` (same resizing as the test loader)."""
    return InferencePreprocessor(cfg)
