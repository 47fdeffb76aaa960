"""A tiny detector-shaped model and a deterministic infinite loader for engine tests.

The model follows retinakit's contract (``list[dict(image, image_id, ...)]`` in; a dict of
scalar losses in training mode) and uses dropout, so it draws from torch's RNG.
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from retinakit.structures import Boxes, Instances


class DummyDetector(nn.Module):
    """conv -> BN -> dropout -> pooled features; losses are means over the batch.

    ``nan_at_call``: the loss of that forward call (0-based) is NaN (non-finite guard tests).
    """

    def __init__(self, nan_at_call: int = -1, dropout: float = 0.2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.drop = nn.Dropout(dropout)
        self.cls = nn.Linear(8, 1)
        self.reg = nn.Linear(8, 4)
        self.nan_at_call = nan_at_call
        self.calls = 0
        self.seen_dtypes: list[torch.dtype] = []

    def _features(self, batch: list[dict[str, Any]]) -> torch.Tensor:
        x = torch.stack([d["image"].float() / 255.0 for d in batch]).to(self.conv.weight.device)
        y = self.conv(x)
        self.seen_dtypes.append(y.dtype)
        return self.drop(torch.relu(self.norm(y))).mean(dim=(2, 3))  # [B, 8]

    def forward(self, batch: list[dict[str, Any]]) -> Any:
        f = self._features(batch)
        if not self.training:
            out = []
            for d, fi in zip(batch, f):
                inst = Instances((d["height"], d["width"]))
                box = torch.tensor([[1.0, 1.0, 5.0, 5.0]]) + fi[:4].float().abs().cpu()
                inst.pred_boxes = Boxes(box)
                inst.scores = torch.sigmoid(self.cls(fi).float()).reshape(1).cpu()
                inst.pred_classes = torch.zeros(1, dtype=torch.int64)
                out.append({"instances": inst})
            return out
        target = torch.stack([d["target"] for d in batch]).to(f.device)  # [B, 5]
        cls = self.cls(f)[:, 0]
        reg = self.reg(f)
        loss_cls = nn.functional.binary_cross_entropy_with_logits(cls.float(), target[:, 0])
        loss_box_reg = nn.functional.smooth_l1_loss(reg.float(), target[:, 1:])
        if self.calls == self.nan_at_call:
            loss_cls = loss_cls * float("nan")
        self.calls += 1
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg}


def make_sample(index: int, size: int = 16) -> dict[str, Any]:
    """Sample ``index`` of an endless synthetic dataset (a pure function of ``index``)."""
    g = torch.Generator().manual_seed(1000 + index)
    image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
    target = torch.cat([torch.randint(0, 2, (1,), generator=g).float(), torch.rand(4, generator=g)])
    return {"image": image, "height": size, "width": size, "image_id": index, "target": target}


class SyntheticLoader:
    """Infinite batches; batch ``k`` of rank ``r`` holds samples ``(k * world + r) * bs ...``.

    Also draws from python/numpy RNG per batch (like augmentations would), so the RNG
    state must be restored exactly on resume. ``start_iter`` positions the stream.
    """

    def __init__(self, batch_size: int, rank: int = 0, world: int = 1, start_iter: int = 0, augment: bool = True) -> None:
        self.bs, self.rank, self.world, self.start = batch_size, rank, world, start_iter
        self.augment = augment

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        for k in itertools.count(self.start):
            first = (k * self.world + self.rank) * self.bs
            batch = [make_sample(i) for i in range(first, first + self.bs)]
            if self.augment and random.random() < 0.5 and np.random.rand() < 2:  # consume RNG like augmentation
                for d in batch:
                    d["image"] = d["image"].flip(-1)
            yield batch
