// The AVX-512 table plus bf16 products through AVX-512 BF16 (`vdpbf16ps`: per fp32 lane, two
// bf16 products added to the accumulator). Compiled with the AVX-512 flags and -mavx512bf16,
// only called after active_kernels() saw avx512_bf16 on the running CPU. ODR hygiene as in
// kernels_avx512.cpp.
//
// gemm_bf16 has the fp32 gemm's schedule (kernels_avx512.cpp): 12 x 32 register tiles, 24 zmm
// accumulators, one 32-column row of B words per step (2 loads) and the A word of each row
// broadcast from memory (a load, no shuffle). Each instruction does 32 multiply-adds instead of 16, so a step of the
// reduction covers two of the fp32 gemm's: on Zen 4 `vdpbf16ps zmm` issues at the rate of a zmm
// FMA, twice the fp32 peak.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/kernels.h"
#include "cpu/kernels_avx512_exp.h"

namespace flashattn::cpu {

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__AVX512BF16__) && defined(__FMA__)

namespace {

constexpr int kTileM = 12;

__mmask16 lanes(int n) {
  return n <= 0 ? __mmask16(0) : n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u);
}

template <int MR, int NV>
void gemm_tile(int kw, const uint32_t* a, int64_t a_rs, int64_t a_cs, const uint32_t* b,
               int64_t ldb, float* c, int64_t ldc, bool accumulate, __mmask16 last) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int q = 0; q < kw; ++q) {
    __m512bh bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      bv[v] = (__m512bh)(v + 1 < NV ? _mm512_loadu_si512(b + 16 * v)
                                    : _mm512_maskz_loadu_epi32(last, b + 16 * v));
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512bh ar = (__m512bh)_mm512_set1_epi32(int(a[r * a_rs]));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], ar, bv[v]);
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
void gemm_strip(int m, int kw, const uint32_t* a, int64_t a_rs, int64_t a_cs, const uint32_t* b,
                int64_t ldb, float* c, int64_t ldc, bool accumulate, __mmask16 last) {
  int i = 0;
  for (; i + kTileM <= m; i += kTileM)
    gemm_tile<kTileM, NV>(kw, a + i * a_rs, a_rs, a_cs, b, ldb, c + i * ldc, ldc, accumulate,
                          last);
  const uint32_t* ai = a + i * a_rs;
  float* ci = c + i * ldc;
  switch (m - i) {
#define FA_TAIL(R) \
  case R: gemm_tile<R, NV>(kw, ai, a_rs, a_cs, b, ldb, ci, ldc, accumulate, last); break;
    FA_TAIL(11) FA_TAIL(10) FA_TAIL(9) FA_TAIL(8) FA_TAIL(7) FA_TAIL(6)
    FA_TAIL(5) FA_TAIL(4) FA_TAIL(3) FA_TAIL(2) FA_TAIL(1)
#undef FA_TAIL
    default: break;
  }
}

void gemm_bf16(int m, int n, int kw, const uint32_t* a, int64_t a_rs, int64_t a_cs,
               const uint32_t* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  int j = 0;
  for (; j + 32 <= n; j += 32)
    gemm_strip<2>(m, kw, a, a_rs, a_cs, b + j, ldb, c + j, ldc, accumulate, lanes(16));
  if (n - j > 16) {
    gemm_strip<2>(m, kw, a, a_rs, a_cs, b + j, ldb, c + j, ldc, accumulate, lanes(n - j - 16));
  } else if (j < n) {
    gemm_strip<1>(m, kw, a, a_rs, a_cs, b + j, ldb, c + j, ldc, accumulate, lanes(n - j));
  }
}

// vcvtne2ps2bf16 puts the 16 values of its second operand in the low half and the first's in the
// high half; this permutation interleaves the halves into (row 2q, row 2q + 1) words.
alignas(64) const uint16_t kPairOrder[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                             21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                             11, 27, 12, 28, 13, 29, 14, 30, 15, 31};

void pack_pairs(const float* src, int64_t lds, int rows, int cols, uint32_t* dst, int64_t ldd) {
  const __m512i idx = _mm512_load_si512(kPairOrder);
  for (int q = 0; 2 * q < rows; ++q) {
    const float* s0 = src + int64_t(2 * q) * lds;
    const float* s1 = s0 + lds;
    const bool has1 = 2 * q + 1 < rows;
    uint32_t* d = dst + int64_t(q) * ldd;
    for (int c = 0; c < cols; c += 16) {
      const __mmask16 mk = lanes(cols - c);
      const __m512 x0 = _mm512_maskz_loadu_ps(mk, s0 + c);
      const __m512 x1 = has1 ? _mm512_maskz_loadu_ps(mk, s1 + c) : _mm512_setzero_ps();
      const __m512i t = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);
      _mm512_mask_storeu_epi32(d + c, mk, _mm512_permutexvar_epi16(idx, t));
    }
  }
}

