"""``ImageList``: images of different sizes padded into one tensor."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["ImageList"]


class ImageList:
    """``tensor [N, C, H, W]`` of padded images and their true ``image_sizes [(h, w), ...]``."""

    def __init__(self, tensor: torch.Tensor, image_sizes: list[tuple[int, int]]) -> None:
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> torch.Tensor:
        h, w = self.image_sizes[idx]
        return self.tensor[idx, ..., :h, :w]

    def to(self, *args, **kwargs) -> ImageList:
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @staticmethod
    def from_tensors(
        tensors: Sequence[torch.Tensor], size_divisibility: int = 0, pad_value: float = 0.0
    ) -> ImageList:
        """Pad ``[C, H_i, W_i]`` tensors at the bottom/right to a common size.

        The common size is the maximum height/width, rounded up to a multiple of
        ``size_divisibility`` when it is > 1.
        """
        if len(tensors) == 0:
            raise ValueError("ImageList.from_tensors needs at least one image.")
        shapes = [tuple(t.shape[:-2]) for t in tensors]
        if len(set(shapes)) != 1:
            raise ValueError(f"Images must have the same number of channels; got {shapes}.")
        image_sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        max_h = max(s[0] for s in image_sizes)
        max_w = max(s[1] for s in image_sizes)
        if size_divisibility > 1:
            d = size_divisibility
            max_h = (max_h + d - 1) // d * d
            max_w = (max_w + d - 1) // d * d
        if len(tensors) == 1:
            h, w = image_sizes[0]
            batched = F.pad(tensors[0], [0, max_w - w, 0, max_h - h], value=pad_value).unsqueeze(0)
        else:
            batched = tensors[0].new_full((len(tensors), *shapes[0], max_h, max_w), pad_value)
            for img, pad_img in zip(tensors, batched):
                pad_img[..., : img.shape[-2], : img.shape[-1]].copy_(img)
        return ImageList(batched.contiguous(), image_sizes)
