// CUDA NMS kernels and launchers. No torch dependency (raw pointers + cudaStream_t), so a
// TensorRT plugin can reuse them.
//
// Bitmask NMS for a batch of images: image n has counts[n] boxes sorted by decreasing score
// in boxes[n, 0:counts[n]] (capacity M per image). nms_mask_kernel sets bit j of
// mask[n, i, j / 64] when box j (j > i) overlaps box i with IoU > thr (and, when cats is
// given, has the same category). nms_reduce_kernel walks the boxes in order, one 64-box
// word at a time (one block per image, no single-block limit on M), and marks kept boxes.
// Kernels are templates (nms_reduce_kernel takes an unused int) so that two translation
// units including this header link together. Grid limits: N <= kCudaMaxGridYZ images (z)
// and ceil(M / 64) <= kCudaMaxGridYZ column blocks (y); launch_bitmask_nms returns
// cudaErrorInvalidConfiguration beyond them.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "box_iou.h"
#include "cuda/launch_limits.h"

namespace retinakit {
namespace cuda {

constexpr int kNmsBlock = 64;

__host__ __device__ inline int nms_col_blocks(int m) { return (m + kNmsBlock - 1) / kNmsBlock; }

template <typename T>
__global__ void nms_mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ cats,
                                const int64_t* __restrict__ counts, int M, double thr,
                                unsigned long long* __restrict__ mask) {
  const int n = blockIdx.z, row_block = blockIdx.y, col_block = blockIdx.x;
  if (row_block > col_block) return;
  const int cnt = static_cast<int>(counts[n] < M ? counts[n] : M);
  const int row_size = min(cnt - row_block * kNmsBlock, kNmsBlock);
  const int col_size = min(cnt - col_block * kNmsBlock, kNmsBlock);
  if (row_size <= 0 || col_size <= 0) return;
  const int cb = nms_col_blocks(M);
  const T* b = boxes + static_cast<int64_t>(n) * M * 4;
  const int64_t* c = cats ? cats + static_cast<int64_t>(n) * M : nullptr;

  __shared__ T sb[kNmsBlock * 5];
  __shared__ int64_t sc[kNmsBlock];
  const int t = threadIdx.x;
  if (t < col_size) {
    const int j = col_block * kNmsBlock + t;
    for (int k = 0; k < 4; ++k) sb[t * 5 + k] = b[j * 4 + k];
    sb[t * 5 + 4] = box_area(sb[t * 5 + 0], sb[t * 5 + 1], sb[t * 5 + 2], sb[t * 5 + 3]);
    sc[t] = c ? c[j] : 0;
  }
  __syncthreads();
  if (t >= row_size) return;
  const int i = row_block * kNmsBlock + t;
  const T x0 = b[i * 4 + 0], y0 = b[i * 4 + 1], x1 = b[i * 4 + 2], y1 = b[i * 4 + 3];
  const T area = box_area(x0, y0, x1, y1);
  const int64_t ci = c ? c[i] : 0;
  unsigned long long bits = 0;
  const int start = (row_block == col_block) ? t + 1 : 0;
  for (int j = start; j < col_size; ++j) {
    if (sc[j] != ci) continue;
    const T o = box_iou(x0, y0, x1, y1, area, sb[j * 5 + 0], sb[j * 5 + 1], sb[j * 5 + 2], sb[j * 5 + 3], sb[j * 5 + 4]);
    if (static_cast<double>(o) > thr) bits |= 1ULL << j;
  }
  mask[(static_cast<int64_t>(n) * M + i) * cb + col_block] = bits;
}

// removed: [N, col_blocks] zero-initialised scratch. kept: [N, M] uint8 (zero-initialised).
// Stops once max_keep boxes are kept in an image.
template <int kUnused = 0>
__global__ void nms_reduce_kernel(const unsigned long long* __restrict__ mask, const int64_t* __restrict__ counts, int M,
                                  int max_keep, unsigned long long* __restrict__ removed, uint8_t* __restrict__ kept) {
  const int n = blockIdx.x;
  const int cnt = static_cast<int>(counts[n] < M ? counts[n] : M);
  const int cb = nms_col_blocks(M);
  const int nb = (cnt + kNmsBlock - 1) / kNmsBlock;
  const unsigned long long* mk = mask + static_cast<int64_t>(n) * M * cb;
  unsigned long long* rm = removed + static_cast<int64_t>(n) * cb;
  uint8_t* kp = kept + static_cast<int64_t>(n) * M;
  __shared__ unsigned long long s_kept;
  __shared__ int s_total;
  int total = 0;
  for (int blk = 0; blk < nb && total < max_keep; ++blk) {
    if (threadIdx.x == 0) {
      unsigned long long rem = rm[blk], kb = 0;
      const int size = min(cnt - blk * kNmsBlock, kNmsBlock);
      for (int i = 0; i < size && total < max_keep; ++i) {
        if ((rem >> i) & 1ULL) continue;
        kb |= 1ULL << i;
        ++total;
        rem |= mk[static_cast<int64_t>(blk * kNmsBlock + i) * cb + blk];
      }
      s_kept = kb;
      s_total = total;
    }
    __syncthreads();
    const unsigned long long kb = s_kept;
    total = s_total;
    if (threadIdx.x < kNmsBlock && ((kb >> threadIdx.x) & 1ULL)) kp[blk * kNmsBlock + threadIdx.x] = 1;
    for (int w = blk + 1 + threadIdx.x; w < nb; w += blockDim.x) {
      unsigned long long acc = rm[w];
      for (unsigned long long bits = kb; bits; bits &= bits - 1) {
        const int i = __ffsll(static_cast<long long>(bits)) - 1;
        acc |= mk[static_cast<int64_t>(blk * kNmsBlock + i) * cb + w];
      }
      rm[w] = acc;
    }
    __syncthreads();  // rm and s_kept / s_total are rewritten by the next word
  }
}

// Launch both kernels. boxes [N, M, 4] sorted per image, cats [N, M] or nullptr,
// counts [N] (device), mask [N, M, col_blocks] scratch, removed [N, col_blocks] zeroed,
// kept [N, M] zeroed.
template <typename T>
cudaError_t launch_bitmask_nms(const T* boxes, const int64_t* cats, const int64_t* counts, int N, int M, double thr,
                               int max_keep, unsigned long long* mask, unsigned long long* removed, uint8_t* kept,
                               cudaStream_t stream) {
  if (N == 0 || M == 0) return cudaSuccess;
  const int cb = nms_col_blocks(M);
  if (N > kCudaMaxGridYZ || cb > kCudaMaxGridYZ) return cudaErrorInvalidConfiguration;
  const dim3 grid(cb, cb, N);
  nms_mask_kernel<T><<<grid, kNmsBlock, 0, stream>>>(boxes, cats, counts, M, thr, mask);
  nms_reduce_kernel<><<<N, 256, 0, stream>>>(mask, counts, M, max_keep, removed, kept);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace retinakit
