// CUDA kernels (torch glue) of retinakit::nms, batched_nms, soft_nms and multiclass_nms.
// Sorting and gathers use ATen; the NMS itself runs in nms_kernels.cuh / soft_nms_kernels.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/nms_kernels.cuh"
#include "cuda/soft_nms_kernels.cuh"
#include "multiclass_checks.h"
#include "op_checks.h"

namespace retinakit {
namespace cuda {
namespace {

// Per image: boxes sorted by (score desc, index asc) with invalid rows (index >= count or
// non-finite score) last. Returns (order [N, M], valid count [N]).
std::tuple<at::Tensor, at::Tensor> sort_valid(const at::Tensor& scores, const at::Tensor& num_valid) {
  const int64_t m = scores.size(1);
  at::Tensor valid = at::isfinite(scores);
  if (num_valid.defined()) valid = valid & (at::arange(m, scores.options().dtype(at::kLong)).unsqueeze(0) < num_valid.unsqueeze(1));
  const at::Tensor key = at::where(valid, scores, at::full({}, -INFINITY, scores.options()));
  at::Tensor order = std::get<1>(key.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));
  return {order, valid.sum(1)};
}

// Bitmask NMS of boxes [N, M, 4] / scores [N, M] (cats [N, M] or undefined = agnostic).
// Returns (order [N, M], kept [N, M] uint8 over positions of order).
std::tuple<at::Tensor, at::Tensor> bitmask_nms(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                                               const at::Tensor& cats, const at::Tensor& num_valid, double thr,
                                               int64_t max_keep) {
  const int64_t n = boxes.size(0), m = boxes.size(1);
  check_cuda_grid(op, n, kCudaMaxGridYZ, "images per call", "split the batch into chunks of at most 65535 images");
  check_cuda_grid(op, m, kCudaMaxGridYZ * kNmsBlock, "boxes per image",
                  "keep fewer candidates (a higher score threshold or a smaller top-k) or run this op on CPU");
  auto [order, counts] = sort_valid(scores, num_valid);
  const at::Tensor sboxes = boxes.gather(1, order.unsqueeze(2).expand({n, m, 4})).contiguous();
  at::Tensor scats;
  if (cats.defined()) scats = cats.gather(1, order).contiguous();
  const int cb = nms_col_blocks(static_cast<int>(m));
  at::Tensor mask = at::empty({n, m, cb}, boxes.options().dtype(at::kLong));
  at::Tensor removed = at::zeros({n, cb}, boxes.options().dtype(at::kLong));
  at::Tensor kept = at::zeros({n, m}, boxes.options().dtype(at::kByte));
  counts = counts.contiguous();
  const int mk = static_cast<int>(std::min<int64_t>(max_keep, m));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "retinakit_bitmask_nms_cuda", [&] {
    const cudaError_t err = launch_bitmask_nms<scalar_t>(
        sboxes.data_ptr<scalar_t>(), scats.defined() ? scats.data_ptr<int64_t>() : nullptr, counts.data_ptr<int64_t>(),
        static_cast<int>(n), static_cast<int>(m), thr, mk, reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()),
        reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()), kept.data_ptr<uint8_t>(), stream);
    TORCH_CHECK(err == cudaSuccess, "retinakit NMS CUDA kernel failed: ", cudaGetErrorString(err));
  });
  return {order, kept};
}

at::Tensor single_nms(const char* op, const at::Tensor& boxes_in, const at::Tensor& scores_in, const at::Tensor& idxs_in,
                      double thr) {
  c10::cuda::CUDAGuard guard(boxes_in.device());
  const at::Tensor boxes = compute_dtype(boxes_in).contiguous();
  const at::Tensor scores = scores_in.to(boxes.scalar_type());
  if (boxes.size(0) == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  at::Tensor cats;
  if (idxs_in.defined()) cats = idxs_in.to(at::kLong).unsqueeze(0);
  auto [order, kept] = bitmask_nms(op, boxes.unsqueeze(0), scores.unsqueeze(0), cats, at::Tensor(), thr, boxes.size(0));
  return order[0].masked_select(kept[0].to(at::kBool));  // host sync: the output length is data dependent
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double thr) {
  check_boxes_scores("nms", boxes, scores);
  return single_nms("nms", boxes, scores, at::Tensor(), thr);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double thr) {
  check_boxes_scores("batched_nms", boxes, scores);
  check_idxs("batched_nms", idxs, boxes.size(0));
  return single_nms("batched_nms", boxes, scores, idxs, thr);
}

// Soft-NMS of padded batches: returns (idx [N, D] (-1 padding), score [N, D], count [N]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> batched_soft(const at::Tensor& boxes, const at::Tensor& scores,
                                                            const at::Tensor& cats, const at::Tensor& counts,
                                                            cpu::SoftMethod method, double sigma, double iou_thr,
                                                            double score_thr, int64_t max_keep) {
  const int64_t n = boxes.size(0), m = boxes.size(1);
  at::Tensor cur = at::empty({n, m}, scores.options());
  at::Tensor out_idx = at::empty({n, max_keep}, counts.options());
  at::Tensor out_score = at::zeros({n, max_keep}, scores.options());
  at::Tensor out_count = at::zeros({n}, counts.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "retinakit_soft_nms_cuda", [&] {
    const cudaError_t err = launch_soft_nms<scalar_t>(
        boxes.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(), cats.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
        static_cast<int>(n), static_cast<int>(m), method == cpu::SoftMethod::kLinear ? 0 : 1, sigma, iou_thr, score_thr,
        static_cast<int>(max_keep), cur.data_ptr<scalar_t>(), out_idx.data_ptr<int64_t>(), out_score.data_ptr<scalar_t>(),
        out_count.data_ptr<int64_t>(), stream);
    TORCH_CHECK(err == cudaSuccess, "retinakit soft-NMS CUDA kernel failed: ", cudaGetErrorString(err));
  });
  return {out_idx, out_score, out_count};
}

