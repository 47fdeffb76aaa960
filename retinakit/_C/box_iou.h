// Box arithmetic shared by the CPU and CUDA kernels. No torch dependency, so a TensorRT
// plugin can include it. The formulas reproduce torchvision's NMS kernels operation by
// operation (compile without FMA contraction: -ffp-contract=off / --fmad=false).
#pragma once

#include <math.h>

#include "rk_exp.h"  // RK_HD, rk_expf (one exp for host and device), sigmoidf_rk

namespace retinakit {

// max/min written as std::max/std::min do: (a < b) ? b : a.
template <typename T>
RK_HD T rk_max(T a, T b) { return (a < b) ? b : a; }
template <typename T>
RK_HD T rk_min(T a, T b) { return (b < a) ? b : a; }

// (x1 - x0) * (y1 - y0); negative for inverted boxes (not clamped, as torchvision).
template <typename T>
RK_HD T box_area(T x0, T y0, T x1, T y1) { return (x1 - x0) * (y1 - y0); }

// IoU of box a and box b given their areas: inter / ((area_a + area_b) - inter).
// NaN when both areas are zero and the boxes do not overlap (never suppresses).
template <typename T>
RK_HD T box_iou(T ax0, T ay0, T ax1, T ay1, T area_a, T bx0, T by0, T bx1, T by1, T area_b) {
  const T xx0 = rk_max(ax0, bx0);
  const T yy0 = rk_max(ay0, by0);
  const T xx1 = rk_min(ax1, bx1);
  const T yy1 = rk_min(ay1, by1);
  const T w = rk_max(static_cast<T>(0), xx1 - xx0);
  const T h = rk_max(static_cast<T>(0), yy1 - yy0);
  const T inter = w * h;
  return inter / (area_a + area_b - inter);
}

// Order used by every op: higher score first, then lower index.
template <typename T>
RK_HD bool score_before(T sa, long long ia, T sb, long long ib) {
  return sa > sb || (sa == sb && ia < ib);
}

// Delta decode (dx, dy, dw, dh) / weights of one anchor, torchvision's BoxCoder order of
// operations, then clip to [0, width] x [0, height] (NaN stays NaN). out: x0, y0, x1, y1.
RK_HD void decode_clip_box(const float* anchor, float d0, float d1, float d2, float d3, const float* w4,
                           float scale_clamp, float img_h, float img_w, float* out) {
  const float aw = anchor[2] - anchor[0];
  const float ah = anchor[3] - anchor[1];
  const float cx = anchor[0] + 0.5f * aw;
  const float cy = anchor[1] + 0.5f * ah;
  const float dx = d0 / w4[0];
  const float dy = d1 / w4[1];
  float dw = d2 / w4[2];
  float dh = d3 / w4[3];
  dw = (dw > scale_clamp) ? scale_clamp : dw;
  dh = (dh > scale_clamp) ? scale_clamp : dh;
  const float pcx = dx * aw + cx;
  const float pcy = dy * ah + cy;
  const float hw = 0.5f * (rk_expf(dw) * aw);
  const float hh = 0.5f * (rk_expf(dh) * ah);
  const float v[4] = {pcx - hw, pcy - hh, pcx + hw, pcy + hh};
  const float lim[4] = {img_w, img_h, img_w, img_h};
  for (int j = 0; j < 4; ++j) {
    const float x = v[j];
    out[j] = (x < 0.f) ? 0.f : ((x > lim[j]) ? lim[j] : x);
  }
}

}  // namespace retinakit
