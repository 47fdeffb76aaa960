"""``Boxes``: an (N, 4) float tensor of boxes in absolute XYXY coordinates."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

__all__ = ["Boxes", "box_area", "pairwise_iou"]


def _wide(boxes: torch.Tensor) -> torch.Tensor:
    """``boxes`` in the type box arithmetic runs in: int64 for integer boxes, float32 for
    float16/bfloat16 (and other sub-32-bit floats), float32/float64 unchanged.

    Casting *before* subtracting keeps uint8 differences from wrapping and fp16 areas of
    boxes larger than ~256 px from overflowing to inf.
    """
    if boxes.is_floating_point():
        return boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()
    return boxes.long()


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of XYXY boxes ``[..., 4]`` -> ``[...]``; inverted boxes have zero area.

    Result dtype: float32 for float32/float16/bfloat16 boxes, float64 for float64, int64 for
    integer boxes (exact; torchvision's ``box_area`` gives the same values, in int32 for
    types up to 32 bits).
    """
    b = _wide(boxes)
    wh = (b[..., 2:] - b[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair: ``a [N, 4]``, ``b [M, 4]`` (XYXY, any real dtype) -> ``[N, M]``.

    Computed as :func:`box_area` does (integer boxes in int64, float16/bfloat16 in float32);
    the result is float64 for float64 boxes and float32 otherwise, as torchvision's
    ``box_iou``. Inverted boxes count as empty; pairs whose union is zero get IoU 0
    (torchvision: NaN).
    """
    a, b = _wide(a), _wide(b)
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    # Clamp only keeps 0/0 out of the (masked) branch, so that gradients stay finite.
    floor = torch.finfo(union.dtype).tiny if union.is_floating_point() else 1
    iou = inter / union.clamp(min=floor)
    return torch.where(union > 0, iou, torch.zeros_like(iou))


class Boxes:
    """A list of N boxes stored as ``tensor [N, 4]`` (x0, y0, x1, y1), float."""

    def __init__(self, tensor: torch.Tensor | Sequence[Sequence[float]]) -> None:
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.as_tensor(tensor, dtype=torch.float32)
        if tensor.numel() == 0:
            tensor = tensor.reshape(-1, 4).to(dtype=torch.float32 if not tensor.is_floating_point() else tensor.dtype)
        if tensor.dim() != 2 or tensor.size(-1) != 4:
            raise ValueError(f"Boxes expects a tensor of shape [N, 4], got {tuple(tensor.shape)}.")
        self.tensor = tensor

    def clone(self) -> Boxes:
        return Boxes(self.tensor.clone())

    def to(self, *args, **kwargs) -> Boxes:
        return Boxes(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def area(self) -> torch.Tensor:
        """``[N]`` areas (0 for empty/inverted boxes)."""
        return box_area(self.tensor)

    def clip(self, box_size: tuple[int, int]) -> None:
        """Clip in place to an image of ``(height, width)``."""
        h, w = box_size
        x0 = self.tensor[:, 0].clamp(min=0, max=w)
        y0 = self.tensor[:, 1].clamp(min=0, max=h)
        x1 = self.tensor[:, 2].clamp(min=0, max=w)
        y1 = self.tensor[:, 3].clamp(min=0, max=h)
        self.tensor = torch.stack((x0, y0, x1, y1), dim=-1)

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """``[N]`` bool: width and height both greater than ``threshold``."""
        b = _wide(self.tensor)
        wh = b[:, 2:] - b[:, :2]
        return (wh[:, 0] > threshold) & (wh[:, 1] > threshold)

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale coordinates in place."""
        self.tensor[:, 0::2] *= scale_x
        self.tensor[:, 1::2] *= scale_y

    def get_centers(self) -> torch.Tensor:
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def __getitem__(self, item) -> Boxes:
        if isinstance(item, int):
            return Boxes(self.tensor[item].view(1, -1))
        return Boxes(self.tensor[item])

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __repr__(self) -> str:
        return f"Boxes({self.tensor})"

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.tensor

    @classmethod
    def cat(cls, boxes_list: list[Boxes]) -> Boxes:
        if len(boxes_list) == 0:
            return cls(torch.empty(0, 4))
        return cls(torch.cat([b.tensor for b in boxes_list], dim=0))

    @staticmethod
    def pairwise_iou(a: Boxes, b: Boxes) -> torch.Tensor:
        return pairwise_iou(a.tensor, b.tensor)
