// AVX-512 (F, BW, VL, DQ) + FMA micro-kernels of the CPU backend (semantics in kernels.h;
// kernels_portable.cpp is the plain C++ statement of the same contract). Compiled with
// -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma and only called after active_kernels() saw
// those on the running CPU. kernels_avx512_bf16.cpp adds the bf16 products to this table.
//
// ODR hygiene as in kernels_avx2.cpp: internal linkage only, no header with inline functions
// except kernels_avx512_exp.h, whose function is static.
//
// gemm schedule: C is cut into 12 x 32 register tiles (24 zmm accumulators + 2 zmm of B, of the
// 32 zmm registers). Per step p of the reduction a tile loads one 32-float row of B (2 loads)
// and issues 12 x 2 FMAs whose A element comes straight from memory as an embedded broadcast
// ({1to16}), so 14 loads feed 24 FMAs. 12 divides the block sizes (96 keys, 96 or 192 columns)
// and 32 divides the head dims 64 and 128 and the column blocks, so nearly every tile is full.
// Widths that are not a multiple of 32 finish with a 16-wide strip and one masked strip.
// Zen 4 runs a zmm FMA as two 256-bit halves, so the fp32 peak equals AVX2's; the gain is in
// fewer instructions per FMA (no separate broadcasts, 16 lanes per softmax step), and in the
// bf16 products of kernels_avx512_bf16.cpp.
#include <immintrin.h>

#include <cstdint>

#include "cpu/kernels.h"
#include "cpu/kernels_avx512_exp.h"

namespace flashattn::cpu {

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__FMA__)

namespace {

constexpr int kTileM = 12;  // rows of C per register tile
constexpr int kTileV = 2;   // zmm vectors of C per tile row (32 columns)

// Lanes [0, n) of a 16-lane mask (n may be negative or exceed 16).
__mmask16 lanes(int n) {
  return n <= 0 ? __mmask16(0) : n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u);
}

// One MR x (16 * NV) tile; the last vector's loads and stores use `last` (a full mask except in
// the final strip), so any width works.
template <int MR, int NV>
void gemm_tile(int k, const float* a, int64_t a_rs, int64_t a_cs, const float* b, int64_t ldb,
               float* c, int64_t ldc, bool accumulate, __mmask16 last) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int p = 0; p < k; ++p) {
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      bv[v] = v + 1 < NV ? _mm512_loadu_ps(b + 16 * v) : _mm512_maskz_loadu_ps(last, b + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r * a_rs]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
    }
    a += a_cs;
    b += ldb;
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* cp = c + r * ldc + 16 * v;
      const __mmask16 mk = v + 1 < NV ? __mmask16(0xffff) : last;
      const __m512 out =
          accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(mk, cp), acc[r][v]) : acc[r][v];
      _mm512_mask_storeu_ps(cp, mk, out);
    }
}

template <int NV>
void gemm_strip(int m, int k, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                int64_t ldb, float* c, int64_t ldc, bool accumulate, __mmask16 last) {
  int i = 0;
  for (; i + kTileM <= m; i += kTileM)
    gemm_tile<kTileM, NV>(k, a + i * a_rs, a_rs, a_cs, b, ldb, c + i * ldc, ldc, accumulate, last);
  const float* ai = a + i * a_rs;
  float* ci = c + i * ldc;
  switch (m - i) {
#define FA_TAIL(R) \
  case R: gemm_tile<R, NV>(k, ai, a_rs, a_cs, b, ldb, ci, ldc, accumulate, last); break;
    FA_TAIL(11) FA_TAIL(10) FA_TAIL(9) FA_TAIL(8) FA_TAIL(7) FA_TAIL(6)
    FA_TAIL(5) FA_TAIL(4) FA_TAIL(3) FA_TAIL(2) FA_TAIL(1)
#undef FA_TAIL
    default: break;
  }
}

void gemm(int m, int n, int k, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
          int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  int j = 0;
  for (; j + 16 * kTileV <= n; j += 16 * kTileV)
    gemm_strip<kTileV>(m, k, a, a_rs, a_cs, b + j, ldb, c + j, ldc, accumulate, lanes(16));
  if (n - j > 16) {
    gemm_strip<2>(m, k, a, a_rs, a_cs, b + j, ldb, c + j, ldc, accumulate, lanes(n - j - 16));
  } else if (j < n) {
    gemm_strip<1>(m, k, a, a_rs, a_cs, b + j, ldb, c + j, ldc, accumulate, lanes(n - j));
  }
}

void col_scale_max(float* s, int64_t lds, int rows, int cols, float scale, float* col_max) {
  const __m512 sc = _mm512_set1_ps(scale);
  for (int c = 0; c < cols; c += 16) {
    const __mmask16 mk = lanes(cols - c);
    __m512 mx = _mm512_maskz_loadu_ps(mk, col_max + c);
    for (int r = 0; r < rows; ++r) {
      float* p = s + r * lds + c;
      const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, p), sc);
      _mm512_mask_storeu_ps(p, mk, v);
      mx = _mm512_max_ps(mx, v);
    }
    _mm512_mask_storeu_ps(col_max + c, mk, mx);
  }
}

