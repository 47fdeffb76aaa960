"""RetinaNetPostProcessor: same detections as torchvision's RetinaNet.postprocess_detections."""
from __future__ import annotations

import pytest
import torch
from test_postprocess_helpers import (
    MiniDeltaCoder,
    drop_empty_reference,
    make_heads,
    torchvision_postprocess,
)

from retinakit import ops
from retinakit.modeling.postprocess import (
    POSTPROCESSOR_REGISTRY,
    RetinaNetPostProcessor,
)

REF = not ops.extension_available()  # without the extension, test the reference path explicitly


def _assert_same(ours, theirs, atol=1e-4):
    assert len(ours) == len(theirs)
    for inst, det in zip(ours, theirs):
        assert len(inst) == det["boxes"].shape[0]
        assert torch.equal(inst.pred_classes, det["labels"])
        torch.testing.assert_close(inst.scores, det["scores"], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(inst.pred_boxes.tensor, det["boxes"], atol=atol, rtol=1e-5)


@pytest.mark.parametrize("seed,n,hw,k", [(0, 1, (256, 320), 80), (1, 2, (200, 264), 80), (2, 2, (128, 160), 1)])
def test_matches_torchvision(seed, n, hw, k):
    torch.manual_seed(seed)
    cls, box, anchors = make_heads(n, hw, num_classes=k, seed=seed, mean=-5.0 if k > 1 else -1.5)
    sizes = [(hw[0] - 7 * i, hw[1] - 3 * i) for i in range(n)]
    pp = RetinaNetPostProcessor(box_coder=MiniDeltaCoder(), allow_reference_ops=REF, filter_empty_boxes=False)
    ours = pp(cls, box, anchors, sizes)
    theirs = torchvision_postprocess(cls, box, anchors, sizes)
    assert sum(len(i) for i in ours) > 0
    _assert_same(ours, theirs)
    for inst, s in zip(ours, sizes):
        assert inst.image_size == s
        assert inst.pred_boxes.tensor.dtype == torch.float32 and inst.pred_classes.dtype == torch.int64


def test_generic_box_coder_path_matches_fused():
    cls, box, anchors = make_heads(2, (128, 192), seed=3)
    sizes = [(128, 192), (120, 180)]
    fused = RetinaNetPostProcessor(box_coder=MiniDeltaCoder(), allow_reference_ops=REF)(cls, box, anchors, sizes)
    generic = RetinaNetPostProcessor(box_coder=MiniDeltaCoder(fused=False), allow_reference_ops=REF)(cls, box, anchors, sizes)
    for a, b in zip(fused, generic):
        assert torch.equal(a.pred_classes, b.pred_classes)
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("filter_empty", [False, True])
@pytest.mark.parametrize("nms_type", ["agnostic", "soft"])
def test_other_nms_types_match_reference(nms_type, filter_empty):
    cls, box, anchors = make_heads(1, (96, 128), seed=4)
    sizes = [(96, 128)]
    pp = RetinaNetPostProcessor(
        box_coder=MiniDeltaCoder(), nms_type=nms_type, nms_thresh=0.5, topk_candidates=300, allow_reference_ops=REF,
        filter_empty_boxes=filter_empty,
    )
    (inst,) = pp(cls, box, anchors, sizes)
    b, s, c, nv = ops.reference.decode_detections(cls, box, anchors, torch.tensor(sizes), 0.05, 300, [1.0] * 4, pp.box_coder.scale_clamp)
    if filter_empty:
        b, s, c, nv = drop_empty_reference(b, s, c, nv)
    _, rs, rc, rn = ops.reference.multiclass_nms(b, s, c, nv, nms_type, 0.5, 100)
    d = int(rn[0])
    assert len(inst) == d > 0
    assert torch.equal(inst.pred_classes, rc[0, :d])
    torch.testing.assert_close(inst.scores, rs[0, :d], atol=1e-5, rtol=1e-5)


def test_low_precision_logits_give_float32_boxes():
    cls, box, anchors = make_heads(1, (128, 160), seed=5)
    pp = RetinaNetPostProcessor(box_coder=MiniDeltaCoder(), allow_reference_ops=REF)
    for dt in (torch.float16, torch.bfloat16):
        (inst,) = pp([c.to(dt) for c in cls], [b.to(dt) for b in box], anchors, [(128, 160)])
        assert inst.pred_boxes.tensor.dtype == torch.float32 and inst.scores.dtype == torch.float32
        assert len(inst) > 0


def test_no_candidates_and_registry():
    cls, box, anchors = make_heads(2, (64, 64), seed=6, mean=-20.0)
    pp = POSTPROCESSOR_REGISTRY.get("RetinaNetPostProcessor")(box_coder=MiniDeltaCoder(), allow_reference_ops=REF)
    out = pp(cls, box, anchors, [(64, 64), (60, 50)])
    assert [len(i) for i in out] == [0, 0]
    assert out[0].pred_boxes.tensor.shape == (0, 4)


def test_from_config():
    from retinakit.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.POSTPROCESSOR.NMS_TYPE = "soft"
    cfg.TEST.DETECTIONS_PER_IMAGE = 50
    pp = RetinaNetPostProcessor(cfg, MiniDeltaCoder())
    assert pp.nms_type == "soft" and pp.max_detections == 50 and pp.score_thresh == cfg.MODEL.RETINANET.SCORE_THRESH_TEST
    assert pp.filter_empty_boxes is True
    cfg.MODEL.POSTPROCESSOR.FILTER_EMPTY_BOXES = False
    assert RetinaNetPostProcessor(cfg, MiniDeltaCoder()).filter_empty_boxes is False
    with pytest.raises(ValueError, match="NMS_TYPE"):
        RetinaNetPostProcessor(box_coder=MiniDeltaCoder(), nms_type="fast")


def test_library_box_coders():
    """The lead's DeltaXYWHBoxCoder takes the fused path; LegacyDeltaXYWHBoxCoder the generic one."""
    box_coder = pytest.importorskip("retinakit.modeling.box_coder")
    cls, box, anchors = make_heads(1, (128, 160), seed=7)
    sizes = [(128, 160)]
    coder = box_coder.DeltaXYWHBoxCoder()
    (inst,) = RetinaNetPostProcessor(box_coder=coder, allow_reference_ops=REF, filter_empty_boxes=False)(cls, box, anchors, sizes)
    (det,) = torchvision_postprocess(cls, box, anchors, sizes)
    _assert_same([inst], [det])
    legacy = box_coder.LegacyDeltaXYWHBoxCoder()
    assert getattr(legacy, "fused_decode_params", None) is None
    (linst,) = RetinaNetPostProcessor(box_coder=legacy, allow_reference_ops=REF)(cls, box, anchors, sizes)
    assert len(linst) > 0 and linst.pred_boxes.tensor.dtype == torch.float32
