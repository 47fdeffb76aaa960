// CUDA kernels and launchers of the fused RetinaNet decode (no torch dependency).
//
// Per segment (image n, level l) the top-k scores sigmoid(logit) > thresh are found by a
// radix select on the float bits of the score (4 passes of 8 bits; each pass histograms
// the whole level in parallel, a tiny kernel picks the digit). Ties at the k-th score are
// resolved deterministically (lower flattened index first) by a second radix select on the
// index. A collect pass then writes the <= k selected (score, index) pairs per segment, and
// after a per-segment sort (done by the caller) a decode pass writes the boxes.
// Everything stays on the device: no host synchronisation.
//
// Every kernel is a template (those without a type parameter take an unused int), so that
// two translation units including this header link together (no duplicate definitions).
// Images run on gridDim.y: at most kCudaMaxGridYZ images per launch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "box_iou.h"
#include "cuda/launch_limits.h"

namespace retinakit {
namespace cuda {

struct SegSelect {
  unsigned int prefix;       // bits of the k-th key fixed so far
  unsigned int prefix_mask;  // which bits are fixed
  int k_rem;                 // keys still to select among those matching the prefix
  int take_all;              // <= topk elements pass the threshold: take them all
  unsigned int kth_score;    // float bits of the k-th score (after phase 0)
  int ties_all;              // every element with score == k-th score is taken
  unsigned int kth_idx;      // ~index of the last tie taken (after phase 1)
  int pad;
};

__device__ __forceinline__ float load_f(float x) { return x; }
__device__ __forceinline__ float load_f(double x) { return static_cast<float>(x); }
__device__ __forceinline__ float load_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float load_f(__nv_bfloat16 x) { return __bfloat162float(x); }

struct LevelArgs {
  int level, L;     // level index, number of levels
  int AK, K, A, HW;  // channels, classes, anchors per location, locations
  long long img_stride;  // elements per image in the logits (AK * HW)
};

// Score of element e (NCHW offset inside the image) if it passes, else -1.
template <typename T>
__device__ __forceinline__ float passing_score(const T* lg, long long e, float pre, float thresh) {
  const float x = load_f(lg[e]);
  if (!(x > pre)) return -1.f;
  const float s = sigmoidf_rk(x);
  return (s > thresh) ? s : -1.f;
}

// Flattened (h, w, a, k) index of NCHW element e = c * HW + hw.
__device__ __forceinline__ unsigned int flat_index(long long e, const LevelArgs& a) {
  const long long c = e / a.HW, hw = e % a.HW;
  return static_cast<unsigned int>(hw * a.AK + c);
}

// phase 0: histogram of score-key digits; phase 1: of ~index among k-th score ties.
template <typename T>
__global__ void topk_hist_kernel(const T* __restrict__ logits, LevelArgs a, float pre, float thresh,
                                 const SegSelect* __restrict__ st, int phase, int shift, unsigned int* __restrict__ hist) {
  const int n = blockIdx.y, seg = n * a.L + a.level;
  const SegSelect s = st[seg];
  if (s.take_all || (phase == 1 && s.ties_all)) return;
  __shared__ unsigned int h[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) h[i] = 0;
  __syncthreads();
  const T* lg = logits + n * a.img_stride;
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < a.img_stride; e += (long long)gridDim.x * blockDim.x) {
    const float sc = passing_score(lg, e, pre, thresh);
    if (sc < 0.f) continue;
    unsigned int key = __float_as_uint(sc);
    if (phase == 1) {
      if (key != s.kth_score) continue;
      key = ~flat_index(e, a);
    }
    if ((key & s.prefix_mask) != s.prefix) continue;
    atomicAdd(&h[(key >> shift) & 255u], 1u);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 256; i += blockDim.x)
    if (h[i]) atomicAdd(&hist[seg * 256 + i], h[i]);
}

// One thread per segment: fix the digit at `shift` of the k-th largest key.
template <int kUnused = 0>
__global__ void topk_find_kernel(SegSelect* __restrict__ st, const unsigned int* __restrict__ hist, int S, int topk,
                                 int phase, int shift) {
  const int seg = blockIdx.x * blockDim.x + threadIdx.x;
  if (seg >= S) return;
  SegSelect s = st[seg];
  const unsigned int* h = hist + seg * 256;
  if (s.take_all || (phase == 1 && s.ties_all)) return;
  if (phase == 0 && shift == 24) {
    unsigned long long total = 0;
    for (int d = 0; d < 256; ++d) total += h[d];
    if (total <= static_cast<unsigned long long>(topk)) {
      s.take_all = 1;
      st[seg] = s;
      return;
    }
    s.k_rem = topk;
  }
  unsigned int cum = 0;
  for (int d = 255; d >= 0; --d) {
    if (cum + h[d] >= static_cast<unsigned int>(s.k_rem)) {
      s.prefix |= static_cast<unsigned int>(d) << shift;
      s.prefix_mask |= 255u << shift;
      s.k_rem -= static_cast<int>(cum);
      if (shift == 0) {
        if (phase == 0) {
          s.kth_score = s.prefix;
          s.ties_all = (h[d] == static_cast<unsigned int>(s.k_rem));
          s.prefix = 0;
          s.prefix_mask = 0;
        } else {
          s.kth_idx = s.prefix;
        }
      }
      break;
    }
    cum += h[d];
  }
  st[seg] = s;
}

// Write the selected (score, flat index) pairs of each segment (any order, <= topk).
template <typename T>
__global__ void topk_collect_kernel(const T* __restrict__ logits, LevelArgs a, float pre, float thresh,
                                    const SegSelect* __restrict__ st, int cap, int* __restrict__ seg_count,
                                    float* __restrict__ cand_score, int* __restrict__ cand_idx) {
  const int n = blockIdx.y, seg = n * a.L + a.level;
  const SegSelect s = st[seg];
  const T* lg = logits + n * a.img_stride;
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < a.img_stride; e += (long long)gridDim.x * blockDim.x) {
    const float sc = passing_score(lg, e, pre, thresh);
    if (sc < 0.f) continue;
    const unsigned int key = __float_as_uint(sc);
    const unsigned int idx = flat_index(e, a);
    bool take = s.take_all || key > s.kth_score;
    if (!take && key == s.kth_score) take = s.ties_all || (~idx >= s.kth_idx);
    if (!take) continue;
    const int pos = atomicAdd(&seg_count[seg], 1);
    if (pos < cap) {
      cand_score[static_cast<long long>(seg) * cap + pos] = sc;
      cand_idx[static_cast<long long>(seg) * cap + pos] = static_cast<int>(idx);
    }
  }
}

