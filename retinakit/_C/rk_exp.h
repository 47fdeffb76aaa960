// One float32 exp for the CPU and CUDA kernels (no torch dependency).
//
// Device expf and glibc's expf differ by an ulp on some inputs, so CPU and CUDA scores
// would not be bit-identical. rk_expf uses only correctly rounded operations (float
// multiply, rintf, fmaf and exact power-of-two scaling), each written out explicitly, so
// its result does not depend on the compiler, FMA contraction flags or the math library:
// host and device give the same bits. retinakit/ops/reference.py (exp_f32) reproduces it
// operation by operation in torch. Error: < 1 ulp of the true exp (tests/ops/test_decode.py).
// Subnormal results assume no flush-to-zero (nvcc's default -ftz=false; no --use_fast_math).
#pragma once

#include <math.h>
#include <string.h>

#if !defined(RK_HD)
#if defined(__CUDACC__)
#define RK_HD __host__ __device__ __forceinline__
#else
#define RK_HD inline
#endif
#endif

namespace retinakit {

// The float whose bits are `bits`.
RK_HD float rk_float_from_bits(unsigned int bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

// 2^e for -126 <= e <= 127 (exact).
RK_HD float rk_exp2i(int e) { return rk_float_from_bits(static_cast<unsigned int>(e + 127) << 23); }

// exp(x) in float32: x = n ln2 + r (|r| <= ln2 / 2, Cody-Waite with a two-part ln2, each
// step one fmaf), exp(r) by its degree-7 Taylor polynomial (Horner, fmaf), times 2^n as two
// exact scalings (a subnormal result is rounded once). NaN -> NaN, x > 89 -> +inf,
// x < -104 -> 0 (the true values round to these).
RK_HD float rk_expf(float x) {
  if (x != x) return x;
  if (x > 89.f) return rk_float_from_bits(0x7f800000u);
  if (x < -104.f) return 0.f;
  const float n = rintf(x * 0x1.715476p+0f);       // x / ln2, to nearest (ties to even)
  float r = fmaf(-n, 0x1.62e430p-1f, x);           // exact: ln2_hi = float(ln2)
  r = fmaf(-n, -0x1.05c610p-29f, r);               // ln2_lo = float(ln2 - ln2_hi)
  float p = 0x1.a01a02p-13f;                       // 1/7!
  p = fmaf(p, r, 0x1.6c16c2p-10f);                 // 1/6!
  p = fmaf(p, r, 0x1.111112p-7f);                  // 1/5!
  p = fmaf(p, r, 0x1.555556p-5f);                  // 1/4!
  p = fmaf(p, r, 0x1.555556p-3f);                  // 1/3!
  p = fmaf(p, r, 0x1.0p-1f);                       // 1/2!
  p = fmaf(p, r, 1.f);
  p = fmaf(p, r, 1.f);
  const int k = static_cast<int>(n);               // -150 <= k <= 128
  const int k1 = k / 2;
  return (p * rk_exp2i(k1)) * rk_exp2i(k - k1);
}

// exp in the precision of T: rk_expf for float (host = device bits); exp for double.
RK_HD float rk_exp(float x) { return rk_expf(x); }
RK_HD double rk_exp(double x) { return exp(x); }

// sigmoid(x) in float32: 1 / (1 + rk_expf(-x)).
RK_HD float sigmoidf_rk(float x) { return 1.f / (1.f + rk_expf(-x)); }

}  // namespace retinakit