std::tuple<at::Tensor, at::Tensor> soft_nms_cuda(const at::Tensor& boxes_in, const at::Tensor& scores_in,
                                                 const at::Tensor& idxs, c10::string_view method, double sigma,
                                                 double iou_thr, double score_thr) {
  check_boxes_scores("soft_nms", boxes_in, scores_in);
  check_idxs("soft_nms", idxs, boxes_in.size(0));
  const cpu::SoftMethod meth = parse_soft_method(method);
  c10::cuda::CUDAGuard guard(boxes_in.device());
  const at::Tensor boxes = compute_dtype(boxes_in).contiguous();
  const at::Tensor scores = scores_in.to(boxes.scalar_type()).contiguous();
  const int64_t n = boxes.size(0);
  if (n == 0) return {at::empty({0}, boxes.options().dtype(at::kLong)), at::empty({0}, boxes.options())};
  const at::Tensor counts = at::full({1}, n, boxes.options().dtype(at::kLong));
  auto [idx, sc, cnt] = batched_soft(boxes.unsqueeze(0), scores.unsqueeze(0), idxs.to(at::kLong).contiguous().unsqueeze(0),
                                     counts, meth, sigma, iou_thr, score_thr, n);
  const int64_t k = cnt.item<int64_t>();  // host sync: data-dependent length
  return {idx[0].slice(0, 0, k), sc[0].slice(0, 0, k)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_nms_cuda(
    const at::Tensor& boxes_in, const at::Tensor& scores_in, const at::Tensor& classes_in, const at::Tensor& num_valid_in,
    c10::string_view nms_type, double iou_thr, int64_t max_det, c10::string_view soft_method, double soft_sigma,
    double soft_score_thr) {
  const NmsType type = check_multiclass_inputs(boxes_in, scores_in, classes_in, num_valid_in, nms_type, max_det);
  const cpu::SoftMethod meth = parse_soft_method(soft_method);
  c10::cuda::CUDAGuard guard(boxes_in.device());
  const at::Tensor boxes = boxes_in.to(at::kFloat).contiguous();
  const at::Tensor scores = scores_in.to(at::kFloat).contiguous();
  const at::Tensor classes = classes_in.to(at::kLong).contiguous();
  const at::Tensor num_valid = num_valid_in.to(at::kLong).clamp(0, boxes.size(1)).contiguous();
  const int64_t n = boxes.size(0), m = boxes.size(1);
  at::Tensor sel_idx, sel_score, det;  // sel_idx [N, D] rows into the inputs, -1 padding
  if (m == 0 || max_det == 0) {
    return {at::zeros({n, max_det, 4}, boxes.options()), at::zeros({n, max_det}, scores.options()),
            at::full({n, max_det}, -1, classes.options()), at::zeros({n}, classes.options())};
  }
  if (type == NmsType::kSoft) {
    std::tie(sel_idx, sel_score, det) =
        batched_soft(boxes, scores, classes, num_valid, meth, soft_sigma, iou_thr, soft_score_thr, max_det);
  } else {
    const at::Tensor cats = type == NmsType::kBatched ? classes : at::Tensor();
    auto [order, kept] = bitmask_nms("multiclass_nms", boxes, scores, cats, num_valid, iou_thr, max_det);
    const at::Tensor k = kept.to(at::kLong);
    const at::Tensor pos = k.cumsum(1) - 1;
    const at::Tensor slot = at::where(k.to(at::kBool) & (pos < max_det), pos, at::full({}, max_det, pos.options()));
    sel_idx = at::full({n, max_det + 1}, -1, classes.options()).scatter_(1, slot, order).slice(1, 0, max_det);
    det = k.sum(1).clamp_max(max_det);
    sel_score = scores.gather(1, sel_idx.clamp_min(0));
  }
  const at::Tensor valid = sel_idx >= 0;
  const at::Tensor gi = sel_idx.clamp_min(0);
  at::Tensor ob = at::where(valid.unsqueeze(2), boxes.gather(1, gi.unsqueeze(2).expand({n, max_det, 4})),
                            at::zeros({}, boxes.options()));
  at::Tensor os = at::where(valid, sel_score, at::zeros({}, scores.options()));
  at::Tensor oc = at::where(valid, classes.gather(1, gi), at::full({}, -1, classes.options()));
  return {ob, os, oc, det};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinakit, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
  m.impl("soft_nms", &soft_nms_cuda);
  m.impl("multiclass_nms", &multiclass_nms_cuda);
}

}  // namespace cuda
}  // namespace retinakit
