// CPU kernel of retinakit::decode_detections: per image and level, scan the NCHW logits
// (parallel over channels), keep sigmoid > thresh, top-k, decode and clip.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "box_iou.h"
#include "decode_checks.h"

namespace retinakit {
namespace cpu {
namespace {

struct Cand {
  float s;
  int64_t idx;  // index in the level flattened as (h, w, a, k)
};

inline bool cand_before(const Cand& a, const Cand& b) { return score_before(a.s, a.idx, b.s, b.idx); }

// Candidates of one image and level with sigmoid(logit) > thresh (any order).
template <typename scalar_t>
std::vector<Cand> collect(const scalar_t* logits, int64_t AK, int64_t HW, float pre, float thresh) {
  std::vector<Cand> all;
  std::mutex mu;
  constexpr int64_t B = 16;
  at::parallel_for(0, AK, 4, [&](int64_t c0, int64_t c1) {
    std::vector<Cand> local;
    auto test = [&](float x, int64_t c, int64_t hw) {
      if (x > pre) {
        const float s = sigmoidf_rk(x);
        if (s > thresh) local.push_back({s, hw * AK + c});
      }
    };
    for (int64_t c = c0; c < c1; ++c) {
      const scalar_t* p = logits + c * HW;
      int64_t i = 0;
      for (; i + B <= HW; i += B) {
        bool any = false;
        for (int64_t j = 0; j < B; ++j) any |= static_cast<float>(p[i + j]) > pre;
        if (!any) continue;
        for (int64_t j = 0; j < B; ++j) test(static_cast<float>(p[i + j]), c, i + j);
      }
      for (; i < HW; ++i) test(static_cast<float>(p[i]), c, i);
    }
    std::lock_guard<std::mutex> g(mu);
    all.insert(all.end(), local.begin(), local.end());
  });
  return all;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decode_cpu(at::TensorList cls, at::TensorList box,
                                                                      at::TensorList anchors, const at::Tensor& image_sizes,
                                                                      double score_thresh, int64_t topk,
                                                                      at::ArrayRef<double> weights, double scale_clamp) {
  const auto shapes = check_decode_inputs(cls, box, anchors, image_sizes, topk, weights);
  const int64_t n_img = cls[0].size(0);
  const int64_t m = decode_capacity(shapes, topk);
  auto [out_b, out_s, out_c, out_n] = alloc_detections(n_img, m, cls[0].options());
  const at::Tensor sizes = image_sizes.to(at::kLong).contiguous();
  const float w4[4] = {float(weights[0]), float(weights[1]), float(weights[2]), float(weights[3])};
  const float clampv = static_cast<float>(scale_clamp), thresh = static_cast<float>(score_thresh);
  const float pre = logit_prefilter(score_thresh);
  std::vector<at::Tensor> logits, deltas, anc;
  for (size_t l = 0; l < cls.size(); ++l) {
    logits.push_back(cls[l].contiguous());
    deltas.push_back(box[l].to(at::kFloat).contiguous());
    anc.push_back(anchors[l].to(at::kFloat).contiguous());
  }
  float* ob = out_b.data_ptr<float>();
  float* os = out_s.data_ptr<float>();
  int64_t* oc = out_c.data_ptr<int64_t>();
  for (int64_t n = 0; n < n_img; ++n) {
    int64_t pos = 0;
    const float img_h = static_cast<float>(sizes[n][0].item<int64_t>()), img_w = static_cast<float>(sizes[n][1].item<int64_t>());
    for (size_t l = 0; l < shapes.size(); ++l) {
      const LevelShape& sh = shapes[l];
      const int64_t AK = sh.A * sh.K, HW = sh.H * sh.W;
      std::vector<Cand> c;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits[l].scalar_type(), "retinakit_decode_cpu", [&] {
        c = collect(logits[l].data_ptr<scalar_t>() + n * AK * HW, AK, HW, pre, thresh);
      });
      const int64_t k = std::min<int64_t>(topk, static_cast<int64_t>(c.size()));
      if (k < static_cast<int64_t>(c.size())) std::nth_element(c.begin(), c.begin() + k, c.end(), cand_before);
      std::sort(c.begin(), c.begin() + k, cand_before);
      const float* d = deltas[l].data_ptr<float>() + n * 4 * sh.A * HW;
      const float* a = anc[l].data_ptr<float>();
      for (int64_t i = 0; i < k; ++i) {
        const int64_t anchor = c[i].idx / sh.K, hw = anchor / sh.A, ai = anchor % sh.A;
        const float* dd = d + 4 * ai * HW + hw;
        const int64_t row = n * m + pos + i;
        decode_clip_box(a + 4 * anchor, dd[0], dd[HW], dd[2 * HW], dd[3 * HW], w4, clampv, img_h, img_w, ob + 4 * row);
        os[row] = c[i].s;
        oc[row] = c[i].idx % sh.K;
      }
      pos += k;
    }
    out_n[n] = pos;
  }
  return {out_b, out_s, out_c, out_n};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinakit, CPU, m) { m.impl("decode_detections", &decode_cpu); }

}  // namespace cpu
}  // namespace retinakit