// Decode the (sorted) candidates of one level into the packed outputs.
// deltas: [N, 4A, HW] float; anchors [HW*A, 4] float; sizes [N, 2] int64 (h, w);
// seg_offset [S] first output row of the segment inside its image.
template <int kUnused = 0>
__global__ void decode_write_kernel(const float* __restrict__ cand_score, const int* __restrict__ cand_idx,
                                    const int* __restrict__ seg_count, const long long* __restrict__ seg_offset, LevelArgs a,
                                    int cap, const float* __restrict__ deltas, const float* __restrict__ anchors,
                                    const long long* __restrict__ sizes, float w0, float w1, float w2, float w3,
                                    float scale_clamp, int M, float* __restrict__ out_boxes, float* __restrict__ out_scores,
                                    long long* __restrict__ out_classes) {
  const int n = blockIdx.y, seg = n * a.L + a.level;
  const int cnt = min(seg_count[seg], cap);
  const float w4[4] = {w0, w1, w2, w3};
  const float img_h = static_cast<float>(sizes[2 * n]), img_w = static_cast<float>(sizes[2 * n + 1]);
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < cnt; r += gridDim.x * blockDim.x) {
    const long long c = static_cast<long long>(seg) * cap + r;
    const long long flat = cand_idx[c];
    const long long anchor = flat / a.K, hw = anchor / a.A, ai = anchor % a.A;
    const float* d = deltas + (static_cast<long long>(n) * 4 * a.A + 4 * ai) * a.HW + hw;
    const long long row = static_cast<long long>(n) * M + seg_offset[seg] + r;
    decode_clip_box(anchors + 4 * anchor, d[0], d[a.HW], d[2 * a.HW], d[3 * a.HW], w4, scale_clamp, img_h, img_w,
                    out_boxes + 4 * row);
    out_scores[row] = cand_score[c];
    out_classes[row] = flat % a.K;
  }
}

inline int grid_for(long long count, int threads, int per_thread, int max_blocks) {
  long long b = (count + static_cast<long long>(threads) * per_thread - 1) / (static_cast<long long>(threads) * per_thread);
  return static_cast<int>(b < 1 ? 1 : (b > max_blocks ? max_blocks : b));
}

// Radix-select + collect for one level (call for every level, in order, for each pass).
// hist [S, 256] must be zeroed by the caller before each pass.
template <typename T>
void launch_topk_hist(const T* logits, const LevelArgs& a, int N, float pre, float thresh, const SegSelect* st, int phase,
                      int shift, unsigned int* hist, cudaStream_t stream) {
  const dim3 grid(grid_for(a.img_stride, 256, 8, 4096), N);
  topk_hist_kernel<T><<<grid, 256, 0, stream>>>(logits, a, pre, thresh, st, phase, shift, hist);
}

inline void launch_topk_find(SegSelect* st, const unsigned int* hist, int S, int topk, int phase, int shift,
                             cudaStream_t stream) {
  topk_find_kernel<><<<(S + 127) / 128, 128, 0, stream>>>(st, hist, S, topk, phase, shift);
}

template <typename T>
void launch_topk_collect(const T* logits, const LevelArgs& a, int N, float pre, float thresh, const SegSelect* st, int cap,
                         int* seg_count, float* cand_score, int* cand_idx, cudaStream_t stream) {
  const dim3 grid(grid_for(a.img_stride, 256, 8, 4096), N);
  topk_collect_kernel<T><<<grid, 256, 0, stream>>>(logits, a, pre, thresh, st, cap, seg_count, cand_score, cand_idx);
}

inline void launch_decode_write(const float* cand_score, const int* cand_idx, const int* seg_count,
                                const long long* seg_offset, const LevelArgs& a, int N, int cap, const float* deltas,
                                const float* anchors, const long long* sizes, const float* w4, float scale_clamp, int M,
                                float* out_boxes, float* out_scores, long long* out_classes, cudaStream_t stream) {
  const dim3 grid(grid_for(cap, 128, 1, 64), N);
  decode_write_kernel<><<<grid, 128, 0, stream>>>(cand_score, cand_idx, seg_count, seg_offset, a, cap, deltas, anchors, sizes,
                                                w4[0], w4[1], w4[2], w4[3], scale_clamp, M, out_boxes, out_scores,
                                                out_classes);
}

}  // namespace cuda
}  // namespace retinakit
