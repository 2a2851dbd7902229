// AVX2 + FMA micro-kernels of the CPU backend (semantics in kernels.h; kernels_portable.cpp is
// the plain C++ statement of the same contract). Compiled with -mavx2 -mfma -mf16c and only
// called after active_kernels() saw AVX2 and FMA on the running CPU.
//
// ODR hygiene: everything here has internal linkage and nothing from a header with inline
// functions (std templates, common/*.h) is used, so no AVX2-compiled copy of a shared inline
// function can leak to callers on a CPU without AVX2.
//
// gemm schedule: C is cut into 6 x 16 register tiles (12 ymm accumulators + 2 ymm of B + 1
// broadcast = 15 of the 16 ymm registers). Per step p of the reduction a tile loads one
// 16-float row of B (2 loads), broadcasts 6 elements of A and issues 12 FMAs: 8 loads per
// 12 FMAs keeps Zen 3's two FMA pipes fed from its three load ports. Column strips of B
// (k x 16 floats, 8 KiB at k = 128) are the outer loop so a strip stays in L1 while every row
// tile of A streams past it.
#include <immintrin.h>

#include <cstdint>

#include "cpu/kernels.h"

namespace flashattn::cpu {

#if defined(__AVX2__) && defined(__FMA__)

namespace {

constexpr int kTileM = 6;   // rows of C per register tile
constexpr int kTileN = 16;  // columns of C per register tile (two ymm)

// The unroll pragmas matter: without them GCC 12 keeps acc[][] in memory and stores all 12
// accumulators every step, which caps the tile at ~40% of the FMA rate.
template <int MR, int NV>
void gemm_tile(int k, const float* a, int64_t a_rs, int64_t a_cs, const float* b, int64_t ldb,
               float* c, int64_t ldc, bool accumulate) {
  __m256 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int p = 0; p < k; ++p) {
    __m256 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_loadu_ps(b + 8 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 ar = _mm256_broadcast_ss(a + r * a_rs);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(ar, bv[v], acc[r][v]);
    }
    a += a_cs;
    b += ldb;
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      float* cp = c + r * ldc + 8 * v;
      const __m256 out = accumulate ? _mm256_add_ps(_mm256_loadu_ps(cp), acc[r][v]) : acc[r][v];
      _mm256_storeu_ps(cp, out);
    }
}

template <int NV>
void gemm_strip(int m, int k, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  int i = 0;
  for (; i + kTileM <= m; i += kTileM)
    gemm_tile<kTileM, NV>(k, a + i * a_rs, a_rs, a_cs, b, ldb, c + i * ldc, ldc, accumulate);
  const float* ai = a + i * a_rs;
  float* ci = c + i * ldc;
  switch (m - i) {
    case 5: gemm_tile<5, NV>(k, ai, a_rs, a_cs, b, ldb, ci, ldc, accumulate); break;
    case 4: gemm_tile<4, NV>(k, ai, a_rs, a_cs, b, ldb, ci, ldc, accumulate); break;
    case 3: gemm_tile<3, NV>(k, ai, a_rs, a_cs, b, ldb, ci, ldc, accumulate); break;
    case 2: gemm_tile<2, NV>(k, ai, a_rs, a_cs, b, ldb, ci, ldc, accumulate); break;
    case 1: gemm_tile<1, NV>(k, ai, a_rs, a_cs, b, ldb, ci, ldc, accumulate); break;
    default: break;
  }
}

void gemm(int m, int n, int k, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
          int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  int j = 0;
  for (; j + kTileN <= n; j += kTileN)
    gemm_strip<2>(m, k, a, a_rs, a_cs, b + j, ldb, c + j, ldc, accumulate);
  if (j < n) gemm_strip<1>(m, k, a, a_rs, a_cs, b + j, ldb, c + j, ldc, accumulate);
}

// Lanes [0, n) of a mask, for the column tails (n < 8).
__m256i tail_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// exp(x) for 8 lanes: x = n ln2 + r with |r| <= ln2/2, exp(r) by the Cephes degree-7 polynomial
// (about 1 ulp), 2^n by adding n to the exponent field. Inputs below log(FLT_MIN) give exactly
// 0, so masked (-inf) scores contribute nothing; NaN propagates.
__m256 exp256(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f);
  const __m256 lo = _mm256_set1_ps(-87.3365447504019f);
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(hi, x);  // operand order keeps a NaN x
  x = _mm256_max_ps(lo, x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n ln2 with ln2 split in two so n * ln2_hi is exact.
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
  const __m256 y = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
  return _mm256_andnot_ps(underflow, y);
}

void col_scale_max(float* s, int64_t lds, int rows, int cols, float scale, float* col_max) {
  const __m256 sc = _mm256_set1_ps(scale);
  int c = 0;
  for (; c + 8 <= cols; c += 8) {
    __m256 mx = _mm256_loadu_ps(col_max + c);
    for (int r = 0; r < rows; ++r) {
      float* p = s + r * lds + c;
      const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(p), sc);
      _mm256_storeu_ps(p, v);
      mx = _mm256_max_ps(mx, v);
    }
    _mm256_storeu_ps(col_max + c, mx);
  }
  if (c < cols) {
    const __m256i mask = tail_mask(cols - c);
    __m256 mx = _mm256_maskload_ps(col_max + c, mask);
    for (int r = 0; r < rows; ++r) {
      float* p = s + r * lds + c;
      const __m256 v = _mm256_mul_ps(_mm256_maskload_ps(p, mask), sc);
      _mm256_maskstore_ps(p, mask, v);
      mx = _mm256_max_ps(mx, v);
    }
    _mm256_maskstore_ps(col_max + c, mask, mx);
  }
}

