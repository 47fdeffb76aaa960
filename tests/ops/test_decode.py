"""decode_detections and multiclass_nms: compiled CPU kernels vs the pure-torch reference."""
from __future__ import annotations

import math
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from rk_ops_testutils import needs_ext, random_boxes, with_nonfinite

from retinakit import ops

pytestmark = needs_ext
CLAMP = math.log(1000.0 / 16)
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "retinakit", "_C")
CXX = shutil.which("c++") or shutil.which("g++")

# rk_expf (retinakit/_C/rk_exp.h, torch-free) over a float32 file, as the kernels compile it.
EXP_DRIVER = r"""
#include <cstdio>
#include <vector>
#include "rk_exp.h"
int main(int argc, char** argv) {
  FILE* f = fopen(argv[1], "rb");
  std::vector<float> x;
  float v;
  while (fread(&v, 4, 1, f) == 1) x.push_back(v);
  fclose(f);
  for (float& e : x) e = retinakit::rk_expf(e);
  f = fopen(argv[2], "wb");
  fwrite(x.data(), 4, x.size(), f);
  fclose(f);
  return 0;
}
"""


def heads(n, hws, k, a=9, seed=0, mean=-3.0, std=1.5, dtype=torch.float32, quantize=False):
    g = torch.Generator().manual_seed(seed)
    cls, box, anc = [], [], []
    for lvl, (h, w) in enumerate(hws):
        c = torch.randn(n, a * k, h, w, generator=g) * std + mean
        if quantize:
            c = c.round()  # many exactly tied scores
        cls.append(c.to(dtype))
        box.append((torch.randn(n, a * 4, h, w, generator=g) * 2).to(dtype))  # large deltas hit the clamp
        xy = torch.rand(h * w * a, 2, generator=g) * 8 * 2 ** lvl * max(h, w)
        wh = torch.rand(h * w * a, 2, generator=g) * 64 * 2 ** lvl
        anc.append(torch.cat([xy - wh / 2, xy + wh / 2], 1))
    return cls, box, anc


def assert_decode_equal(got, ref, atol=1e-3):
    """Counts, classes and scores bit for bit (one float32 exp on both sides); boxes close."""
    (b, s, c, n), (rb, rs, rc, rn) = got, ref
    assert b.shape == rb.shape and b.dtype == torch.float32 and c.dtype == torch.int64
    assert torch.equal(n, rn)
    assert torch.equal(c, rc)
    assert torch.equal(s, rs)
    torch.testing.assert_close(b, rb, rtol=1e-5, atol=atol, equal_nan=True)


CASES = [
    # n, level sizes, classes, topk, thresh
    (1, [(1, 1)], 1, 1000, 0.05),
    (2, [(8, 10), (4, 5), (2, 3)], 80, 50, 0.05),
    (2, [(8, 10), (4, 5)], 80, 1000, 0.05),
    (3, [(5, 7), (3, 4)], 1, 7, 0.3),
    (1, [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)], 80, 1000, 0.05),
    (1, [(6, 6)], 3, 0, 0.05),
    (2, [(6, 6), (0, 0)], 3, 10, 0.05),
    (1, [(6, 6)], 3, 10, 0.999),
]


