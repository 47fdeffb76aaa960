"""The CUDA launcher headers compile without torch (so a TensorRT plugin can reuse them)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = os.path.join(ROOT, "retinakit", "_C")

PLUGIN = r"""
#include "cuda/nms_kernels.cuh"
#include "cuda/soft_nms_kernels.cuh"
#include "cuda/decode_kernels.cuh"
#ifdef AT_ASSERT
#error "torch headers leaked into the torch-free CUDA headers"
#endif
using namespace retinakit::cuda;
void plugin_enqueue(const float* boxes, const int64_t* counts, unsigned long long* mask, unsigned long long* removed,
                    uint8_t* kept, const __half* logits, const SegSelect* st, unsigned int* hist, float* cur,
                    int64_t* idx, float* score, int64_t* cnt, cudaStream_t stream) {
  launch_bitmask_nms<float>(boxes, nullptr, counts, 1, 128, 0.5, 100, mask, removed, kept, stream);
  launch_soft_nms<float>(boxes, cur, nullptr, counts, 1, 128, 1, 0.5, 0.3, 0.001, 100, cur, idx, score, cnt, stream);
  LevelArgs a{0, 1, 720, 80, 9, 100, 72000};
  launch_topk_hist<__half>(logits, a, 1, -3.f, 0.05f, st, 0, 24, hist, stream);
  launch_topk_find(const_cast<SegSelect*>(st), hist, 1, 1000, 0, 24, stream);
}
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_launchers_compile_without_torch(tmp_path):
    src = tmp_path / "plugin.cu"
    src.write_text(PLUGIN)
    env = dict(os.environ)
    cu13 = os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cu13", "include")
    if os.path.isdir(cu13):
        env["CPATH"] = cu13 + os.pathsep + env.get("CPATH", "")
    if os.path.isdir("/usr/local/cuda"):
        env.setdefault("CUDA_HOME", "/usr/local/cuda")
    cmd = ["nvcc", "-std=c++17", "-arch=sm_90", "--fmad=false", "-I", SRC, "-c", str(src), "-o", str(tmp_path / "plugin.o")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
