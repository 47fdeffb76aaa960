// CPU kernels of retinakit::nms, batched_nms and soft_nms.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cpu/nms_core.h"
#include "op_checks.h"

namespace retinakit {
namespace cpu {
namespace {

at::Tensor to_index_tensor(const std::vector<int64_t>& v) {
  at::Tensor out = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kLong));
  std::copy(v.begin(), v.end(), out.data_ptr<int64_t>());
  return out;
}

at::Tensor nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in, double iou_threshold) {
  check_boxes_scores("nms", boxes_in, scores_in);
  const at::Tensor boxes = compute_dtype(boxes_in).contiguous();
  const at::Tensor scores = scores_in.to(boxes.scalar_type()).contiguous();
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "retinakit_nms_cpu", [&] {
    keep = nms_indices(boxes.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(), boxes.size(0), iou_threshold);
  });
  return to_index_tensor(keep);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in, const at::Tensor& idxs_in,
                           double iou_threshold) {
  check_boxes_scores("batched_nms", boxes_in, scores_in);
  check_idxs("batched_nms", idxs_in, boxes_in.size(0));
  const at::Tensor boxes = compute_dtype(boxes_in).contiguous();
  const at::Tensor scores = scores_in.to(boxes.scalar_type()).contiguous();
  const at::Tensor idxs = idxs_in.to(at::kLong).contiguous();
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "retinakit_batched_nms_cpu", [&] {
    keep = batched_nms_indices(boxes.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(), idxs.data_ptr<int64_t>(),
                               boxes.size(0), iou_threshold);
  });
  return to_index_tensor(keep);
}

std::tuple<at::Tensor, at::Tensor> soft_nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in,
                                                const at::Tensor& idxs_in, c10::string_view method, double sigma,
                                                double iou_threshold, double score_threshold) {
  check_boxes_scores("soft_nms", boxes_in, scores_in);
  check_idxs("soft_nms", idxs_in, boxes_in.size(0));
  const SoftMethod m = parse_soft_method(method);
  const at::Tensor boxes = compute_dtype(boxes_in).contiguous();
  const at::Tensor scores = scores_in.to(boxes.scalar_type()).contiguous();
  const at::Tensor idxs = idxs_in.to(at::kLong).contiguous();
  at::Tensor keep, new_scores;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "retinakit_soft_nms_cpu", [&] {
    auto pairs = soft_nms_pairs(boxes.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(), idxs.data_ptr<int64_t>(),
                                boxes.size(0), m, sigma, iou_threshold, score_threshold);
    const int64_t k = static_cast<int64_t>(pairs.size());
    keep = at::empty({k}, boxes.options().dtype(at::kLong));
    new_scores = at::empty({k}, boxes.options());
    for (int64_t i = 0; i < k; ++i) {
      keep.data_ptr<int64_t>()[i] = pairs[i].first;
      new_scores.data_ptr<scalar_t>()[i] = pairs[i].second;
    }
  });
  return {keep, new_scores};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinakit, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
  m.impl("soft_nms", &soft_nms_cpu);
}

}  // namespace cpu
}  // namespace retinakit
