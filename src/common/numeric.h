// Scalar conversions between fp32 and the 16-bit storage types, round-to-nearest-even, written
// out so the CPU backend and reference need no compiler extension. (Device code uses the CUDA
// intrinsics; these give bit-identical results.) The 8-bit e4m3 type is in common/fp8.h; the
// dtype-generic load/store below know it too (stores saturate to +-448).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/fp8.h"
#include "common/host_device.h"
#include "flashattn/params.h"

namespace flashattn {

FA_HD float bf16_to_float(uint16_t h) { return bit_cast_hd<float>(uint32_t(h) << 16); }

FA_HD uint16_t float_to_bf16(float f) {
  uint32_t u = bit_cast_hd<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                        // nearest even
  return uint16_t(u >> 16);
}

FA_HD float fp16_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1fu) {
    u = sign | 0x7f800000u | (mant << 13);  // inf / NaN
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (mant << 13);  // normal: rebias 15 -> 127
  } else if (mant == 0) {
    u = sign;  // +-0
  } else {     // subnormal: value = mant * 2^-24
    float v = float(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bit_cast_hd<float>(u);
}

FA_HD uint16_t float_to_fp16(float f) {
  uint32_t u = bit_cast_hd<uint32_t>(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u); // >= 65520 rounds to inf
  if (a < 0x38800000u) {                                 // below 2^-14: subnormal or zero
    // Scale so the fp16 subnormal unit (2^-24) becomes 1, then round to nearest even.
    float v = bit_cast_hd<float>(a) * 16777216.0f;
    float r = rintf(v);  // current rounding mode: nearest even
    return uint16_t(sign | uint16_t(r));
  }
  // Normal: rebias exponent and round the 13 dropped mantissa bits to nearest even.
  uint32_t m = a + 0xc8000fffu + ((a >> 13) & 1u);  // -112 << 23, plus rounding bias
  return uint16_t(sign | uint16_t(m >> 13));
}

// Load element idx of a buffer of the given dtype as float.
FA_HD float load_as_float(const void* p, DType t, int64_t idx) {
  switch (t) {
    case DType::kFloat32: return static_cast<const float*>(p)[idx];
    case DType::kFloat16: return fp16_to_float(static_cast<const uint16_t*>(p)[idx]);
    case DType::kFloat8E4M3: return e4m3_to_float(static_cast<const uint8_t*>(p)[idx]);
    default: return bf16_to_float(static_cast<const uint16_t*>(p)[idx]);
  }
}

// Store a float into element idx of a buffer of the given dtype (rounding to nearest even).
FA_HD void store_from_float(void* p, DType t, int64_t idx, float v) {
  switch (t) {
    case DType::kFloat32: static_cast<float*>(p)[idx] = v; break;
    case DType::kFloat16: static_cast<uint16_t*>(p)[idx] = float_to_fp16(v); break;
    case DType::kFloat8E4M3: static_cast<uint8_t*>(p)[idx] = float_to_e4m3(v); break;
    default: static_cast<uint16_t*>(p)[idx] = float_to_bf16(v); break;
  }
}

// Round a float to the nearest value representable in dtype t (identity for fp32).
FA_HD float round_to_dtype(float v, DType t) {
  switch (t) {
    case DType::kFloat32: return v;
    case DType::kFloat16: return fp16_to_float(float_to_fp16(v));
    case DType::kFloat8E4M3: return round_to_e4m3(v);
    default: return bf16_to_float(float_to_bf16(v));
  }
}

}  // namespace flashattn