void col_exp_sum(float* s, int64_t lds, int rows, int cols, const float* col_ref,
                 float* col_sum) {
  for (int c = 0; c < cols; c += 16) {
    const __mmask16 mk = lanes(cols - c);
    const __m512 ref = _mm512_maskz_loadu_ps(mk, col_ref + c);
    // Two partial sums: the adds of consecutive rows do not wait on each other.
    __m512 sum0 = _mm512_maskz_loadu_ps(mk, col_sum + c), sum1 = _mm512_setzero_ps();
    int r = 0;
    for (; r + 2 <= rows; r += 2) {
      float* p0 = s + r * lds + c;
      float* p1 = p0 + lds;
      const __m512 e0 = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, p0), ref));
      const __m512 e1 = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, p1), ref));
      _mm512_mask_storeu_ps(p0, mk, e0);
      _mm512_mask_storeu_ps(p1, mk, e1);
      sum0 = _mm512_add_ps(sum0, e0);
      sum1 = _mm512_add_ps(sum1, e1);
    }
    if (r < rows) {
      float* p0 = s + r * lds + c;
      const __m512 e0 = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, p0), ref));
      _mm512_mask_storeu_ps(p0, mk, e0);
      sum0 = _mm512_add_ps(sum0, e0);
    }
    _mm512_mask_storeu_ps(col_sum + c, mk, _mm512_add_ps(sum0, sum1));
  }
}

void load_row(const void* src, DType t, int n, float* dst) {
  if (t == DType::kFloat32) {
    const float* s = static_cast<const float*>(src);
    for (int i = 0; i < n; i += 16) {
      const __mmask16 mk = lanes(n - i);
      _mm512_mask_storeu_ps(dst + i, mk, _mm512_maskz_loadu_ps(mk, s + i));
    }
    return;
  }
  const uint16_t* s16 = static_cast<const uint16_t*>(src);
  const bool is_fp16 = t == DType::kFloat16;
  for (int i = 0; i < n; i += 16) {
    // Masked lanes are not read, so the tail never touches memory past the caller's row.
    const __mmask16 mk = lanes(n - i);
    const __m256i h = _mm256_maskz_loadu_epi16(mk, s16 + i);
    // bf16 is the top half of an fp32: widen and shift.
    const __m512 f = is_fp16 ? _mm512_cvtph_ps(h)
                             : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    _mm512_mask_storeu_ps(dst + i, mk, f);
  }
}

// Nearest-even fp32 -> bf16 bits in each 32-bit lane, as float_to_bf16 (common/numeric.h): NaN
// becomes its top half with the quiet bit set. (vcvtneps2bf16 would flush subnormals.)
__m512i bf16_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                        _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_or_epi32(rounded, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
}

void store_row(const float* src, DType t, int n, void* dst) {
  uint16_t* d16 = static_cast<uint16_t*>(dst);
  for (int i = 0; i < n; i += 16) {
    const __mmask16 mk = lanes(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(mk, src + i);
    if (t == DType::kFloat32) {
      _mm512_mask_storeu_ps(static_cast<float*>(dst) + i, mk, v);
    } else if (t == DType::kFloat16) {
      // IEEE conversion (subnormals, overflow to inf); NaN lanes as float_to_fp16: sign | 0x7e00.
      __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      const __m256i canon = _mm256_or_si256(_mm256_and_si256(h, _mm256_set1_epi16(int16_t(0x8000))),
                                            _mm256_set1_epi16(0x7e00));
      h = _mm256_mask_mov_epi16(h, nan, canon);
      _mm256_mask_storeu_epi16(d16 + i, mk, h);
    } else {
      _mm256_mask_storeu_epi16(d16 + i, mk, _mm512_cvtepi32_epi16(bf16_bits(v)));
    }
  }
}

void scale_row(float* x, int n, float a) {
  const __m512 av = _mm512_set1_ps(a);
  for (int i = 0; i < n; i += 16) {
    const __mmask16 mk = lanes(n - i);
    _mm512_mask_storeu_ps(x + i, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, x + i), av));
  }
}

// 96 x 96 as for AVX2 (backend_common.h): the 12 x 32 tiles divide it, and one item's working
// set stays in a Zen 4 core's 1 MiB L2 with room to spare.
const Kernels kAvx512 = {"avx512",   96,        96,        gemm,    col_scale_max, col_exp_sum,
                         load_row,   store_row, scale_row, nullptr, nullptr,       nullptr,
                         nullptr};

}  // namespace

const Kernels* avx512_kernels() { return &kAvx512; }

#else

const Kernels* avx512_kernels() { return nullptr; }

#endif

}  // namespace flashattn::cpu
