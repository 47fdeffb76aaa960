// Shape checks and output allocation of retinakit::decode_detections (CPU and CUDA glue).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace retinakit {

struct LevelShape {
  int64_t A, K, H, W;  // anchors per location, classes, height, width
  int64_t count() const { return A * K * H * W; }
};

inline std::vector<LevelShape> check_decode_inputs(at::TensorList cls, at::TensorList box, at::TensorList anchors,
                                                   const at::Tensor& image_sizes, int64_t topk, at::ArrayRef<double> w) {
  TORCH_CHECK(!cls.empty() && cls.size() == box.size() && cls.size() == anchors.size(),
              "retinakit.ops.decode_detections: need one cls_logits, box_deltas and anchors tensor per level (>= 1)");
  TORCH_CHECK(topk >= 0, "retinakit.ops.decode_detections: topk must be >= 0, got ", topk);
  TORCH_CHECK(w.size() == 4, "retinakit.ops.decode_detections: weights must have 4 values, got ", w.size());
  const int64_t n = cls[0].size(0);
  TORCH_CHECK(image_sizes.dim() == 2 && image_sizes.size(0) == n && image_sizes.size(1) == 2,
              "retinakit.ops.decode_detections: image_sizes must be [N, 2] (height, width) with N = ", n, ", got ",
              image_sizes.sizes());
  std::vector<LevelShape> shapes;
  for (size_t l = 0; l < cls.size(); ++l) {
    const at::Tensor &c = cls[l], &b = box[l], &a = anchors[l];
    TORCH_CHECK(c.dim() == 4 && c.size(0) == n && c.is_floating_point(), "retinakit.ops.decode_detections: cls_logits[", l,
                "] must be a float [N, A*K, H, W] tensor with N = ", n, ", got ", c.sizes());
    TORCH_CHECK(b.dim() == 4 && b.size(0) == n && b.size(1) % 4 == 0 && b.size(1) > 0 && b.size(2) == c.size(2) &&
                    b.size(3) == c.size(3),
                "retinakit.ops.decode_detections: box_deltas[", l, "] must be [N, A*4, H, W] with N, H, W = ", n, ", ",
                c.size(2), ", ", c.size(3), ", got ", b.sizes());
    const int64_t A = b.size(1) / 4, hw = c.size(2) * c.size(3);
    TORCH_CHECK(c.size(1) % A == 0, "retinakit.ops.decode_detections: cls_logits[", l, "] has ", c.size(1),
                " channels, not a multiple of the ", A, " anchors per location of box_deltas[", l, "]");
    TORCH_CHECK(a.dim() == 2 && a.size(1) == 4 && a.size(0) == hw * A, "retinakit.ops.decode_detections: anchors[", l,
                "] must be [H*W*A, 4] = [", hw * A, ", 4], got ", a.sizes());
    TORCH_CHECK(c.device() == b.device() && c.device() == a.device() && c.device() == image_sizes.device(),
                "retinakit.ops.decode_detections: all inputs must be on the same device");
    shapes.push_back({A, c.size(1) / A, c.size(2), c.size(3)});
  }
  return shapes;
}

inline int64_t decode_capacity(const std::vector<LevelShape>& shapes, int64_t topk) {
  int64_t m = 0;
  for (const auto& s : shapes) m += std::min(topk, s.count());
  return m;
}

// Zero boxes/scores, class -1, count 0.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> alloc_detections(int64_t n, int64_t m,
                                                                                     const at::TensorOptions& o) {
  return {at::zeros({n, m, 4}, o.dtype(at::kFloat)), at::zeros({n, m}, o.dtype(at::kFloat)),
          at::full({n, m}, -1, o.dtype(at::kLong)), at::zeros({n}, o.dtype(at::kLong))};
}

// Float32 logit below which sigmoid(x) > thresh is impossible (a small safety margin; the
// exact test is done on the sigmoid). -inf when every finite logit may pass.
inline float logit_prefilter(double thresh) {
  if (!(thresh > 0.0)) return -INFINITY;
  if (thresh >= 1.0) return INFINITY;
  const double l = std::log(thresh) - std::log1p(-thresh);
  return static_cast<float>(l - 1e-3 * (1.0 + std::fabs(l)));
}

}  // namespace retinakit
