// CPU kernel of retinakit::multiclass_nms: NMS of padded per-image candidate sets.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

#include "cpu/nms_core.h"
#include "multiclass_checks.h"
#include "op_checks.h"

namespace retinakit {
namespace cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_nms_cpu(
    const at::Tensor& boxes_in, const at::Tensor& scores_in, const at::Tensor& classes_in, const at::Tensor& num_valid_in,
    c10::string_view nms_type, double iou_threshold, int64_t max_det, c10::string_view soft_method, double soft_sigma,
    double soft_score_threshold) {
  const NmsType type = check_multiclass_inputs(boxes_in, scores_in, classes_in, num_valid_in, nms_type, max_det);
  const SoftMethod method = parse_soft_method(soft_method);
  const at::Tensor boxes = boxes_in.to(at::kFloat).contiguous();
  const at::Tensor scores = scores_in.to(at::kFloat).contiguous();
  const at::Tensor classes = classes_in.to(at::kLong).contiguous();
  const at::Tensor num_valid = num_valid_in.to(at::kLong).contiguous();
  const int64_t n_img = boxes.size(0), m = boxes.size(1);
  at::Tensor ob = at::zeros({n_img, max_det, 4}, boxes.options());
  at::Tensor os = at::zeros({n_img, max_det}, boxes.options());
  at::Tensor oc = at::full({n_img, max_det}, -1, classes.options());
  at::Tensor on = at::zeros({n_img}, classes.options());
  const float* b = boxes.data_ptr<float>();
  const float* s = scores.data_ptr<float>();
  const int64_t* c = classes.data_ptr<int64_t>();
  const int64_t* nv = num_valid.data_ptr<int64_t>();

  auto one_image = [&](int64_t n) {
    const int64_t v = std::max<int64_t>(0, std::min(nv[n], m));
    const float* bn = b + n * m * 4;
    const float* sn = s + n * m;
    const int64_t* cn = c + n * m;
    std::vector<std::pair<int64_t, float>> kept;
    if (type == NmsType::kSoft) {
      kept = soft_nms_pairs(bn, sn, cn, v, method, soft_sigma, iou_threshold, soft_score_threshold);
    } else {
      const std::vector<int64_t> keep =
          type == NmsType::kBatched ? batched_nms_indices(bn, sn, cn, v, iou_threshold) : nms_indices(bn, sn, v, iou_threshold);
      for (int64_t i : keep) kept.emplace_back(i, sn[i]);
    }
    const int64_t d = std::min<int64_t>(max_det, static_cast<int64_t>(kept.size()));
    float* obn = ob.data_ptr<float>() + n * max_det * 4;
    for (int64_t i = 0; i < d; ++i) {
      const int64_t j = kept[i].first;
      for (int k = 0; k < 4; ++k) obn[4 * i + k] = bn[4 * j + k];
      os.data_ptr<float>()[n * max_det + i] = kept[i].second;
      oc.data_ptr<int64_t>()[n * max_det + i] = cn[j];
    }
    on.data_ptr<int64_t>()[n] = d;
  };
  if (n_img == 1) {
    one_image(0);  // per-category parallelism inside
  } else {
    at::parallel_for(0, n_img, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) one_image(n);
    });
  }
  return {ob, os, oc, on};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinakit, CPU, m) { m.impl("multiclass_nms", &multiclass_nms_cpu); }

}  // namespace cpu
}  // namespace retinakit