@pytest.mark.parametrize("n,hws,k,topk,thr", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_decode_matches_reference(n, hws, k, topk, thr, dtype, channels_last):
    """Channels_last heads (what the predictors' models produce) are read in place by the kernel."""
    cls, box, anc = heads(n, hws, k, seed=len(hws) + k, dtype=dtype)
    sizes = torch.tensor([[200 + 10 * i, 300 - 7 * i] for i in range(n)])
    ref = ops.reference.decode_detections(cls, box, anc, sizes, thr, topk, (1.0, 1.0, 1.0, 1.0), CLAMP)
    if channels_last:
        cls = [c.contiguous(memory_format=torch.channels_last) for c in cls]
        box = [b.contiguous(memory_format=torch.channels_last) for b in box]
    assert_decode_equal(ops.decode_detections(cls, box, anc, sizes, thr, topk, (1.0, 1.0, 1.0, 1.0), CLAMP), ref)


def test_decode_channels_last_ties_across_work_items():
    """Exactly tied scores split over several location ranges keep the lower-index-first order."""
    cls, box, anc = heads(2, [(16, 20), (8, 10)], 80, seed=3, quantize=True)
    sizes = torch.tensor([[400, 500], [300, 350]])
    args = (anc, sizes, 0.05, 300, (1.0, 1.0, 1.0, 1.0), CLAMP)
    ref = ops.reference.decode_detections(cls, box, *args)
    cl = [c.contiguous(memory_format=torch.channels_last) for c in cls]
    assert not cl[0].is_contiguous()
    assert_decode_equal(ops.decode_detections(cl, box, *args), ref)


def test_decode_ties_weights_nan_and_outside():
    cls, box, anc = heads(2, [(10, 12), (5, 6)], 4, seed=3, quantize=True, mean=0.0)
    cls[0][0, 0, 0, :3] = float("nan")  # NaN logits never pass
    anc[1][:5] += 1e5  # anchors far outside the image: boxes clipped
    sizes = torch.tensor([[100, 120], [90, 80]])
    for w in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        args = (cls, box, anc, sizes, 0.05, 30, w, CLAMP)
        got = ops.decode_detections(*args)
        assert_decode_equal(got, ops.reference.decode_detections(*args))
        b = got[0]
        assert (b[..., 0::2] <= 120).all() and (b >= 0).all()


def test_decode_bad_inputs():
    cls, box, anc = heads(1, [(4, 4)], 2)
    with pytest.raises(RuntimeError, match="anchors"):
        ops.decode_detections(cls, box, [anc[0][:-1]], torch.tensor([[64, 64]]))
    with pytest.raises(RuntimeError, match="box_deltas"):
        ops.decode_detections(cls, [box[0][:, :7]], anc, torch.tensor([[64, 64]]))
    with pytest.raises(RuntimeError, match="image_sizes"):
        ops.decode_detections(cls, box, anc, torch.tensor([64, 64]))


def _candidates(n, m, k, seed, kind="normal"):
    bs, ss, cs = [], [], []
    for i in range(n):
        b, s, c = random_boxes(m, kind, seed=seed + i, num_classes=k)
        bs.append(b), ss.append(s), cs.append(c)
    valid = torch.tensor([m - 3 * i for i in range(n)]).clamp(min=0)
    return torch.stack(bs), torch.stack(ss), torch.stack(cs), valid


@pytest.mark.parametrize("nms_type", ["batched", "agnostic", "soft"])
@pytest.mark.parametrize("kind", ["normal", "ties", "inverted", "huge", "identical"])
@pytest.mark.parametrize("k", [1, 80])
def test_multiclass_nms_matches_reference(nms_type, kind, k):
    boxes, scores, classes, valid = _candidates(2, 300, k, seed=k, kind=kind)
    if kind == "normal":
        scores = with_nonfinite(scores)
    for max_det in (0, 5, 100) if kind == "normal" else (100,):
        args = (boxes, scores, classes, valid, nms_type, 0.5, max_det, "gaussian", 0.5, 0.01)
        got, ref = ops.multiclass_nms(*args), ops.reference.multiclass_nms(*args)
        assert got[0].shape == (2, max_det, 4)
        assert torch.equal(got[3], ref[3]) and torch.equal(got[2], ref[2])
        torch.testing.assert_close(got[1], ref[1], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got[0], ref[0])


def test_multiclass_nms_empty():
    z = ops.multiclass_nms(torch.zeros(2, 0, 4), torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    assert z[0].shape == (2, 100, 4) and z[3].tolist() == [0, 0] and (z[2] == -1).all()
    classes, num_valid = torch.zeros(1, 0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="nms_type"):
        ops.multiclass_nms(torch.zeros(1, 0, 4), torch.zeros(1, 0), classes, num_valid, "fast")


def _exp_inputs() -> np.ndarray:
    """Every 1009th float of [-104, 89] (2.2e6 values, all exponents), the floats around
    0, the overflow / underflow / subnormal boundaries, and special values."""
    def span(lo: float, hi: float, step: int) -> np.ndarray:  # floats of one sign between lo and hi
        a, b = int(np.float32(lo).view(np.int32)), int(np.float32(hi).view(np.int32))
        return np.arange(min(a, b), max(a, b) + 1, step, dtype=np.int64).astype(np.int32).view(np.float32)

    pos = span(0.0, 89.0, 1009)
    neg = -span(0.0, 104.0, 1009)
    tiny = span(0.0, 1e-6, 8191)
    dense = [span(x - 1e-4 * max(1.0, abs(x)), x + 1e-4 * max(1.0, abs(x)), 1) for x in (88.72283, -87.33654, -103.27893, -103.97208)]
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-30, 89.0, 89.00001, -104.0, -104.00001, 1e30, -1e30],
                       np.float32)
    return np.concatenate([pos, neg, tiny, -tiny, *dense, special])


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_rk_expf_within_one_ulp_and_equal_to_reference(tmp_path):
    """The kernels' exp: <= 1 ulp from float64 exp, inf / 0 / NaN like expf, the same bits with
    and without FMA contraction (-march=native -ffp-contract=fast) and as reference.exp_f32."""
    x = _exp_inputs()
    x.tofile(tmp_path / "x.bin")
    (tmp_path / "drv.cpp").write_text(EXP_DRIVER)
    outs = []
    for i, flags in enumerate((["-O3", "-ffp-contract=off"], ["-O2", "-march=native", "-ffp-contract=fast"])):
        exe = str(tmp_path / f"drv{i}")
        subprocess.run([CXX, "-std=c++17", *flags, "-I", SRC, str(tmp_path / "drv.cpp"), "-o", exe], check=True, timeout=300)
        subprocess.run([exe, str(tmp_path / "x.bin"), str(tmp_path / f"y{i}.bin")], check=True, timeout=300)
        outs.append(np.fromfile(tmp_path / f"y{i}.bin", np.float32))
    y = outs[0]
    assert np.array_equal(y.view(np.int32), outs[1].view(np.int32))
    assert np.array_equal(y.view(np.int32), ops.reference.exp_f32(torch.from_numpy(x)).numpy().view(np.int32))
    with np.errstate(over="ignore"):
        true = np.exp(x.astype(np.float64)).astype(np.float32)  # exp correctly rounded to float32 (up to 1e-16)
    nan = np.isnan(x)
    assert np.isnan(y[nan]).all() and not np.isnan(y[~nan]).any()
    # both non-negative: the distance of the bit patterns counts ulps (subnormals included)
    ulps = np.abs(y[~nan].view(np.int32).astype(np.int64) - true[~nan].view(np.int32).astype(np.int64))
    assert ulps.max() <= 1, x[~nan][ulps.argmax()]
    assert (ulps == 0).mean() > 0.99


def test_sigmoid_is_shared_exp():
    """Decode scores are 1 / (1 + exp_f32(-x)) bit for bit, and within 2 ulp of the true sigmoid."""
    g = torch.Generator().manual_seed(1)
    cls = [torch.randn(1, 9, 40, 40, generator=g) * 4]
    box, anc = [torch.zeros(1, 36, 40, 40)], [torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(14400, 1)]
    _, s, _, n = ops.decode_detections(cls, box, anc, torch.tensor([[64, 64]]), 0.0, 20000, (1.0,) * 4, CLAMP)
    x = cls[0][0].permute(1, 2, 0).reshape(-1)
    ref = ops.reference.sigmoid_f32(x)
    assert int(n) == x.numel()  # threshold 0: every score (all > 0)
    assert torch.equal(torch.sort(s[0, : int(n)]).values, torch.sort(ref).values)
    true = torch.sigmoid(x.double()).float()
    ulp = (ref.view(torch.int32).long() - true.view(torch.int32).long()).abs()
    assert int(ulp.max()) <= 2
