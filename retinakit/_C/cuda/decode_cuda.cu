// CUDA kernel (torch glue) of retinakit::decode_detections: radix-select top-k per
// (image, level), sort of the <= k candidates, decode and clip. No host synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <climits>

#include "cuda/decode_kernels.cuh"
#include "decode_checks.h"
#include "op_checks.h"

namespace retinakit {
namespace cuda {
namespace {

template <typename T>
struct CudaType { using type = T; };
template <>
struct CudaType<at::Half> { using type = __half; };
template <>
struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decode_cuda(at::TensorList cls, at::TensorList box,
                                                                       at::TensorList anchors, const at::Tensor& image_sizes,
                                                                       double score_thresh, int64_t topk,
                                                                       at::ArrayRef<double> weights, double scale_clamp) {
  const auto shapes = check_decode_inputs(cls, box, anchors, image_sizes, topk, weights);
  c10::cuda::CUDAGuard guard(cls[0].device());
  const int64_t n_img = cls[0].size(0), L = static_cast<int64_t>(shapes.size());
  const int64_t m = decode_capacity(shapes, topk);
  auto [out_b, out_s, out_c, out_n] = alloc_detections(n_img, m, cls[0].options());
  if (m == 0 || n_img == 0) return {out_b, out_s, out_c, out_n};
  check_cuda_grid("decode_detections", n_img, kCudaMaxGridYZ, "images per call",
                  "split the batch into chunks of at most 65535 images");
  int64_t cap = 0;
  for (const auto& s : shapes) {
    TORCH_CHECK(s.count() < INT_MAX, "retinakit.ops.decode_detections: a level has ", s.count(), " scores (max ", INT_MAX, ")");
    cap = std::max(cap, std::min(topk, s.count()));
  }
  const int topk_i = static_cast<int>(std::min<int64_t>(topk, INT_MAX));
  const int64_t S = n_img * L;
  const auto opts = cls[0].options();
  at::Tensor state = at::zeros({S * static_cast<int64_t>(sizeof(SegSelect))}, opts.dtype(at::kByte));
  at::Tensor hist = at::empty({S, 256}, opts.dtype(at::kInt));
  at::Tensor seg_count = at::zeros({S}, opts.dtype(at::kInt));
  at::Tensor cand_score = at::full({S, cap}, -1.f, opts.dtype(at::kFloat));
  at::Tensor cand_idx = at::full({S, cap}, INT_MAX, opts.dtype(at::kInt));
  auto* st = reinterpret_cast<SegSelect*>(state.data_ptr<uint8_t>());
  auto* hp = reinterpret_cast<unsigned int*>(hist.data_ptr<int>());
  const float pre = logit_prefilter(score_thresh), thresh = static_cast<float>(score_thresh);
  auto stream = at::cuda::getCurrentCUDAStream();

  std::vector<at::Tensor> logits;
  std::vector<LevelArgs> args;
  for (int64_t l = 0; l < L; ++l) {
    const LevelShape& sh = shapes[l];
    logits.push_back(cls[l].contiguous());
    args.push_back({static_cast<int>(l), static_cast<int>(L), static_cast<int>(sh.A * sh.K), static_cast<int>(sh.K),
                    static_cast<int>(sh.A), static_cast<int>(sh.H * sh.W), static_cast<long long>(sh.count())});
  }
  // Radix select: phase 0 on the score bits, phase 1 on ~index among the k-th score ties.
  for (int phase = 0; phase < 2; ++phase) {
    for (int shift = 24; shift >= 0; shift -= 8) {
      hist.zero_();
      for (int64_t l = 0; l < L; ++l) {
        if (shapes[l].count() == 0) continue;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits[l].scalar_type(), "retinakit_topk_hist", [&] {
          using CT = typename CudaType<scalar_t>::type;
          launch_topk_hist<CT>(reinterpret_cast<const CT*>(logits[l].data_ptr<scalar_t>()), args[l], static_cast<int>(n_img),
                               pre, thresh, st, phase, shift, hp, stream);
        });
      }
      launch_topk_find(st, hp, static_cast<int>(S), topk_i, phase, shift, stream);
    }
  }
  for (int64_t l = 0; l < L; ++l) {
    if (shapes[l].count() == 0) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits[l].scalar_type(), "retinakit_topk_collect", [&] {
      using CT = typename CudaType<scalar_t>::type;
      launch_topk_collect<CT>(reinterpret_cast<const CT*>(logits[l].data_ptr<scalar_t>()), args[l], static_cast<int>(n_img),
                              pre, thresh, st, static_cast<int>(cap), seg_count.data_ptr<int>(), cand_score.data_ptr<float>(),
                              cand_idx.data_ptr<int>(), stream);
    });
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Order each segment by (score desc, index asc): sort by index, then stable by score.
  {
    auto by_idx = cand_idx.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false);
    at::Tensor sc = cand_score.gather(1, std::get<1>(by_idx));
    auto by_score = sc.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true);
    cand_score = std::get<0>(by_score).contiguous();
    cand_idx = std::get<0>(by_idx).gather(1, std::get<1>(by_score)).contiguous();
  }
  const at::Tensor counts = seg_count.clamp_max(cap).to(at::kLong).view({n_img, L});
  const at::Tensor offsets = (counts.cumsum(1) - counts).contiguous();
  out_n.copy_(counts.sum(1));
  const at::Tensor sizes = image_sizes.to(at::kLong).contiguous();
  const float w4[4] = {float(weights[0]), float(weights[1]), float(weights[2]), float(weights[3])};
  for (int64_t l = 0; l < L; ++l) {
    if (shapes[l].count() == 0) continue;
    const at::Tensor d = box[l].to(at::kFloat).contiguous();
    const at::Tensor a = anchors[l].to(at::kFloat).contiguous();
    launch_decode_write(cand_score.data_ptr<float>(), cand_idx.data_ptr<int>(), seg_count.data_ptr<int>(),
                        reinterpret_cast<const long long*>(offsets.data_ptr<int64_t>()), args[l], static_cast<int>(n_img),
                        static_cast<int>(cap), d.data_ptr<float>(), a.data_ptr<float>(),
                        reinterpret_cast<const long long*>(sizes.data_ptr<int64_t>()), w4, static_cast<float>(scale_clamp),
                        static_cast<int>(m), out_b.data_ptr<float>(), out_s.data_ptr<float>(),
                        reinterpret_cast<long long*>(out_c.data_ptr<int64_t>()), stream);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out_b, out_s, out_c, out_n};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinakit, CUDA, m) { m.impl("decode_detections", &decode_cuda); }

}  // namespace cuda
}  // namespace retinakit
