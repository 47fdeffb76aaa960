"""Random inputs for the op tests: clustered boxes with degenerate variants."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

from retinakit import ops

needs_ext = pytest.mark.skipif(not ops.extension_available(), reason=f"retinakit._C not built: {ops.load_error()}")
has_cuda = ops.has_cuda()  # extension loaded, CUDA kernels registered, GPU visible

KINDS = ("normal", "zero_area", "inverted", "identical", "huge", "outside", "ties")


def random_boxes(n: int, kind: str = "normal", seed: int = 0, num_classes: int = 1):
    """``boxes [n, 4]``, ``scores [n]``, ``classes [n]`` with clusters so NMS has work to do."""
    g = torch.Generator().manual_seed(seed)
    scale = 1e5 if kind == "huge" else 500.0
    centers = torch.rand(max(1, n // 8), 2, generator=g) * scale
    pick = torch.randint(0, centers.shape[0], (n,), generator=g)
    ctr = centers[pick] + torch.randn(n, 2, generator=g) * scale * 0.01
    wh = torch.rand(n, 2, generator=g) * scale * 0.1 + 1.0
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    scores = torch.rand(n, generator=g)
    if kind == "zero_area":
        z = torch.rand(n, generator=g) < 0.3
        boxes[z, 2] = boxes[z, 0]
    elif kind == "inverted":
        z = torch.rand(n, generator=g) < 0.3
        boxes[z] = boxes[z][:, [2, 3, 0, 1]]
    elif kind == "identical":
        boxes[:] = boxes[:1].clone() if n else boxes
    elif kind == "outside":
        boxes = boxes - scale * 2 + torch.rand(n, 1, generator=g) * scale * 5
    elif kind == "ties":
        scores = (scores * 4).round() / 4
    classes = torch.randint(0, num_classes, (n,), generator=g)
    return boxes, scores, classes


def with_nonfinite(scores: Tensor, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    s = scores.clone()
    r = torch.rand(s.shape, generator=g)
    s[r < 0.05] = float("nan")
    s[(r >= 0.05) & (r < 0.08)] = float("inf")
    s[(r >= 0.08) & (r < 0.1)] = float("-inf")
    return s
