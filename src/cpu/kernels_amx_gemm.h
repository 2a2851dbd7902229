// gemm_bf16 (kernels.h) on AMX tiles: `tdpbf16ps` multiplies a 16 x 32 bf16 tile by a 32 x 16
// one (B in the same key-pair words as the other tables' gemm_bf16) into a 16 x 16 fp32 tile,
// 16 times the multiply-adds of one `vdpbf16ps zmm`. Written once over a tile unit `Tiles`, so
// the same loops run on the hardware (kernels_amx.cpp) and on an emulated tile unit
// (kernels_avx512_bf16.cpp) that the tests run on CPUs without AMX. Include only from a file
// compiled with the AVX-512 flags (the A packing transposes with AVX-512). Everything here has
// internal linkage (ODR hygiene as in kernels_avx2.cpp: the including files have different
// flags).
//
// Tiles provides: configure() (every tile 16 rows of 64 bytes), release(), load<t>(p, stride),
// store<t>(p, stride) (strides in bytes), zero<t>(), dp<c, a, b>() (c += a . b, tdpbf16ps).
//
// Schedule: C in blocks of 32 x 32, four accumulator tiles (0..3), two A tiles (4, 5) and two
// B tiles (6, 7) per 16-word step of the reduction. A is first copied, 32 rows at a time, into a
// zero-padded panel of whole 16-word rows (the tile rows must be contiguous; the forward's P and
// the backward's dS arrive transposed, keys x rows, and are transposed here 16 x 16 at a time).
// B tiles load in place when whole, else from a zero-padded copy; edge C tiles go through a
// padded copy too, so no tile reads or writes outside the operands.
//
// The tile configuration is loaded on every call and released at its end: other code on the
// same thread (a framework's own AMX kernels) may configure the tiles differently between our
// calls, and a released tile state costs the OS nothing to save on a context switch.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace flashattn::cpu {
namespace {
namespace amx {

constexpr int kRows = 16;      // rows of every tile
constexpr int kWords = 16;     // 32-bit words (bf16 pairs, or fp32) per tile row
constexpr int kPanelRows = 32; // A rows packed at a time (two A tiles)
constexpr int kMaxKw = 128;    // reduction words per A panel (d = 256); longer reductions loop

// dst[r][q] = src[r * rs + q * cs] for r < rows, q < kw (kw <= kMaxKw), zero elsewhere in the
// kPanelRows x kwp panel (kwp: kw rounded up to 16).
void pack_a(const uint32_t* src, int64_t rs, int64_t cs, int rows, int kw, int kwp,
                   uint32_t* dst) {
  std::memset(dst, 0, sizeof(uint32_t) * size_t(kPanelRows) * size_t(kwp));
  if (cs == 1) {
    for (int r = 0; r < rows; ++r)
      std::memcpy(dst + size_t(r) * kwp, src + r * rs, sizeof(uint32_t) * size_t(kw));
    return;
  }
  if (rs != 1) {
    for (int r = 0; r < rows; ++r)
      for (int q = 0; q < kw; ++q) dst[size_t(r) * kwp + q] = src[r * rs + q * cs];
    return;
  }
  // Transposed A (rows contiguous for each q): 16 x 16 word blocks through registers. Vector v[j]
  // holds rows r0..r0+15 of reduction index q0 + j; after the transpose, out[i] holds indices
  // q0..q0+15 of row r0 + i.
  for (int r0 = 0; r0 < rows; r0 += 16) {
    const __mmask16 rmask = rows - r0 >= 16 ? __mmask16(0xffff) : __mmask16((1u << (rows - r0)) - 1u);
    for (int q0 = 0; q0 < kw; q0 += 16) {
      __m512i v[16];
      for (int j = 0; j < 16; ++j)
        v[j] = q0 + j < kw ? _mm512_maskz_loadu_epi32(rmask, src + r0 + (q0 + j) * cs)
                           : _mm512_setzero_si512();
      __m512i t[16], u[16];
      for (int j = 0; j < 16; j += 2) {
        t[j] = _mm512_unpacklo_epi32(v[j], v[j + 1]);
        t[j + 1] = _mm512_unpackhi_epi32(v[j], v[j + 1]);
      }
      for (int j = 0; j < 16; j += 4) {
        u[j] = _mm512_unpacklo_epi64(t[j], t[j + 2]);
        u[j + 1] = _mm512_unpackhi_epi64(t[j], t[j + 2]);
        u[j + 2] = _mm512_unpacklo_epi64(t[j + 1], t[j + 3]);
        u[j + 3] = _mm512_unpackhi_epi64(t[j + 1], t[j + 3]);
      }
      // u[4g + k], 128-bit lane l: rows 4l + k of the four q indices 4g .. 4g + 3.
      for (int k = 0; k < 4; ++k) {
        const __m512i a = _mm512_shuffle_i32x4(u[k], u[4 + k], 0x88);
        const __m512i b = _mm512_shuffle_i32x4(u[k], u[4 + k], 0xdd);
        const __m512i c = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0x88);
        const __m512i d = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0xdd);
        const __m512i out[4] = {_mm512_shuffle_i32x4(a, c, 0x88), _mm512_shuffle_i32x4(b, d, 0x88),
                                _mm512_shuffle_i32x4(a, c, 0xdd), _mm512_shuffle_i32x4(b, d, 0xdd)};
        for (int l = 0; l < 4; ++l) {
          const int r = 4 * l + k;  // out[l] is row r0 + r
          if (r0 + r < rows) _mm512_storeu_si512(dst + size_t(r0 + r) * kwp + q0, out[l]);
        }
      }
    }
  }
}

