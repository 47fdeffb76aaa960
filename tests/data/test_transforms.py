"""Transforms against torchvision.transforms.v2 and hand-computed geometry."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision import tv_tensors
from torchvision.transforms import v2

from retinakit.config import get_cfg
from retinakit.data import (
    DatasetMapper,
    InferencePreprocessor,
    build_inference_preprocess,
)
from retinakit.data.transforms import DetectionTransform, TransformParams, resized_shape


@pytest.mark.parametrize("h,w,short,cap", [
    (480, 640, 800, 1333), (100, 1000, 800, 1333), (333, 500, 160, 0), (50, 50, 0, 100), (7, 3, 5, 9),
])
def test_resized_shape(h, w, short, cap):
    oh, ow = resized_shape(h, w, short, cap)
    if short <= 0:
        assert (oh, ow) == (h, w)
        return
    scale = min(short / min(h, w), cap / max(h, w) if cap > 0 else float("inf"))
    assert abs(oh - h * scale) <= 0.5 and abs(ow - w * scale) <= 0.5
    # torchvision's Resize(size, max_size) computes the same size up to rounding
    ref = v2.Resize(short, max_size=cap if cap > 0 and cap > short else None)(torch.zeros(1, h, w)).shape[-2:]
    assert abs(ref[0] - oh) <= 1 and abs(ref[1] - ow) <= 1


def test_apply_matches_torchvision_v2():
    img = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    boxes = torch.tensor([[1.0, 2.0, 11.0, 22.0], [0.0, 0.0, 40.0, 30.0]])
    t = DetectionTransform([60], 1000, flip="horizontal")
    p = TransformParams((60, 80), hflip=True)
    out_img, out_boxes = t.apply_image(img, p), t.apply_boxes(boxes, (30, 40), p)
    ref = v2.Compose([v2.Resize((60, 80), antialias=True), v2.RandomHorizontalFlip(p=1.0)])
    ref_img, ref_boxes = ref(img, tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(30, 40)))
    assert torch.equal(out_img, ref_img)
    torch.testing.assert_close(out_boxes, ref_boxes.as_subclass(torch.Tensor))
    torch.testing.assert_close(out_boxes[0], torch.tensor([80 - 22.0, 4.0, 80 - 2.0, 44.0]))


def test_sampling_choice_range_and_flip_rate():
    g = torch.Generator().manual_seed(0)
    t = DetectionTransform([100, 120], 10000, sampling="range", flip="horizontal")
    ps = [t.sample_params(50, 100, g) for _ in range(400)]
    shorts = {p.out_size[0] for p in ps}
    assert min(shorts) == 100 and max(shorts) == 120 and len(shorts) > 10
    assert 150 < sum(p.hflip for p in ps) < 250 and not any(p.vflip for p in ps)
    t = DetectionTransform([64, 96], 10000, sampling="choice", flip="vertical", flip_prob=1.0)
    ps = [t.sample_params(10, 20, g) for _ in range(50)]
    assert {p.out_size[0] for p in ps} == {64, 96} and all(p.vflip and not p.hflip for p in ps)


def test_bad_transform_settings():
    with pytest.raises(ValueError, match="RANDOM_FLIP"):
        DetectionTransform([800], 1333, flip="diagonal")
    with pytest.raises(ValueError, match="range"):
        DetectionTransform([800], 1333, sampling="range")


def test_photometric_is_deterministic_per_params():
    cfg = get_cfg()
    cfg.INPUT.PHOTOMETRIC.ENABLED = True
    t = DetectionTransform.from_config(cfg, is_train=True)
    img = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    p = TransformParams((20, 20), photometric_seed=5)
    a, b = t.apply_image(img, p), t.apply_image(img, p)
    assert torch.equal(a, b) and not torch.equal(a, img)


def test_inference_preprocessor_equals_test_mapper(tmp_path):
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.FORMAT = 64, 80, "BGR"
    pre = build_inference_preprocess(cfg)
    assert isinstance(pre, InferencePreprocessor)
    mapped = DatasetMapper(cfg, is_train=False)({"file_name": str(tmp_path / "x.png"), "image_id": 1, "height": 37, "width": 53})
    for inp in (str(tmp_path / "x.png"), arr, Image.fromarray(arr), torch.from_numpy(arr).permute(2, 0, 1)):
        t, size = pre(inp)
        assert size == (37, 53) and torch.equal(t, mapped["image"])
    assert tuple(mapped["image"].shape) == (3, 56, 80)
    cfg.INPUT.RESIZE_IN_MODEL = True
    t, _ = build_inference_preprocess(cfg)(arr)
    assert torch.equal(t, torch.from_numpy(arr[:, :, ::-1].copy()).permute(2, 0, 1))


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(4, 60), w=st.integers(4, 60), short=st.integers(0, 90), cap=st.integers(0, 120),
    hflip=st.booleans(), vflip=st.booleans(), seed=st.integers(0, 2**16),
)
def test_boxes_follow_pixels_like_torchvision(h, w, short, cap, hflip, vflip, seed):
    """Random sizes/boxes: our geometry == torchvision v2 Resize + flips on BoundingBoxes."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(5, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
    wh = 1 + torch.rand(5, 2, generator=g) * torch.tensor([w / 2, h / 2])
    boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([float(w), float(h)]))], 1)
    out_size = resized_shape(h, w, short, cap)
    p = TransformParams(out_size, hflip=hflip, vflip=vflip)
    t = DetectionTransform([max(short, 1)], cap)
    ops = [v2.Resize(list(out_size), antialias=True)]
    ops += ([v2.RandomHorizontalFlip(1.0)] if hflip else []) + ([v2.RandomVerticalFlip(1.0)] if vflip else [])
    ref = v2.Compose(ops)(tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)))
    torch.testing.assert_close(t.apply_boxes(boxes, (h, w), p), ref.as_subclass(torch.Tensor), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("out_size,hflip,vflip", [
    ((60, 80), True, False), ((15, 20), False, True), ((45, 60), True, True), ((30, 40), False, False),
])
def test_box_frames_the_same_pixels(out_size, hflip, vflip):
    """A filled rectangle and its box go through image and box transforms; the bright
    region of the output image is where the output box says (within one pixel)."""
    img = torch.zeros(3, 30, 40, dtype=torch.uint8)
    img[:, 6:18, 4:14] = 255  # box [4, 6, 14, 18]
    t = DetectionTransform([30], 1000)
    p = TransformParams(out_size, hflip=hflip, vflip=vflip)
    out = t.apply_image(img, p)[0] > 127
    box = t.apply_boxes(torch.tensor([[4.0, 6.0, 14.0, 18.0]]), (30, 40), p)[0]
    ys, xs = torch.nonzero(out, as_tuple=True)
    found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    assert (found - box).abs().max() <= 1.0, (found, box)
