// exp for the AVX-512 kernel files (kernels_avx512.cpp, kernels_avx512_bf16.cpp), which are the
// only includers: both are compiled with the AVX-512 flags. The function is static (internal
// linkage), so each file has its own copy and no AVX-512 code can be picked by the linker for a
// caller compiled without those flags (kernels.h explains the concern).
#pragma once

#include <immintrin.h>

namespace flashattn::cpu {

// exp(x) for 16 lanes, the same method and constants as exp256 in kernels_avx2.cpp: x = n ln2 + r
// with |r| <= ln2/2, exp(r) by the Cephes degree-7 polynomial (about 1 ulp), and 2^n applied by
// vscalefps, which also zeroes (through its mask) the lanes below log(FLT_MIN): masked (-inf)
// scores contribute exactly 0; NaN propagates.
static inline __m512 exp512(__m512 x) {
  const __m512 hi = _mm512_set1_ps(88.3762626647949f);
  const __m512 lo = _mm512_set1_ps(-87.3365447504019f);
  const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ);  // not below: a NaN is kept
  x = _mm512_min_ps(hi, x);  // operand order keeps a NaN x
  x = _mm512_max_ps(lo, x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n ln2 with ln2 split in two so n * ln2_hi is exact.
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_maskz_scalef_ps(keep, p, n);
}

}  // namespace flashattn::cpu
