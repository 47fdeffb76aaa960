// CPU kernel of retinakit::decode_detections: one parallel scan of the logits (NCHW or channels_last) of all
// images and levels (keep sigmoid > thresh), then per (image, level) top-k, decode and clip.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
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

// Appends the candidates of channels [c0, c1) of one image and level whose
// sigmoid(logit) > thresh (logits: the image's [A*K, H*W] plane block).
template <typename scalar_t>
void collect(const scalar_t* logits, int64_t AK, int64_t HW, int64_t c0, int64_t c1, float pre, float thresh,
             std::vector<Cand>& out) {
  constexpr int64_t B = 16;
  auto test = [&](float x, int64_t c, int64_t hw) {
    if (x > pre) {
      const float s = sigmoidf_rk(x);
      if (s > thresh) out.push_back({s, hw * AK + c});
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
}

// The same for channels_last logits, read where they lie (an NCHW copy of P3's
// [1, 819, 100, 152] cost 42 ms on 2 cores): locations [hw0, hw1), all channels.
template <typename scalar_t>
void collect_nhwc(const scalar_t* logits, int64_t AK, int64_t hw0, int64_t hw1, float pre, float thresh,
                  std::vector<Cand>& out) {
  for (int64_t hw = hw0; hw < hw1; ++hw) {
    const scalar_t* p = logits + hw * AK;
    for (int64_t c = 0; c < AK; ++c) {
      const float x = static_cast<float>(p[c]);
      if (x > pre) {
        const float s = sigmoidf_rk(x);
        if (s > thresh) out.push_back({s, hw * AK + c});
      }
    }
  }
}

inline bool is_nhwc(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

struct WorkItem {
  int64_t seg, n, l, r0, r1;  // segment = n * L + l; channel range (NCHW) or location range (NHWC)
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decode_cpu(at::TensorList cls, at::TensorList box,
                                                                      at::TensorList anchors, const at::Tensor& image_sizes,
                                                                      double score_thresh, int64_t topk,
                                                                      at::ArrayRef<double> weights, double scale_clamp) {
  const auto shapes = check_decode_inputs(cls, box, anchors, image_sizes, topk, weights);
  const int64_t n_img = cls[0].size(0), L = static_cast<int64_t>(shapes.size()), S = n_img * L;
  const int64_t m = decode_capacity(shapes, topk);
  auto [out_b, out_s, out_c, out_n] = alloc_detections(n_img, m, cls[0].options());
  const at::Tensor sizes = image_sizes.to(at::kLong).contiguous();
  const float w4[4] = {float(weights[0]), float(weights[1]), float(weights[2]), float(weights[3])};
  const float clampv = static_cast<float>(scale_clamp), thresh = static_cast<float>(score_thresh);
  const float pre = logit_prefilter(score_thresh);
  std::vector<at::Tensor> logits, deltas, anc;
  std::vector<char> nhwc(L);
  for (int64_t l = 0; l < L; ++l) {
    nhwc[l] = is_nhwc(cls[l]);
    logits.push_back(nhwc[l] ? cls[l] : cls[l].contiguous());
    deltas.push_back(box[l].to(at::kFloat).contiguous());
    anc.push_back(anchors[l].to(at::kFloat).contiguous());
  }
  // Phase 1: scan all images and levels in one parallel region, ~64K logits per work item.
  std::vector<WorkItem> items;
  for (int64_t n = 0; n < n_img; ++n)
    for (int64_t l = 0; l < L; ++l) {
      const int64_t AK = shapes[l].A * shapes[l].K, HW = shapes[l].H * shapes[l].W;
      const int64_t len = nhwc[l] ? HW : AK, inner = nhwc[l] ? AK : HW;
      const int64_t step = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, inner));
      for (int64_t r0 = 0; inner > 0 && r0 < len; r0 += step) items.push_back({n * L + l, n, l, r0, std::min(len, r0 + step)});
    }
  std::vector<std::vector<Cand>> seg(S);
  std::unique_ptr<std::mutex[]> mus(new std::mutex[S]);
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t i0, int64_t i1) {
    std::vector<Cand> local;
    for (int64_t i = i0; i < i1; ++i) {
      const WorkItem& it = items[i];
      const int64_t AK = shapes[it.l].A * shapes[it.l].K, HW = shapes[it.l].H * shapes[it.l].W;
      local.clear();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits[it.l].scalar_type(), "retinakit_decode_cpu", [&] {
        const scalar_t* img = logits[it.l].data_ptr<scalar_t>() + it.n * AK * HW;
        if (nhwc[it.l])
          collect_nhwc(img, AK, it.r0, it.r1, pre, thresh, local);
        else
          collect(img, AK, HW, it.r0, it.r1, pre, thresh, local);
      });
      if (local.empty()) continue;
      std::lock_guard<std::mutex> g(mus[it.seg]);
      seg[it.seg].insert(seg[it.seg].end(), local.begin(), local.end());
    }
  });
  // Output rows: image n's segments one after the other.
  std::vector<int64_t> kseg(S), off(S);
  const int64_t* sz = sizes.data_ptr<int64_t>();
  int64_t* on = out_n.data_ptr<int64_t>();
  for (int64_t n = 0; n < n_img; ++n) {
    int64_t pos = 0;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t s = n * L + l;
      kseg[s] = std::min<int64_t>(topk, static_cast<int64_t>(seg[s].size()));
      off[s] = pos;
      pos += kseg[s];
    }
    on[n] = pos;
  }
  // Phase 2: per segment, top-k (ties: lower index) then decode and clip.
  float* ob = out_b.data_ptr<float>();
  float* os = out_s.data_ptr<float>();
  int64_t* oc = out_c.data_ptr<int64_t>();
  at::parallel_for(0, S, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t n = s / L, l = s % L, k = kseg[s];
      const LevelShape& sh = shapes[l];
      const int64_t HW = sh.H * sh.W;
      std::vector<Cand>& c = seg[s];
      if (k < static_cast<int64_t>(c.size())) std::nth_element(c.begin(), c.begin() + k, c.end(), cand_before);
      std::sort(c.begin(), c.begin() + k, cand_before);
      const float img_h = static_cast<float>(sz[2 * n]), img_w = static_cast<float>(sz[2 * n + 1]);
      const float* d = deltas[l].data_ptr<float>() + n * 4 * sh.A * HW;
      const float* a = anc[l].data_ptr<float>();
      for (int64_t i = 0; i < k; ++i) {
        const int64_t anchor = c[i].idx / sh.K, hw = anchor / sh.A, ai = anchor % sh.A;
        const float* dd = d + 4 * ai * HW + hw;
        const int64_t row = n * m + off[s] + i;
        decode_clip_box(a + 4 * anchor, dd[0], dd[HW], dd[2 * HW], dd[3 * HW], w4, clampv, img_h, img_w, ob + 4 * row);
        os[row] = c[i].s;
        oc[row] = c[i].idx % sh.K;
      }
    }
  });
  return {out_b, out_s, out_c, out_n};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinakit, CPU, m) { m.impl("decode_detections", &decode_cpu); }

}  // namespace cpu
}  // namespace retinakit
