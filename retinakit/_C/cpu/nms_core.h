// CPU NMS algorithms on raw arrays (used by the nms, batched_nms, soft_nms and
// multiclass_nms CPU kernels). Per-category work runs in parallel with at::parallel_for.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <queue>
#include <vector>

#include "box_iou.h"

namespace retinakit {
namespace cpu {

// Indices i in [0, n) with finite scores[i], by decreasing score then increasing index.
template <typename T>
std::vector<int64_t> finite_score_order(const T* scores, int64_t n) {
  std::vector<int64_t> order;
  order.reserve(n);
  for (int64_t i = 0; i < n; ++i)
    if (std::isfinite(static_cast<double>(scores[i]))) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return score_before(scores[a], a, scores[b], b); });
  return order;
}

// Greedy NMS over boxes[order[0..m)] (already in score order). Sets kept[p] = 1 for kept
// positions p of `order`.
template <typename T>
void greedy_nms(const T* boxes, const int64_t* order, int64_t m, double thr, uint8_t* kept) {
  std::vector<T> x0(m), y0(m), x1(m), y1(m), area(m);
  for (int64_t p = 0; p < m; ++p) {
    const T* b = boxes + 4 * order[p];
    x0[p] = b[0], y0[p] = b[1], x1[p] = b[2], y1[p] = b[3];
    area[p] = box_area(b[0], b[1], b[2], b[3]);
  }
  std::vector<uint8_t> sup(m, 0);
  for (int64_t i = 0; i < m; ++i) {
    kept[i] = 0;
    if (sup[i]) continue;
    kept[i] = 1;
    const T ix0 = x0[i], iy0 = y0[i], ix1 = x1[i], iy1 = y1[i], ia = area[i];
    for (int64_t j = i + 1; j < m; ++j) {
      const T o = box_iou(ix0, iy0, ix1, iy1, ia, x0[j], y0[j], x1[j], y1[j], area[j]);
      sup[j] |= static_cast<uint8_t>(static_cast<double>(o) > thr);
    }
  }
}

// Single-category NMS: kept indices into boxes, by decreasing score (ties: lower index).
template <typename T>
std::vector<int64_t> nms_indices(const T* boxes, const T* scores, int64_t n, double thr) {
  std::vector<int64_t> order = finite_score_order(scores, n);
  std::vector<uint8_t> kept(order.size());
  greedy_nms(boxes, order.data(), static_cast<int64_t>(order.size()), thr, kept.data());
  std::vector<int64_t> keep;
  for (size_t p = 0; p < order.size(); ++p)
    if (kept[p]) keep.push_back(order[p]);
  return keep;
}

// Groups positions of `order` by category, keeping score order inside each group.
// Returns group boundaries into `grouped` (positions of `order`).
inline void group_by_category(const std::vector<int64_t>& order, const int64_t* cats, std::vector<int64_t>& grouped,
                              std::vector<int64_t>& bounds) {
  const int64_t m = static_cast<int64_t>(order.size());
  grouped.resize(m);
  std::iota(grouped.begin(), grouped.end(), 0);
  std::stable_sort(grouped.begin(), grouped.end(), [&](int64_t a, int64_t b) { return cats[order[a]] < cats[order[b]]; });
  bounds.clear();
  for (int64_t p = 0; p < m; ++p)
    if (p == 0 || cats[order[grouped[p]]] != cats[order[grouped[p - 1]]]) bounds.push_back(p);
  bounds.push_back(m);
}

// Per-category NMS: kept indices by decreasing score (ties: lower index). Exact IoU on the
// original coordinates (no coordinate offsets).
template <typename T>
std::vector<int64_t> batched_nms_indices(const T* boxes, const T* scores, const int64_t* cats, int64_t n, double thr) {
  const std::vector<int64_t> order = finite_score_order(scores, n);
  std::vector<int64_t> grouped, bounds;
  group_by_category(order, cats, grouped, bounds);
  const int64_t groups = static_cast<int64_t>(bounds.size()) - 1;
  std::vector<uint8_t> kept(order.size(), 0);
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<int64_t> idx;
    std::vector<uint8_t> k;
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t a = bounds[g], len = bounds[g + 1] - a;
      idx.resize(len);
      k.resize(len);
      for (int64_t p = 0; p < len; ++p) idx[p] = order[grouped[a + p]];
      greedy_nms(boxes, idx.data(), len, thr, k.data());
      for (int64_t p = 0; p < len; ++p) kept[grouped[a + p]] = k[p];
    }
  });
  std::vector<int64_t> keep;
  for (size_t p = 0; p < order.size(); ++p)
    if (kept[p]) keep.push_back(order[p]);
  return keep;
}

