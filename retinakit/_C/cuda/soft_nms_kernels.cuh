// CUDA soft-NMS kernel and launcher (no torch dependency). One block per image: each step
// selects the alive box with the highest current score (ties: lower index) by a block
// reduction, then decays the same-category alive boxes in parallel. Same results as the
// CPU kernel (per-category runs merged by score).
#pragma once

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "box_iou.h"

namespace retinakit {
namespace cuda {

constexpr int kSoftThreads = 256;

// boxes [N, M, 4], scores [N, M], cats [N, M] (nullptr: one category, never read), counts [N];
// cur [N, M] scratch.
// Outputs: out_idx [N, max_keep] (-1 padding), out_score [N, max_keep], out_count [N].
// method: 0 linear, 1 gaussian.
template <typename T>
__global__ void soft_nms_kernel(const T* __restrict__ boxes, const T* __restrict__ scores, const int64_t* __restrict__ cats,
                                const int64_t* __restrict__ counts, int M, int method, T sigma, double iou_thr,
                                double score_thr, int max_keep, T* __restrict__ cur, int64_t* __restrict__ out_idx,
                                T* __restrict__ out_score, int64_t* __restrict__ out_count) {
  const int n = blockIdx.x, t = threadIdx.x;
  const int cnt = static_cast<int>(counts[n] < M ? (counts[n] > 0 ? counts[n] : 0) : M);
  const T* b = boxes + static_cast<int64_t>(n) * M * 4;
  const int64_t* c = cats ? cats + static_cast<int64_t>(n) * M : nullptr;  // nullptr: class-agnostic
  T* s = cur + static_cast<int64_t>(n) * M;
  const T dead = -INFINITY;
  for (int i = t; i < cnt; i += blockDim.x) {
    const T v = scores[static_cast<int64_t>(n) * M + i];
    s[i] = (isfinite(static_cast<double>(v)) && static_cast<double>(v) >= score_thr) ? v : dead;
  }
  for (int i = t; i < max_keep; i += blockDim.x) out_idx[static_cast<int64_t>(n) * max_keep + i] = -1;
  __shared__ T rv[kSoftThreads];
  __shared__ int ri[kSoftThreads];
  __syncthreads();
  int kept = 0;
  while (kept < max_keep) {
    T bv = dead;
    int bi = -1;
    for (int i = t; i < cnt; i += blockDim.x)
      if (s[i] != dead && (bi < 0 || s[i] > bv)) bv = s[i], bi = i;  // i increases: ties keep the lower index
    rv[t] = bv, ri[t] = bi;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
      if (t < w) {
        const int oi = ri[t + w];
        const T ov = rv[t + w];
        if (oi >= 0 && (ri[t] < 0 || ov > rv[t] || (ov == rv[t] && oi < ri[t]))) rv[t] = ov, ri[t] = oi;
      }
      __syncthreads();
    }
    const int best = ri[0];
    const T best_v = rv[0];
    __syncthreads();
    if (best < 0) break;
    if (t == 0) {
      out_idx[static_cast<int64_t>(n) * max_keep + kept] = best;
      out_score[static_cast<int64_t>(n) * max_keep + kept] = best_v;
      s[best] = dead;
    }
    ++kept;
    const T ax0 = b[best * 4 + 0], ay0 = b[best * 4 + 1], ax1 = b[best * 4 + 2], ay1 = b[best * 4 + 3];
    const T aa = box_area(ax0, ay0, ax1, ay1);
    const int64_t ca = c ? c[best] : 0;
    for (int i = t; i < cnt; i += blockDim.x) {
      if (i == best || s[i] == dead || (c && c[i] != ca)) continue;
      const T bx0 = b[i * 4 + 0], by0 = b[i * 4 + 1], bx1 = b[i * 4 + 2], by1 = b[i * 4 + 3];
      const T o = box_iou(ax0, ay0, ax1, ay1, aa, bx0, by0, bx1, by1, box_area(bx0, by0, bx1, by1));
      if (!(o > T(0))) continue;
      T v = s[i];
      if (method == 0) {
        if (static_cast<double>(o) > iou_thr) v = v * (T(1) - o);
      } else {
        v = v * rk_exp(-(o * o) / sigma);  // same bits as the CPU kernel
      }
      s[i] = static_cast<double>(v) >= score_thr ? v : dead;
    }
    __syncthreads();
  }
  if (t == 0) out_count[n] = kept;
}

template <typename T>
cudaError_t launch_soft_nms(const T* boxes, const T* scores, const int64_t* cats, const int64_t* counts, int N, int M,
                            int method, double sigma, double iou_thr, double score_thr, int max_keep, T* cur,
                            int64_t* out_idx, T* out_score, int64_t* out_count, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  soft_nms_kernel<T><<<N, kSoftThreads, 0, stream>>>(boxes, scores, cats, counts, M, method, static_cast<T>(sigma), iou_thr,
                                                     score_thr, max_keep, cur, out_idx, out_score, out_count);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace retinakit
