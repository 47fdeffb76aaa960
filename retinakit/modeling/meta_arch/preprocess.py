"""Input preprocessing inside the model: normalisation, optional resizing, padding."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...config import ConfigError
from ...structures import ImageList

__all__ = ["ImagePreprocessor", "resize_scale", "resized_size"]


def resize_scale(h: int, w: int, min_size: float, max_size: float) -> float | None:
    """Scale factor that makes the short side ``min_size`` and the long side at most ``max_size``;
    None when the image keeps its size (``min_size <= 0`` or a scale of about 1)."""
    if min_size <= 0:
        return None
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return None if math.isclose(scale, 1.0) else scale


def resized_size(h: int, w: int, min_size: float, max_size: float) -> tuple[int, int]:
    """Output ``(h, w)`` of :meth:`ImagePreprocessor.resize_image` for an ``h x w`` input: the
    interpolation's ``floor(side * scale)``."""
    scale = resize_scale(h, w, min_size, max_size)
    if scale is None:
        return h, w
    return math.floor(h * scale), math.floor(w * scale)


class ImagePreprocessor(nn.Module):
    """Normalise ``[C, H, W]`` images (0-255 range) and pad them into an ``ImageList``.

    With ``resize=True`` images are also resized so that the short side is ``min_size`` and
    the long side at most ``max_size`` (bilinear, after normalisation, as torchvision's
    ``GeneralizedRCNNTransform``); in training the short side is drawn from ``min_size_train``.
    """

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(
        self,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
        resize: bool = False,
        min_size_train: Sequence[int] = (800,),
        max_size_train: int = 1333,
        min_size_test: int = 800,
        max_size_test: int = 1333,
    ) -> None:
        super().__init__()
        if len(pixel_mean) != len(pixel_std):
            raise ConfigError(f"MODEL.PIXEL_MEAN ({len(pixel_mean)} values) and MODEL.PIXEL_STD ({len(pixel_std)}) differ in length.")
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.size_divisibility = size_divisibility
        self.resize = resize
        self.min_size_train = [int(s) for s in min_size_train]
        self.max_size_train = max_size_train
        self.min_size_test = min_size_test
        self.max_size_test = max_size_test

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """``[C, H, W]`` uint8/float in 0-255 -> float32 ``(x - mean) / std``."""
        if image.dim() != 3 or image.shape[0] != self.pixel_mean.shape[0]:
            raise ValueError(
                f"Expected an image tensor [C={self.pixel_mean.shape[0]}, H, W], got shape {tuple(image.shape)}."
            )
        return (image.float() - self.pixel_mean) / self.pixel_std

    def normalize_padded(self, images: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """The batch form of :meth:`forward` for traced graphs (export; no resizing).

        ``images [N, C, H, W]`` (0-255, already padded), ``image_sizes [N, 2]`` ``(height, width)``
        of each valid region -> float32 ``[N, C, H, W]`` normalised, with the padding set to 0 as
        :meth:`forward` pads its normalised images, so the padding's content does not matter.
        """
        x = (images.float() - self.pixel_mean) / self.pixel_std
        h, w = images.shape[-2], images.shape[-1]
        rows = torch.arange(h, device=images.device, dtype=torch.float32)[None, :] < image_sizes[:, 0:1]  # [N, H]
        cols = torch.arange(w, device=images.device, dtype=torch.float32)[None, :] < image_sizes[:, 1:2]  # [N, W]
        return x * (rows[:, :, None] & cols[:, None, :]).to(x.dtype)[:, None]

    def _target_size(self, training: bool) -> tuple[float, float]:
        if training:
            idx = int(torch.randint(len(self.min_size_train), (1,)).item())
            return float(self.min_size_train[idx]), float(self.max_size_train)
        return float(self.min_size_test), float(self.max_size_test)

    def resize_image(self, image: torch.Tensor, training: bool) -> torch.Tensor:
        """Bilinear resize of a normalised ``[C, H, W]`` image; returns ``[C, H', W']``."""
        h, w = image.shape[-2:]
        scale = resize_scale(h, w, *self._target_size(training))
        if scale is None:
            return image
        return F.interpolate(
            image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
        )[0]

    def forward(self, images: list[torch.Tensor], training: bool = False) -> ImageList:
        """List of ``[C, H_i, W_i]`` -> ``ImageList`` of normalised (resized), padded images."""
        out = [self.normalize(x) for x in images]
        if self.resize:
            out = [self.resize_image(x, training) for x in out]
        return ImageList.from_tensors(out, self.size_divisibility)
