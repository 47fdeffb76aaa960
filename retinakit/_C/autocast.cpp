// Autocast kernels: under torch.autocast the NMS ops run in float32 (boxes and scores are
// upcast), so the IoU and the ordering never lose precision to float16/bfloat16.
// decode_detections / multiclass_nms need none: their kernels always compute in float32.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace retinakit {
namespace {

inline at::Tensor upcast(const at::Tensor& t) {
  return (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16) ? t.to(at::kFloat) : t;
}

#define RK_NO_AUTOCAST c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset)

at::Tensor nms_autocast(const at::Tensor& boxes, const at::Tensor& scores, double thr) {
  RK_NO_AUTOCAST;
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("retinakit::nms", "").typed<decltype(nms_autocast)>();
  return op.call(upcast(boxes), upcast(scores), thr);
}

at::Tensor batched_nms_autocast(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double thr) {
  RK_NO_AUTOCAST;
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("retinakit::batched_nms", "").typed<decltype(batched_nms_autocast)>();
  return op.call(upcast(boxes), upcast(scores), idxs, thr);
}

std::tuple<at::Tensor, at::Tensor> soft_nms_autocast(const at::Tensor& boxes, const at::Tensor& scores,
                                                     const at::Tensor& idxs, c10::string_view method, double sigma,
                                                     double iou_thr, double score_thr) {
  RK_NO_AUTOCAST;
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("retinakit::soft_nms", "").typed<decltype(soft_nms_autocast)>();
  return op.call(upcast(boxes), upcast(scores), idxs, method, sigma, iou_thr, score_thr);
}

}  // namespace

TORCH_LIBRARY_IMPL(retinakit, Autocast, m) {
  m.impl("nms", &nms_autocast);
  m.impl("batched_nms", &batched_nms_autocast);
  m.impl("soft_nms", &soft_nms_autocast);
}

TORCH_LIBRARY_IMPL(retinakit, AutocastCPU, m) {
  m.impl("nms", &nms_autocast);
  m.impl("batched_nms", &batched_nms_autocast);
  m.impl("soft_nms", &soft_nms_autocast);
}

}  // namespace retinakit
