// Argument checks and dtype rules shared by the CPU and CUDA kernels (torch-dependent glue).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <string>

#include "cpu/nms_core.h"
#include "cuda/launch_limits.h"

namespace retinakit {

// float16 / bfloat16 (and any non-float64) boxes are computed in float32.
inline at::Tensor compute_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? t : t.to(at::kFloat);
}

inline void check_boxes_scores(const char* op, const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "retinakit.ops.", op, ": boxes must be [N, 4], got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), "retinakit.ops.", op,
              ": scores must be [N] with N = boxes.size(0) = ", boxes.size(0), ", got ", scores.sizes());
  TORCH_CHECK(boxes.is_floating_point() && scores.is_floating_point(), "retinakit.ops.", op,
              ": boxes and scores must be floating point");
  TORCH_CHECK(boxes.device() == scores.device(), "retinakit.ops.", op, ": boxes and scores must be on the same device");
}

inline void check_idxs(const char* op, const at::Tensor& idxs, int64_t n) {
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == n, "retinakit.ops.", op, ": idxs must be [N] with N = ", n, ", got ",
              idxs.sizes());
  TORCH_CHECK(!idxs.is_floating_point() && !idxs.is_complex(), "retinakit.ops.", op, ": idxs must be integer");
}

// Called by the CUDA glue before launching: `count` (images, boxes) must fit the grid
// dimension that holds it (`limit` is derived from kCudaMaxGridYZ).
inline void check_cuda_grid(const char* op, int64_t count, int64_t limit, const char* what, const char* advice) {
  TORCH_CHECK(count <= limit, "retinakit.ops.", op, ": the CUDA kernel takes at most ", limit, " ", what,
              " (CUDA grid limit: ", kCudaMaxGridYZ, " blocks in y and z), got ", count, "; ", advice);
}

inline cpu::SoftMethod parse_soft_method(c10::string_view method) {
  const std::string s(method.data(), method.size());
  if (s == "linear") return cpu::SoftMethod::kLinear;
  TORCH_CHECK(s == "gaussian", "retinakit.ops.soft_nms: method must be 'linear' or 'gaussian', got '", s, "'");
  return cpu::SoftMethod::kGaussian;
}

}  // namespace retinakit