enum class SoftMethod { kLinear = 0, kGaussian = 1 };

// Soft-NMS within one category over indices `idx` (any order). Appends (index, score when
// selected) pairs in selection order.
template <typename T>
void soft_nms_group(const T* boxes, const T* scores, const int64_t* idx, int64_t m, SoftMethod method, double sigma,
                    double iou_thr, double score_thr, std::vector<std::pair<int64_t, T>>& out) {
  std::vector<int64_t> ids(idx, idx + m);
  std::sort(ids.begin(), ids.end());
  std::vector<T> cur(m), area(m);
  std::vector<uint8_t> alive(m);
  for (int64_t p = 0; p < m; ++p) {
    const T* b = boxes + 4 * ids[p];
    cur[p] = scores[ids[p]];
    area[p] = box_area(b[0], b[1], b[2], b[3]);
    alive[p] = std::isfinite(static_cast<double>(cur[p])) && static_cast<double>(cur[p]) >= score_thr;
  }
  const T sig = static_cast<T>(sigma);
  while (true) {
    int64_t best = -1;
    for (int64_t p = 0; p < m; ++p)
      if (alive[p] && (best < 0 || cur[p] > cur[best])) best = p;  // ids ascending: ties keep the lower index
    if (best < 0) break;
    out.emplace_back(ids[best], cur[best]);
    alive[best] = 0;
    const T* a = boxes + 4 * ids[best];
    for (int64_t p = 0; p < m; ++p) {
      if (!alive[p]) continue;
      const T* b = boxes + 4 * ids[p];
      const T o = box_iou(a[0], a[1], a[2], a[3], area[best], b[0], b[1], b[2], b[3], area[p]);
      if (!(o > T(0))) continue;
      if (method == SoftMethod::kLinear) {
        if (static_cast<double>(o) > iou_thr) cur[p] = cur[p] * (T(1) - o);
      } else {
        cur[p] = cur[p] * rk_exp(-(o * o) / sig);  // same bits as the CUDA kernel
      }
      alive[p] = static_cast<double>(cur[p]) >= score_thr;
    }
  }
}

// Merges per-category selection runs into the order of the global algorithm (one category
// never changes another's scores): repeatedly take the run head with the highest score, ties
// by lower index. The same as sorting when every run is non-increasing, but a negative score
// grows toward 0 when decayed, so a run need not be (scores [-0.5, -0.06] stay in that order).
template <typename T>
std::vector<std::pair<int64_t, T>> merge_selection_runs(const std::vector<std::vector<std::pair<int64_t, T>>>& runs) {
  using Head = std::pair<size_t, size_t>;  // (run, position in run)
  auto after = [&](const Head& a, const Head& b) {
    const auto& x = runs[a.first][a.second];
    const auto& y = runs[b.first][b.second];
    return score_before(y.second, y.first, x.second, x.first);
  };
  std::priority_queue<Head, std::vector<Head>, decltype(after)> heads(after);
  size_t total = 0;
  for (size_t g = 0; g < runs.size(); ++g) {
    total += runs[g].size();
    if (!runs[g].empty()) heads.push({g, 0});
  }
  std::vector<std::pair<int64_t, T>> res;
  res.reserve(total);
  while (!heads.empty()) {
    const Head h = heads.top();
    heads.pop();
    res.push_back(runs[h.first][h.second]);
    if (h.second + 1 < runs[h.first].size()) heads.push({h.first, h.second + 1});
  }
  return res;
}

// Per-category soft-NMS over all n boxes: (index, score when selected) in the selection order
// of the global algorithm (each step: highest current score, ties by lower index), as
// retinakit/ops/reference.py's soft_nms.
template <typename T>
std::vector<std::pair<int64_t, T>> soft_nms_pairs(const T* boxes, const T* scores, const int64_t* cats, int64_t n,
                                                  SoftMethod method, double sigma, double iou_thr, double score_thr) {
  std::vector<int64_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  std::vector<int64_t> grouped, bounds;
  group_by_category(all, cats, grouped, bounds);
  const int64_t groups = static_cast<int64_t>(bounds.size()) - 1;
  std::vector<std::vector<std::pair<int64_t, T>>> per(groups);
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      soft_nms_group(boxes, scores, grouped.data() + bounds[g], bounds[g + 1] - bounds[g], method, sigma, iou_thr,
                     score_thr, per[g]);
  });
  return merge_selection_runs(per);
}

}  // namespace cpu
}  // namespace retinakit
