"""MODEL.POSTPROCESSOR.FILTER_EMPTY_BOXES: fully clipped / NaN boxes from inf or huge deltas are dropped.

References: a per-row Python loop for the compaction, and the pure-torch reference decode
and NMS (``retinakit.ops.reference``) run on the loop-filtered candidates.
"""
from __future__ import annotations

import pytest
import torch
from test_postprocess_helpers import MiniDeltaCoder, drop_empty_reference, inject_bad_deltas, make_heads

from retinakit import ops
from retinakit.config import get_cfg
from retinakit.modeling import build_model
from retinakit.modeling.postprocess import RetinaNetPostProcessor, drop_empty_candidates

REF = not ops.extension_available()


def _packed(n: int, m: int, seed: int):
    """Random packed candidates with zero-width, zero-height, inverted and NaN boxes and padding."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, m, 2, generator=g) * 100
    wh = torch.rand(n, m, 2, generator=g) * 20
    kind = torch.randint(0, 6, (n, m), generator=g)
    wh[..., 0] = torch.where(kind == 1, torch.zeros_like(wh[..., 0]), wh[..., 0])
    wh[..., 1] = torch.where(kind == 2, torch.zeros_like(wh[..., 1]), wh[..., 1])
    wh = torch.where((kind == 3)[..., None], -wh, wh)
    boxes = torch.cat([xy, xy + wh], dim=-1)
    boxes[kind == 4] = float("nan")
    scores = torch.rand(n, m, generator=g)
    classes = torch.randint(0, 80, (n, m), generator=g)
    num_valid = torch.tensor([m, 0, m // 2, 1][:n])
    return boxes, scores, classes, num_valid


@pytest.mark.parametrize("m,seed", [(1, 0), (7, 1), (300, 2)])
def test_drop_empty_candidates_matches_loop(m, seed):
    packed = _packed(4, m, seed)
    got = drop_empty_candidates(*packed)
    ref = drop_empty_reference(*packed)
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype and torch.equal(g, r)
    if m > 1:
        assert int(got[3][0]) < m  # some rows were dropped: the test is not vacuous


def _reference(cls, box, anchors, sizes, nms_type, filter_empty):
    b, s, c, nv = ops.reference.decode_detections(cls, box, anchors, torch.tensor(sizes), 0.05, 1000, [1.0] * 4,
                                                  MiniDeltaCoder().scale_clamp)
    if filter_empty:
        b, s, c, nv = drop_empty_reference(b, s, c, nv)
    return ops.reference.multiclass_nms(b, s, c, nv, nms_type, 0.5, 100)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("nms_type", ["batched", "agnostic", "soft"])
def test_bad_deltas_are_dropped_and_match_reference(nms_type, fused):
    cls, box, anchors = make_heads(2, (96, 128), num_classes=5, seed=8, mean=-2.0)
    box = inject_bad_deltas(box, seed=8, frac=0.2)
    sizes = [(96, 128), (90, 110)]
    pp = RetinaNetPostProcessor(box_coder=MiniDeltaCoder(fused=fused), nms_type=nms_type, allow_reference_ops=REF)
    ours = pp(cls, box, anchors, sizes)
    rb, rs, rc, rn = _reference(cls, box, anchors, sizes, nms_type, True)
    for i, inst in enumerate(ours):
        d = int(rn[i])
        assert len(inst) == d > 0
        wh = inst.pred_boxes.tensor[:, 2:] - inst.pred_boxes.tensor[:, :2]
        assert (wh > 0).all()
        assert torch.equal(inst.pred_classes, rc[i, :d])
        torch.testing.assert_close(inst.scores, rs[i, :d], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(inst.pred_boxes.tensor, rb[i, :d], atol=1e-3, rtol=1e-5)


def test_filter_off_keeps_empty_boxes():
    """Same inputs with the filter off: the constructed deltas do produce empty detections."""
    cls, box, anchors = make_heads(1, (96, 128), num_classes=5, seed=8, mean=-2.0)
    box = inject_bad_deltas(box, seed=8, frac=0.2)
    pp = RetinaNetPostProcessor(box_coder=MiniDeltaCoder(), nms_type="agnostic", allow_reference_ops=REF, filter_empty_boxes=False)
    (inst,) = pp(cls, box, anchors, [(96, 128)])
    t = inst.pred_boxes.tensor
    assert not ((t[:, 2] > t[:, 0]) & (t[:, 3] > t[:, 1])).all()


def _saturated_model(filter_empty: bool) -> torch.nn.Module:
    """R18 RetinaNet whose head predicts, at every location, score ~1.0 with inf/huge deltas for
    anchors 0-3 and score 0.5 with zero deltas (the anchor itself) for anchor 4."""
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RETINANET.NUM_CLASSES", 3,
                         "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.POSTPROCESSOR.FILTER_EMPTY_BOXES", filter_empty,
                         "MODEL.POSTPROCESSOR.ALLOW_REFERENCE_OPS", REF])
    model = build_model(cfg).eval()
    head, k = model.head, 3
    with torch.no_grad():
        head.cls_score.weight.zero_()
        head.bbox_pred.weight.zero_()
        cls_bias = torch.full_like(head.cls_score.bias, -30.0)
        cls_bias[[0 * k, 1 * k, 2 * k, 3 * k]] = 30.0  # class 0 of anchors 0-3: sigmoid -> 1.0
        cls_bias[4 * k + 1] = 0.0  # class 1 of anchor 4: 0.5
        box_bias = torch.zeros_like(head.bbox_pred.bias)
        box_bias[0 * 4 + 0] = float("inf")  # dx = inf: clipped to the right edge
        box_bias[1 * 4 + 1] = -1e30  # dy huge: clipped to the top edge
        box_bias[2 * 4 + 2] = float("-inf")  # dw = -inf: zero width
        box_bias[3 * 4 + 3] = -1e4  # dh huge negative: zero height after exp underflow
        head.cls_score.bias.copy_(cls_bias)
        head.bbox_pred.bias.copy_(box_bias)
    return model


@pytest.mark.parametrize("filter_empty", [True, False])
def test_real_model_with_inf_and_huge_deltas(filter_empty):
    g = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.randint(0, 256, (3, 128, 160), generator=g, dtype=torch.uint8), "height": 256, "width": 320}]
    with torch.no_grad():
        (out,) = _saturated_model(filter_empty)(inputs)
    inst = out["instances"]
    t = inst.pred_boxes.tensor
    nonempty = (t[:, 2] > t[:, 0]) & (t[:, 3] > t[:, 1])
    if filter_empty:
        assert len(inst) > 0 and nonempty.all()
        assert (inst.pred_classes == 1).all() and torch.allclose(inst.scores, torch.full_like(inst.scores, 0.5))
    else:  # the reported bug: empty boxes returned with score 1.0 ahead of the real ones
        assert (~nonempty).sum() > 0
        assert (inst.scores[~nonempty] == 1.0).all() and (inst.pred_classes[~nonempty] == 0).all()
