// Argument checks of retinakit::multiclass_nms (CPU and CUDA glue).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <string>

namespace retinakit {

enum class NmsType { kBatched = 0, kAgnostic = 1, kSoft = 2 };

inline NmsType check_multiclass_inputs(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& classes,
                                       const at::Tensor& num_valid, c10::string_view nms_type, int64_t max_det) {
  TORCH_CHECK(boxes.dim() == 3 && boxes.size(2) == 4, "retinakit.ops.multiclass_nms: boxes must be [N, M, 4], got ",
              boxes.sizes());
  const int64_t n = boxes.size(0), m = boxes.size(1);
  TORCH_CHECK(scores.dim() == 2 && scores.size(0) == n && scores.size(1) == m,
              "retinakit.ops.multiclass_nms: scores must be [N, M] = [", n, ", ", m, "], got ", scores.sizes());
  TORCH_CHECK(classes.dim() == 2 && classes.size(0) == n && classes.size(1) == m && !classes.is_floating_point(),
              "retinakit.ops.multiclass_nms: classes must be integer [N, M] = [", n, ", ", m, "], got ", classes.sizes());
  TORCH_CHECK(num_valid.dim() == 1 && num_valid.size(0) == n && !num_valid.is_floating_point(),
              "retinakit.ops.multiclass_nms: num_valid must be integer [N] with N = ", n, ", got ", num_valid.sizes());
  TORCH_CHECK(max_det >= 0, "retinakit.ops.multiclass_nms: max_detections must be >= 0, got ", max_det);
  TORCH_CHECK(boxes.device() == scores.device() && boxes.device() == classes.device() && boxes.device() == num_valid.device(),
              "retinakit.ops.multiclass_nms: all inputs must be on the same device");
  const std::string t(nms_type.data(), nms_type.size());
  if (t == "batched") return NmsType::kBatched;
  if (t == "agnostic") return NmsType::kAgnostic;
  TORCH_CHECK(t == "soft", "retinakit.ops.multiclass_nms: nms_type must be 'batched', 'agnostic' or 'soft', got '", t, "'");
  return NmsType::kSoft;
}

}  // namespace retinakit