void col_exp_sum_pairs(const float* s, int64_t lds, int rows, int cols, const float* col_ref,
                       float* col_sum, uint32_t* dst, int64_t ldd) {
  const __m512i idx = _mm512_load_si512(kPairOrder);
  for (int c = 0; c < cols; c += 16) {
    const __mmask16 mk = lanes(cols - c);
    const __m512 ref = _mm512_maskz_loadu_ps(mk, col_ref + c);
    __m512 sum0 = _mm512_maskz_loadu_ps(mk, col_sum + c), sum1 = _mm512_setzero_ps();
    for (int r = 0; r < rows; r += 2) {
      const float* p0 = s + r * lds + c;
      const __m512 e0 = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, p0), ref));
      // The row past an odd count pairs as 0 (exp of nothing, not of a stale row).
      const __m512 e1 = r + 1 < rows
                            ? exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, p0 + lds), ref))
                            : _mm512_setzero_ps();
      sum0 = _mm512_add_ps(sum0, e0);
      sum1 = _mm512_add_ps(sum1, e1);
      const __m512i t = (__m512i)_mm512_cvtne2ps_pbh(e1, e0);
      _mm512_mask_storeu_epi32(dst + int64_t(r / 2) * ldd + c, mk, _mm512_permutexvar_epi16(idx, t));
    }
    _mm512_mask_storeu_ps(col_sum + c, mk, _mm512_add_ps(sum0, sum1));
  }
}

void pack_rows(const float* src, int64_t lds, int rows, int cols, uint32_t* dst, int64_t ldd) {
  // vcvtne2ps2bf16 of (columns c + 16.., columns c..) is already the row's bf16 order.
  for (int r = 0; r < rows; ++r) {
    const float* s = src + int64_t(r) * lds;
    uint32_t* d = dst + int64_t(r) * ldd;
    for (int c = 0; c < cols; c += 32) {
      const __m512 lo = _mm512_maskz_loadu_ps(lanes(cols - c), s + c);
      const __m512 hi = _mm512_maskz_loadu_ps(lanes(cols - c - 16), s + c + 16);
      _mm512_mask_storeu_epi32(d + c / 2, lanes((cols - c + 1) / 2),
                               (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

}  // namespace

}  // namespace flashattn::cpu

#include "cpu/kernels_amx_gemm.h"

namespace flashattn::cpu {

namespace {

// A software tile unit for kernels_amx_gemm.h, so the AMX table's loops (packing, edges, the
// 2 x 2 block schedule) are tested on CPUs without AMX: eight 16 x 16 tiles of 32-bit cells per
// thread, and tdpbf16ps as the ISA reference states it (per word, the odd bf16 product and then
// the even one added to the fp32 cell; bf16 subnormals as zero). Slow; for tests only.
struct EmulatedTiles {
  struct State {
    uint32_t t[8][16][16];
  };
  static State& state() {
    static thread_local State s;
    return s;
  }
  static void configure() {}
  static void release() {}
  template <int T>
  static void load(const void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r)
      std::memcpy(state().t[T][r], static_cast<const char*>(p) + r * stride, 64);
  }
  template <int T>
  static void store(void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(static_cast<char*>(p) + r * stride, state().t[T][r], 64);
  }
  template <int T>
  static void zero() {
    std::memset(state().t[T], 0, sizeof(state().t[T]));
  }
  static float bf16(uint32_t half) {
    const uint32_t bits = (half & 0x7f80u) == 0 ? (half & 0x8000u) << 16 : half << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  template <int C, int A, int B>
  static void dp() {
    State& s = state();
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        float acc;
        std::memcpy(&acc, &s.t[C][m][n], 4);
        for (int q = 0; q < 16; ++q) {
          const uint32_t a = s.t[A][m][q], b = s.t[B][q][n];
          acc += bf16(a >> 16) * bf16(b >> 16);
          acc += bf16(a & 0xffffu) * bf16(b & 0xffffu);
        }
        std::memcpy(&s.t[C][m][n], &acc, 4);
      }
  }
};

void gemm_bf16_emulated(int m, int n, int kw, const uint32_t* a, int64_t a_rs, int64_t a_cs,
                        const uint32_t* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  amx::gemm_bf16<EmulatedTiles>(m, n, kw, a, a_rs, a_cs, b, ldb, c, ldc, accumulate);
}

}  // namespace

const Kernels* amx_emulated_kernels() {
  const Kernels* base = avx512_bf16_kernels();
  if (base == nullptr) return nullptr;
  static const Kernels table = [base] {
    Kernels t = *base;
    t.name = "amx-emulated";
    t.gemm_bf16 = gemm_bf16_emulated;
    return t;
  }();
  return &table;
}

const Kernels* avx512_bf16_kernels() {
  const Kernels* base = avx512_kernels();
  if (base == nullptr) return nullptr;
  static const Kernels table = [base] {
    Kernels t = *base;
    t.name = "avx512-bf16";
    t.gemm_bf16 = gemm_bf16;
    t.pack_pairs = pack_pairs;
    t.pack_rows = pack_rows;
    t.col_exp_sum_pairs = col_exp_sum_pairs;
    return t;
  }();
  return &table;
}

#else

const Kernels* avx512_bf16_kernels() { return nullptr; }
const Kernels* amx_emulated_kernels() { return nullptr; }

#endif

}  // namespace flashattn::cpu
