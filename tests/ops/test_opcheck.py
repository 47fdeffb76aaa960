"""``torch.library.opcheck`` on every op of ``torch.ops.retinakit``.

opcheck runs each op with its registered schema, fake (meta) kernel, autograd registration
and dispatch, and checks that they agree with the real kernel: output shapes/dtypes of the
fake kernel (``test_aot_dispatch_static`` / ``dynamic``), schema mutation/aliasing claims
(``test_schema``) and autograd registration. Inputs are representative: clustered boxes
with several categories, and empty inputs.
"""
from __future__ import annotations

import pytest
import torch
from rk_ops_testutils import needs_ext, random_boxes

from retinakit import ops

pytestmark = needs_ext

# Every op of the library must be listed here (checked by test_every_op_is_opchecked).
OPS = ("nms", "batched_nms", "soft_nms", "decode_detections", "multiclass_nms")


def _op(name: str):
    return getattr(torch.ops.retinakit, name).default


def _nms_args(n: int) -> tuple:
    boxes, scores, _ = random_boxes(n, seed=1)
    return (boxes, scores, 0.5)


def _batched_nms_args(n: int) -> tuple:
    boxes, scores, classes = random_boxes(n, seed=2, num_classes=3)
    return (boxes, scores, classes, 0.5)


def _soft_nms_args(n: int, method: str) -> tuple:
    boxes, scores, classes = random_boxes(n, seed=3, num_classes=3)
    return (boxes, scores, classes, method, 0.5, 0.3, 0.01)


def _decode_args(n_images: int, sizes: tuple[tuple[int, int], ...], num_anchors: int = 3, num_classes: int = 4) -> tuple:
    """Per-level logits ``[N, A*K, H, W]``, deltas ``[N, A*4, H, W]`` and anchors ``[H*W*A, 4]``."""
    g = torch.Generator().manual_seed(4)
    logits, deltas, anchors = [], [], []
    for level, (h, w) in enumerate(sizes):
        logits.append(torch.randn(n_images, num_anchors * num_classes, h, w, generator=g) * 2)
        deltas.append(torch.randn(n_images, num_anchors * 4, h, w, generator=g) * 0.2)
        stride = 8.0 * 2**level
        ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
        ctr = torch.stack([xs, ys], dim=-1).reshape(-1, 1, 2).expand(-1, num_anchors, 2)
        half = (torch.arange(1, num_anchors + 1, dtype=torch.float32) * stride * 2).view(1, -1, 1).expand_as(ctr)
        anchors.append(torch.cat([ctr - half, ctr + half], dim=-1).reshape(-1, 4))
    image_sizes = torch.tensor([64, 80], dtype=torch.int64).repeat(n_images, 1)
    return (logits, deltas, anchors, image_sizes, 0.3, 20, [1.0, 1.0, 1.0, 1.0], 4.135)


def _multiclass_args(n_images: int, nms_type: str) -> tuple:
    boxes, scores, classes, num_valid = _op("decode_detections")(*_decode_args(n_images, ((8, 10), (4, 5))))
    return (boxes, scores, classes, num_valid, nms_type, 0.5, 10, "gaussian", 0.5, 0.01)


# Built lazily (inside the tests), so collecting the module never calls an op.
CASES = {
    "nms": [lambda: _nms_args(64), lambda: _nms_args(0)],
    "batched_nms": [lambda: _batched_nms_args(64), lambda: _batched_nms_args(0)],
    "soft_nms": [lambda: _soft_nms_args(48, "linear"), lambda: _soft_nms_args(48, "gaussian"), lambda: _soft_nms_args(0, "gaussian")],
    "decode_detections": [
        lambda: _decode_args(2, ((8, 10), (4, 5))),
        lambda: _decode_args(0, ((8, 10), (4, 5))),
        lambda: _decode_args(1, ((0, 0), (2, 3))),
    ],
    "multiclass_nms": [
        lambda: _multiclass_args(2, "batched"),
        lambda: _multiclass_args(2, "agnostic"),
        lambda: _multiclass_args(2, "soft"),
        lambda: _multiclass_args(0, "batched"),
    ],
}


def test_every_op_is_opchecked() -> None:
    """Every op the extension registers has opcheck cases here (a new op must add some)."""
    registered = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("retinakit::")}
    assert registered == set(OPS) == set(CASES)
    assert set(ops.CUDA_OPS) == set(OPS)


@pytest.mark.parametrize("name,index", [(n, i) for n in OPS for i in range(len(CASES[n]))])
def test_opcheck(name: str, index: int) -> None:
    """Schema, fake kernel and dispatch registrations agree with the CPU kernel."""
    torch.library.opcheck(_op(name), CASES[name][index]())
