// The e4m3 conversions of src/common/fp8.h, checked exhaustively: every one of the 256 codes
// against the format's definition, every code's round trip, every rounding boundary between
// adjacent codes, the saturation and NaN rules, and random floats against a brute-force nearest
// code.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "common/fp8.h"
#include "common/numeric.h"

namespace flashattn {
namespace {

// The format's definition, written independently of the bit manipulation under test.
double e4m3_definition(int code) {
  const int sign = code >> 7, e = (code >> 3) & 15, m = code & 7;
  double mag = e == 0 ? m * std::ldexp(1.0, -9) : (1.0 + m / 8.0) * std::ldexp(1.0, e - 7);
  return sign ? -mag : mag;
}

bool is_nan_code(int code) { return (code & 0x7f) == 0x7f; }

TEST(Fp8E4M3, EveryCodeDecodesToTheFormatsValue) {
  int nans = 0;
  for (int c = 0; c < 256; ++c) {
    const float v = e4m3_to_float(uint8_t(c));
    if (is_nan_code(c)) {
      EXPECT_TRUE(std::isnan(v)) << c;
      EXPECT_TRUE(e4m3_is_nan(uint8_t(c)));
      ++nans;
      continue;
    }
    EXPECT_FALSE(e4m3_is_nan(uint8_t(c)));
    EXPECT_EQ(double(v), e4m3_definition(c)) << "code " << c;
    EXPECT_EQ(std::signbit(v), c >= 128) << "code " << c;  // -0 (0x80) keeps its sign
  }
  EXPECT_EQ(nans, 2);  // e4m3fn: one NaN per sign, no infinities
  EXPECT_EQ(e4m3_to_float(0x7e), kE4M3Max);
  EXPECT_EQ(e4m3_to_float(0x7e), 448.f);
  EXPECT_EQ(e4m3_to_float(0x01), std::ldexp(1.f, -9));  // smallest subnormal
  EXPECT_EQ(e4m3_to_float(0x08), std::ldexp(1.f, -6));  // smallest normal
}

TEST(Fp8E4M3, PositiveCodesAreOrderedByValue) {
  for (int c = 0; c < 0x7e; ++c) EXPECT_LT(e4m3_to_float(uint8_t(c)), e4m3_to_float(uint8_t(c + 1)));
}

TEST(Fp8E4M3, EveryCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    const float v = e4m3_to_float(uint8_t(c));
    for (bool sat : {true, false}) {
      const uint8_t back = float_to_e4m3(v, sat);
      if (is_nan_code(c))
        EXPECT_EQ(back, uint8_t(c)) << "NaN keeps its sign, code " << c;
      else
        EXPECT_EQ(back, uint8_t(c)) << "code " << c << " value " << v;
    }
  }
}

// Between each pair of adjacent finite codes of one sign: below the midpoint rounds down, above
// it up, the midpoint itself to the code with an even mantissa (the even integer significand).
TEST(Fp8E4M3, RoundsToNearestWithTiesToEvenAtEveryBoundary) {
  for (int sign : {0, 0x80}) {
    for (int c = 0; c < 0x7e; ++c) {
      const int lo = sign | c, hi = sign | (c + 1);
      const float a = e4m3_to_float(uint8_t(lo)), b = e4m3_to_float(uint8_t(hi));
      const float mid = 0.5f * (a + b);  // exact: the codes have 4 significant bits
      ASSERT_EQ(double(mid), 0.5 * (double(a) + double(b)));
      const uint8_t even = (c & 1) == 0 ? uint8_t(lo) : uint8_t(hi);
      EXPECT_EQ(float_to_e4m3(mid), even) << "tie between codes " << lo << " and " << hi;
      EXPECT_EQ(float_to_e4m3(std::nextafter(mid, a)), uint8_t(lo)) << "below the tie " << lo;
      EXPECT_EQ(float_to_e4m3(std::nextafter(mid, b)), uint8_t(hi)) << "above the tie " << hi;
    }
  }
}

TEST(Fp8E4M3, SaturatesPast448OrGivesNaNWithoutSaturation) {
  const float inf = std::numeric_limits<float>::infinity();
  // 464 is the tie between 448 and 480 (which would be the NaN code): even, so 448.
  for (float v : {448.f, 449.f, 463.9f, 464.f}) {
    EXPECT_EQ(float_to_e4m3(v, true), 0x7e) << v;
    EXPECT_EQ(float_to_e4m3(v, false), 0x7e) << v;
    EXPECT_EQ(float_to_e4m3(-v, true), 0xfe) << v;
  }
  for (float v : {std::nextafter(464.f, 500.f), 470.f, 480.f, 1e6f, 3e38f, inf}) {
    EXPECT_EQ(float_to_e4m3(v, true), 0x7e) << v;
    EXPECT_EQ(float_to_e4m3(-v, true), 0xfe) << v;
    EXPECT_EQ(float_to_e4m3(v, false), 0x7f) << v;
    EXPECT_EQ(float_to_e4m3(-v, false), 0xff) << v;
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (bool sat : {true, false}) {
    EXPECT_EQ(float_to_e4m3(nan, sat), 0x7f);
    EXPECT_EQ(float_to_e4m3(-nan, sat), 0xff);
  }
}

TEST(Fp8E4M3, SmallValuesRoundIntoSubnormalsAndToSignedZero) {
  const float unit = std::ldexp(1.f, -9);
  EXPECT_EQ(float_to_e4m3(0.f), 0x00);
  EXPECT_EQ(float_to_e4m3(-0.f), 0x80);
  EXPECT_EQ(float_to_e4m3(0.5f * unit), 0x00);  // tie with 0: even
  EXPECT_EQ(float_to_e4m3(std::nextafter(0.5f * unit, 1.f)), 0x01);
  EXPECT_EQ(float_to_e4m3(-1e-30f), 0x80);
  EXPECT_EQ(float_to_e4m3(1.5f * unit), 0x02);  // tie between 1 and 2 units: even
  EXPECT_EQ(float_to_e4m3(7.5f * unit), 0x08);  // tie between the largest subnormal and 2^-6
}

// Brute force: the result is a code at the smallest distance (and of the right sign).
TEST(Fp8E4M3, RandomFloatsConvertToANearestCode) {
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<float> expo(-14.f, 9.5f);
  std::uniform_real_distribution<float> mant(1.f, 2.f);
  for (int n = 0; n < 200000; ++n) {
    float v = std::ldexp(mant(rng), int(std::floor(expo(rng))));
    if (n & 1) v = -v;
    if (std::fabs(v) > 464.f) continue;  // the saturating range has its own test
    const uint8_t got = float_to_e4m3(v);
    double best = std::numeric_limits<double>::infinity();
    for (int c = 0; c < 256; ++c)
      if (!is_nan_code(c)) best = std::min(best, std::fabs(e4m3_definition(c) - double(v)));
    ASSERT_EQ(std::fabs(e4m3_definition(got) - double(v)), best) << "v = " << v;
    ASSERT_TRUE(got == 0x00 || got == 0x80 || (got >= 0x80) == (v < 0)) << v;
  }
}

// Conversions to e4m3 are monotone (non-decreasing): a requirement for the kernel's P
// quantization not to reorder probabilities.
TEST(Fp8E4M3, ConversionIsMonotone) {
  float prev = 0.f;
  for (float v = 0.f; v <= 470.f; v = v < 1e-3f ? v + 1e-5f : v * 1.0007f) {
    const float r = round_to_e4m3(v);
    ASSERT_GE(r, prev) << v;
    prev = r;
  }
}

TEST(Fp8E4M3, DtypeGenericLoadAndStore) {
  uint8_t buf[4] = {0, 0, 0, 0};
  store_from_float(buf, DType::kFloat8E4M3, 1, 0.3f);
  store_from_float(buf, DType::kFloat8E4M3, 2, -1000.f);  // saturates
  EXPECT_EQ(buf[0], 0);
  EXPECT_EQ(load_as_float(buf, DType::kFloat8E4M3, 1), round_to_e4m3(0.3f));
  EXPECT_EQ(load_as_float(buf, DType::kFloat8E4M3, 2), -448.f);
  EXPECT_EQ(round_to_dtype(0.3f, DType::kFloat8E4M3), 0.3125f);  // 1.010b * 2^-2
  EXPECT_EQ(buf[3], 0);
}

}  // namespace
}  // namespace flashattn