void col_exp_sum(float* s, int64_t lds, int rows, int cols, const float* col_ref,
                 float* col_sum) {
  int c = 0;
  for (; c + 8 <= cols; c += 8) {
    const __m256 ref = _mm256_loadu_ps(col_ref + c);
    __m256 sum = _mm256_loadu_ps(col_sum + c);
    for (int r = 0; r < rows; ++r) {
      float* p = s + r * lds + c;
      const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p), ref));
      _mm256_storeu_ps(p, e);
      sum = _mm256_add_ps(sum, e);
    }
    _mm256_storeu_ps(col_sum + c, sum);
  }
  if (c < cols) {
    const __m256i mask = tail_mask(cols - c);
    const __m256 ref = _mm256_maskload_ps(col_ref + c, mask);
    __m256 sum = _mm256_maskload_ps(col_sum + c, mask);
    for (int r = 0; r < rows; ++r) {
      float* p = s + r * lds + c;
      const __m256 e = exp256(_mm256_sub_ps(_mm256_maskload_ps(p, mask), ref));
      _mm256_maskstore_ps(p, mask, e);
      sum = _mm256_add_ps(sum, e);
    }
    _mm256_maskstore_ps(col_sum + c, mask, sum);
  }
}

__m256 load8_16bit(const uint16_t* src, bool is_fp16) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
  if (is_fp16) return _mm256_cvtph_ps(h);
  // bf16 is the top half of an fp32: widen and shift.
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

void load_row(const void* src, DType t, int n, float* dst) {
  if (t == DType::kFloat32) {
    __builtin_memcpy(dst, src, sizeof(float) * static_cast<unsigned long>(n));
    return;
  }
  const bool is_fp16 = t == DType::kFloat16;
  const uint16_t* s16 = static_cast<const uint16_t*>(src);
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8_16bit(s16 + i, is_fp16));
  if (i < n) {
    // Tail through a zero-padded copy: never reads past the caller's row.
    uint16_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int x = i; x < n; ++x) tmp[x - i] = s16[x];
    _mm256_maskstore_ps(dst + i, tail_mask(n - i), load8_16bit(tmp, is_fp16));
  }
}

// Nearest-even fp32 -> bf16 of 8 lanes in the low 16 bits of each 32-bit lane, as float_to_bf16
// (common/numeric.h): NaN becomes its top half with the quiet bit set.
__m256i bf16_bits(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                        _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1)));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                         _mm256_set1_epi32(0x7f800000));
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  return _mm256_blendv_epi8(rounded, quiet, nan);
}

// Nearest-even fp32 -> fp16 of 8 lanes (F16C; subnormals and overflow to inf as IEEE), NaN as
// float_to_fp16 gives it: sign | 0x7e00.
__m128i fp16_bits(__m256 v) {
  const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  if (_mm256_movemask_ps(nan) == 0) return h;
  alignas(16) uint16_t out[8];
  _mm_store_si128(reinterpret_cast<__m128i*>(out), h);
  const int m = _mm256_movemask_ps(nan);
  for (int i = 0; i < 8; ++i)
    if (m & (1 << i)) out[i] = uint16_t((out[i] & 0x8000u) | 0x7e00u);
  return _mm_load_si128(reinterpret_cast<const __m128i*>(out));
}

void store_row(const float* src, DType t, int n, void* dst) {
  if (t == DType::kFloat32) {
    __builtin_memcpy(dst, src, sizeof(float) * static_cast<unsigned long>(n));
    return;
  }
  uint16_t* d16 = static_cast<uint16_t*>(dst);
  const bool is_fp16 = t == DType::kFloat16;
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(src + i);
    __m128i h;
    if (is_fp16) {
      h = fp16_bits(v);
    } else {
      const __m256i b = bf16_bits(v);
      // Narrow 8 x 32-bit (values < 2^16) to 8 x 16-bit: packus works per 128-bit half.
      h = _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d16 + i), h);
  }
  if (i < n) {
    // Tail through a zero-padded copy: never writes past the caller's row.
    alignas(32) float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    alignas(16) uint16_t out[8];
    for (int x = i; x < n; ++x) tmp[x - i] = src[x];
    const __m256 v = _mm256_load_ps(tmp);
    if (is_fp16) {
      _mm_store_si128(reinterpret_cast<__m128i*>(out), fp16_bits(v));
    } else {
      const __m256i b = bf16_bits(v);
      _mm_store_si128(reinterpret_cast<__m128i*>(out),
                      _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
    }
    for (int x = i; x < n; ++x) d16[x] = out[x - i];
  }
}

void scale_row(float* x, int n, float a) {
  const __m256 av = _mm256_set1_ps(a);
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), av));
  for (; i < n; ++i) x[i] *= a;
}

// 96 x 96: the measurement is in backend_common.h.
const Kernels kAvx2 = {"avx2",   96,        96,        gemm,    col_scale_max, col_exp_sum,
                       load_row, store_row, scale_row, nullptr, nullptr,       nullptr,
                       nullptr};

}  // namespace

const Kernels* avx2_kernels() { return &kAvx2; }

#else

const Kernels* avx2_kernels() { return nullptr; }

#endif

}  // namespace flashattn::cpu
