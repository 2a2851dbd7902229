// The float8 e4m3 format of FP8 attention ("e4m3fn", torch.float8_e4m3fn, CUDA's __NV_E4M3):
// 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits, no infinities, one NaN pattern per sign
// (S.1111.111). Finite values: normals (1 + m/8) * 2^(e-7) for e = 1..15 (except the NaN code),
// up to 0x7e = 448; subnormals m * 2^-9 for e = 0.
//
// Written out in integer arithmetic so the CPU reference, the CPU backend and the kernels share
// one definition (a kernel converting with cvt.rn.satfinite.e4m3x2.f32 gets the same bits as the
// saturating form here).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace flashattn {

// Largest finite e4m3 value (code 0x7e): what the saturating conversion clamps to.
constexpr float kE4M3Max = 448.f;
// The positive NaN code; the negative one is 0xff.
constexpr uint8_t kE4M3NaN = 0x7f;
// FP8 attention quantizes the probabilities as kFp8PScale * exp(s - m) (m: the row maximum), in
// (0, 256] instead of (0, 1]: the values use e4m3's normal range (2^-6 .. 448) instead of
// falling into its subnormals and to zero below 2^-10, and the factor is a power of two, exact to
// fold back into the row sum. FlashAttention-3's Max_offset = 8 (log2 of it). docs/fp8.md.
constexpr float kFp8PScale = 256.f;

FA_HD bool e4m3_is_nan(uint8_t c) { return (c & 0x7f) == 0x7f; }

// Exact: every e4m3 value is a float.
FA_HD float e4m3_to_float(uint8_t c) {
  const uint32_t sign = uint32_t(c & 0x80) << 24;
  const uint32_t e = (c >> 3) & 0xfu, m = c & 0x7u;
  if (e == 0xfu && m == 0x7u) return bit_cast_hd<float>(sign | 0x7fc00000u);  // NaN
  if (e == 0) {
    // Subnormal m * 2^-9; 0 keeps its sign.
    const float v = float(m) * 0.001953125f;
    return sign ? -v : v;
  }
  // Normal: rebias the exponent 7 -> 127 and place the 3 mantissa bits at the top of fp32's 23.
  return bit_cast_hd<float>(sign | ((e + 120u) << 23) | (m << 20));
}

// fp32 -> e4m3, round to nearest, ties to even. NaN gives NaN (sign kept). A magnitude that
// rounds past 448 (anything above 464, the midpoint between 448 and the 480 that the NaN code
// would be, and infinity) gives +-448 with `saturate` (CUDA's satfinite, what the kernels use) or
// NaN without (torch's `.to(torch.float8_e4m3fn)`). 464 itself is a tie and rounds to the even
// 448.
FA_HD uint8_t float_to_e4m3(float f, bool saturate = true) {
  const uint32_t u = bit_cast_hd<uint32_t>(f);
  const uint8_t sign = uint8_t((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint8_t(sign | kE4M3NaN);
  if (a > 0x43e80000u) return uint8_t(sign | (saturate ? 0x7eu : kE4M3NaN));  // > 464
  if (a >= 0x3c800000u) {
    // Normal (>= 2^-6): round the 20 dropped mantissa bits to nearest even (a carry into the
    // exponent is the correct next binade), then rebias 127 -> 7.
    const uint32_t r = a + 0x7ffffu + ((a >> 20) & 1u);
    return uint8_t(sign | ((r - (120u << 23)) >> 20));
  }
  // Below 2^-6: count in units of the subnormal step 2^-9 (an exact power-of-two scaling) and
  // round to the nearest even integer; 8 units is the smallest normal, code 0x08, as it should be.
  const float units = rintf(bit_cast_hd<float>(a) * 512.f);
  return uint8_t(sign | uint8_t(units));
}

// Round a float to the nearest e4m3 value (saturating), as a float.
FA_HD float round_to_e4m3(float f) { return e4m3_to_float(float_to_e4m3(f)); }

}  // namespace flashattn
