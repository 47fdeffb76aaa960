"""The torch-free CUDA launcher headers (what a TensorRT plugin reuses) with nvcc alone.

They compile without torch; two translation units that include them link into one shared
object (every ``__global__`` defined in a header is a template); an executable built from
them runs class-agnostic soft-NMS (``cats == nullptr``) on a GPU, equal to the reference.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig

import numpy as np
import pytest
import torch

from retinakit.ops import reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = os.path.join(ROOT, "retinakit", "_C")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")

HEADERS = r"""
#include "cuda/nms_kernels.cuh"
#include "cuda/soft_nms_kernels.cuh"
#include "cuda/decode_kernels.cuh"
#ifdef AT_ASSERT
#error "torch headers leaked into the torch-free CUDA headers"
#endif
using namespace retinakit::cuda;
"""

# Launches every kernel of the headers (so each translation unit instantiates all of them).
PLUGIN = HEADERS + r"""
void FN(const float* boxes, const int64_t* counts, unsigned long long* mask, unsigned long long* removed,
        uint8_t* kept, const __half* logits, SegSelect* st, unsigned int* hist, float* cur, int64_t* idx, float* score,
        int64_t* cnt, int* seg_count, float* cand_score, int* cand_idx, const long long* seg_offset,
        const long long* sizes, long long* out_classes, cudaStream_t stream) {
  launch_bitmask_nms<float>(boxes, nullptr, counts, 1, 128, 0.5, 100, mask, removed, kept, stream);
  launch_soft_nms<float>(boxes, cur, nullptr, counts, 1, 128, 1, 0.5, 0.3, 0.001, 100, cur, idx, score, cnt, stream);
  LevelArgs a{0, 1, 720, 80, 9, 100, 72000};
  launch_topk_hist<__half>(logits, a, 1, -3.f, 0.05f, st, 0, 24, hist, stream);
  launch_topk_find(st, hist, 1, 1000, 0, 24, stream);
  launch_topk_collect<__half>(logits, a, 1, -3.f, 0.05f, st, 1000, seg_count, cand_score, cand_idx, stream);
  const float w4[4] = {1.f, 1.f, 1.f, 1.f};
  launch_decode_write(cand_score, cand_idx, seg_count, seg_offset, a, 1, 1000, cur, cur, sizes, w4, 4.f, 1000, cur, score,
                      out_classes, stream);
}
"""

# A header with a plain (non-template, non-inline) kernel: the defect the link test detects.
BAD_HEADER = r"""
#pragma once
__global__ void plain_kernel(float* x) { x[threadIdx.x] = 0.f; }
"""

# Reads boxes [M, 4] and scores [M] (float32), runs gaussian soft-NMS with cats == nullptr,
# writes count (int64), indices [count] (int64) and scores [count] (float32).
SOFT_MAIN = HEADERS + r"""
#include <cstdio>
#include <vector>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { fprintf(stderr, "%s\n", cudaGetErrorString(e)); return 1; } } while (0)
int main(int argc, char** argv) {
  FILE* f = fopen(argv[1], "rb");
  int64_t m = 0;
  if (!f || fread(&m, 8, 1, f) != 1) return 2;
  std::vector<float> boxes(4 * m), scores(m);
  if (fread(boxes.data(), 4, 4 * m, f) != size_t(4 * m) || fread(scores.data(), 4, m, f) != size_t(m)) return 2;
  fclose(f);
  float *db, *ds, *dcur, *dsc;
  int64_t *dcounts, *didx, *dcnt;
  CK(cudaMalloc(&db, 16 * m)); CK(cudaMalloc(&ds, 4 * m)); CK(cudaMalloc(&dcur, 4 * m)); CK(cudaMalloc(&dsc, 4 * m));
  CK(cudaMalloc(&dcounts, 8)); CK(cudaMalloc(&didx, 8 * m)); CK(cudaMalloc(&dcnt, 8));
  CK(cudaMemcpy(db, boxes.data(), 16 * m, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(ds, scores.data(), 4 * m, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dcounts, &m, 8, cudaMemcpyHostToDevice));
  CK(launch_soft_nms<float>(db, ds, nullptr, dcounts, 1, int(m), 1, 0.5, 0.3, 0.01, int(m), dcur, didx, dsc, dcnt, 0));
  CK(cudaDeviceSynchronize());
  int64_t k = 0;
  CK(cudaMemcpy(&k, dcnt, 8, cudaMemcpyDeviceToHost));
  std::vector<int64_t> idx(m);
  std::vector<float> sc(m);
  CK(cudaMemcpy(idx.data(), didx, 8 * m, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(sc.data(), dsc, 4 * m, cudaMemcpyDeviceToHost));
  f = fopen(argv[2], "wb");
  fwrite(&k, 8, 1, f);
  fwrite(idx.data(), 8, k, f);
  fwrite(sc.data(), 4, k, f);
  fclose(f);
  return 0;
}
"""


def _nvcc(args: list[str], cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    cu13 = os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cu13", "include")
    if os.path.isdir(cu13):
        env["CPATH"] = cu13 + os.pathsep + env.get("CPATH", "")
    if os.path.isdir("/usr/local/cuda"):
        env.setdefault("CUDA_HOME", "/usr/local/cuda")
    cmd = ["nvcc", "-std=c++17", "-arch=sm_90", "--fmad=false", "-I", SRC, "-I", cwd, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=600, check=False)


def _compile(tmp_path, name: str, text: str, *defines: str) -> str:
    (tmp_path / name).write_text(text)
    obj = name.rsplit(".", 1)[0] + ".o"
    res = _nvcc(["-Xcompiler", "-fPIC", *defines, "-c", name, "-o", obj], str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    return obj


def _link_shared(tmp_path, objs: list[str]) -> subprocess.CompletedProcess:
    return _nvcc(["-shared", *objs, "-o", "libplugin.so"], str(tmp_path))


@needs_nvcc
def test_two_units_link_into_one_library(tmp_path):
    objs = [_compile(tmp_path, f"unit{i}.cu", PLUGIN, f"-DFN=plugin_enqueue_{i}") for i in (1, 2)]
    res = _link_shared(tmp_path, objs)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_nvcc
def test_link_check_detects_plain_kernels_in_headers(tmp_path):
    """Control: the same link fails for a header with a non-template kernel (the old defect)."""
    (tmp_path / "bad.cuh").write_text(BAD_HEADER)
    text = '#include "bad.cuh"\nvoid FN(float* x) { plain_kernel<<<1, 32>>>(x); }\n'
    objs = [_compile(tmp_path, f"bad{i}.cu", text, f"-DFN=use_{i}") for i in (1, 2)]
    res = _link_shared(tmp_path, objs)
    assert res.returncode != 0 and "plain_kernel" in res.stdout + res.stderr


@needs_nvcc
def test_class_agnostic_soft_nms_reads_no_categories(tmp_path):
    """Built here wherever nvcc is; run (cats == nullptr, a null read would fault) where a GPU is."""
    (tmp_path / "soft_main.cu").write_text(SOFT_MAIN)
    res = _nvcc(["soft_main.cu", "-o", "soft_main"], str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    if not torch.cuda.is_available():
        pytest.skip("built; running it needs a CUDA GPU")
    g = torch.Generator().manual_seed(0)
    ctr = torch.rand(300, 2, generator=g) * 200
    boxes = torch.cat([ctr, ctr + 20 + torch.rand(300, 2, generator=g) * 40], 1)
    scores = torch.rand(300, generator=g)
    with open(tmp_path / "in.bin", "wb") as f:
        f.write(np.int64(300).tobytes() + boxes.numpy().tobytes() + scores.numpy().tobytes())
    run = subprocess.run([str(tmp_path / "soft_main"), "in.bin", "out.bin"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    raw = (tmp_path / "out.bin").read_bytes()
    k = int(np.frombuffer(raw[:8], np.int64)[0])
    idx = torch.from_numpy(np.frombuffer(raw[8 : 8 + 8 * k], np.int64).copy())
    sc = torch.from_numpy(np.frombuffer(raw[8 + 8 * k :], np.float32).copy())
    rk, rs = reference.soft_nms(boxes, scores, torch.zeros(300, dtype=torch.int64), "gaussian", 0.5, 0.3, 0.01)
    assert torch.equal(idx, rk) and torch.equal(sc, rs)  # one exp (rk_expf) on both sides: same bits