template <class Tiles>
struct Gemm {
  const uint32_t* ap;  // packed A panel, kPanelRows x kwp
  int kwp;
  const uint32_t* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
  int m, n, kw;  // valid rows of this panel, columns, reduction words
  bool accumulate;

  // C tile t (rows i, columns j of the panel) into tile register T, from C or zero.
  template <int T>
  void load_c(int i, int j) const {
    if (!accumulate) {
      Tiles::template zero<T>();
      return;
    }
    if (i + kRows <= m && j + kWords <= n) {
      Tiles::template load<T>(c + i * ldc + j, ldc * 4);
      return;
    }
    alignas(64) float buf[kRows * kWords] = {};
    for (int r = 0; r < std::min(kRows, m - i); ++r)
      for (int x = 0; x < std::min(kWords, n - j); ++x) buf[r * kWords + x] = c[(i + r) * ldc + j + x];
    Tiles::template load<T>(buf, kWords * 4);
  }
  template <int T>
  void store_c(int i, int j) const {
    if (i + kRows <= m && j + kWords <= n) {
      Tiles::template store<T>(c + i * ldc + j, ldc * 4);
      return;
    }
    alignas(64) float buf[kRows * kWords];
    Tiles::template store<T>(buf, kWords * 4);
    for (int r = 0; r < std::min(kRows, m - i); ++r)
      for (int x = 0; x < std::min(kWords, n - j); ++x) c[(i + r) * ldc + j + x] = buf[r * kWords + x];
  }
  // B tile of words [q, q + 16) x columns [j, j + 16) into tile register T.
  template <int T>
  void load_b(int q, int j) const {
    if (q + kRows <= kw && j + kWords <= n) {
      Tiles::template load<T>(b + q * ldb + j, ldb * 4);
      return;
    }
    alignas(64) uint32_t buf[kRows * kWords] = {};
    for (int r = 0; r < std::min(kRows, kw - q); ++r)
      for (int x = 0; x < std::min(kWords, n - j); ++x) buf[r * kWords + x] = b[(q + r) * ldb + j + x];
    Tiles::template load<T>(buf, kWords * 4);
  }

  // The C block of rows [0, 16 MT) x columns [j, j + 16 NT) of this panel.
  template <int MT, int NT>
  void block(int j) const {
    load_c<0>(0, j);
    if constexpr (NT == 2) load_c<1>(0, j + kWords);
    if constexpr (MT == 2) load_c<2>(kRows, j);
    if constexpr (MT == 2 && NT == 2) load_c<3>(kRows, j + kWords);
    for (int q = 0; q < kw; q += kWords) {
      Tiles::template load<4>(ap + q, kwp * 4);
      if constexpr (MT == 2) Tiles::template load<5>(ap + kRows * kwp + q, kwp * 4);
      load_b<6>(q, j);
      if constexpr (NT == 2) load_b<7>(q, j + kWords);
      Tiles::template dp<0, 4, 6>();
      if constexpr (NT == 2) Tiles::template dp<1, 4, 7>();
      if constexpr (MT == 2) Tiles::template dp<2, 5, 6>();
      if constexpr (MT == 2 && NT == 2) Tiles::template dp<3, 5, 7>();
    }
    store_c<0>(0, j);
    if constexpr (NT == 2) store_c<1>(0, j + kWords);
    if constexpr (MT == 2) store_c<2>(kRows, j);
    if constexpr (MT == 2 && NT == 2) store_c<3>(kRows, j + kWords);
  }
  template <int MT>
  void row_panel() const {
    int j = 0;
    for (; j + kWords < n; j += 2 * kWords) block<MT, 2>(j);
    if (j < n) block<MT, 1>(j);
  }
};

// The Kernels::gemm_bf16 contract (kernels.h) on the tile unit.
template <class Tiles>
void gemm_bf16(int m, int n, int kw, const uint32_t* a, int64_t a_rs, int64_t a_cs,
               const uint32_t* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  if (kw <= 0) {
    if (!accumulate)
      for (int i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.f);
    return;
  }
  alignas(64) uint32_t panel[kPanelRows * kMaxKw];
  Tiles::configure();
  for (int i0 = 0; i0 < m; i0 += kPanelRows) {
    const int rows = std::min(kPanelRows, m - i0);
    // Reductions longer than kMaxKw words run as several passes, all but the first adding.
    for (int q0 = 0; q0 < kw; q0 += kMaxKw) {
      const int kc = std::min(kMaxKw, kw - q0);
      const int kwp = (kc + kWords - 1) / kWords * kWords;
      pack_a(a + i0 * a_rs + q0 * a_cs, a_rs, a_cs, rows, kc, kwp, panel);
      const Gemm<Tiles> g{panel, kwp, b + q0 * ldb, ldb, c + i0 * ldc, ldc, rows, n, kc,
                          accumulate || q0 > 0};
      if (rows > kRows)
        g.template row_panel<2>();
      else
        g.template row_panel<1>();
    }
  }
  Tiles::release();
}

}  // namespace amx
}  // namespace
}  // namespace flashattn::cpu
