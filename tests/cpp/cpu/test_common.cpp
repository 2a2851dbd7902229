// Tests of the shared math in src/common, the one definition of each rule that GPU kernels, the
// CPU backend and the reference all use: fp16/bf16 conversions (against the F16C instructions
// and an exact rounding oracle), Philox-4x32-10 (Random123 known-answer vectors) and the dropout
// counter layout, the visibility mask's element and block faces (brute force of the DESIGN
// rule), LSE arithmetic, rotary, score modifiers, paged addressing and sequence geometry.
#include <gtest/gtest.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "common/host_device.h"
#include "common/lse_merge.h"
#include "common/mask.h"
#include "common/numeric.h"
#include "common/paged_kv.h"
#include "common/philox.h"
#include "common/rotary.h"
#include "common/score_mod.h"
#include "common/seqlen.h"

namespace flashattn {
namespace {

constexpr float kInfF = std::numeric_limits<float>::infinity();

float f32(uint32_t bits) { return bit_cast_hd<float>(bits); }
uint32_t bits(float f) { return bit_cast_hd<uint32_t>(f); }

// ------------------------------------------------------------------------- fp16 vs F16C --

// The hardware conversions, round to nearest even; compiled for F16C only in these functions so
// the test binary still starts on a CPU without it (the tests then skip).
__attribute__((target("f16c"))) uint16_t hw_float_to_fp16(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
__attribute__((target("f16c"))) float hw_fp16_to_float(uint16_t h) { return _cvtsh_ss(h); }

bool have_f16c() { return __builtin_cpu_supports("f16c"); }

// Same result, where NaN only has to stay NaN (payloads are not part of the contract).
void expect_same_fp16(uint16_t got, uint16_t want, float input) {
  const bool got_nan = (got & 0x7c00u) == 0x7c00u && (got & 0x3ffu) != 0;
  const bool want_nan = (want & 0x7c00u) == 0x7c00u && (want & 0x3ffu) != 0;
  if (want_nan) {
    EXPECT_TRUE(got_nan) << std::hexfloat << input;
    return;
  }
  EXPECT_EQ(got, want) << std::hexfloat << input << " bits 0x" << std::hex << bits(input);
}

TEST(Numeric, Fp16ToFloatMatchesF16cForEveryBitPattern) {
  if (!have_f16c()) GTEST_SKIP() << "no F16C on this CPU";
  for (uint32_t h = 0; h <= 0xffffu; ++h) {
    const float got = fp16_to_float(uint16_t(h)), want = hw_fp16_to_float(uint16_t(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << h;
      EXPECT_EQ(std::signbit(got), std::signbit(want)) << h;
    } else {
      ASSERT_EQ(bits(got), bits(want)) << "fp16 0x" << std::hex << h;
    }
  }
}

TEST(Numeric, FloatToFp16MatchesF16cOnRandomAndStructuredFloats) {
  if (!have_f16c()) GTEST_SKIP() << "no F16C on this CPU";
  std::mt19937_64 rng(std::random_device{}());
  // Uniform random bit patterns hit every exponent (most overflow or flush); a second stream
  // concentrates on the fp16 range [2^-26, 2^17] where the rounding logic matters.
  int64_t mismatches = 0;
  for (int n = 0; n < 2000000; ++n) {
    const float f = f32(uint32_t(rng()));
    const uint32_t exp = 101u + uint32_t(rng() % 43);  // 2^-26 .. 2^16
    const float g = f32((uint32_t(rng()) & 0x807fffffu) | (exp << 23));
    for (float x : {f, g}) {
      const uint16_t got = float_to_fp16(x), want = hw_float_to_fp16(x);
      const bool both_nan = std::isnan(x) && std::isnan(fp16_to_float(got));
      if (got != want && !both_nan && mismatches++ == 0) expect_same_fp16(got, want, x);
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(Numeric, FloatToFp16HalfwayCasesRoundToEven) {
  if (!have_f16c()) GTEST_SKIP() << "no F16C on this CPU";
  // The midpoint between every pair of adjacent finite fp16 values (subnormals included) and
  // its float neighbours: the tie must go to the even mantissa, the neighbours to the nearer.
  for (uint32_t h = 0; h < 0x7bffu; ++h) {
    const double lo = fp16_to_float(uint16_t(h)), hi = fp16_to_float(uint16_t(h + 1));
    const float mid = float((lo + hi) / 2);  // exact: fp16 values have few mantissa bits
    ASSERT_EQ(double(mid), (lo + hi) / 2);
    const uint16_t even = (h & 1u) ? uint16_t(h + 1) : uint16_t(h);
    for (float sign : {1.f, -1.f}) {
      const uint16_t s = sign < 0 ? 0x8000u : 0u;
      ASSERT_EQ(float_to_fp16(sign * mid), uint16_t(s | even)) << h;
      ASSERT_EQ(hw_float_to_fp16(sign * mid), uint16_t(s | even)) << h;
      const float below = std::nextafter(sign * mid, sign * 0.f);
      const float above = std::nextafter(sign * mid, sign * kInfF);
      ASSERT_EQ(float_to_fp16(below), uint16_t(s | h)) << h;
      ASSERT_EQ(float_to_fp16(above), uint16_t(s | (h + 1))) << h;
      expect_same_fp16(float_to_fp16(below), hw_float_to_fp16(below), below);
      expect_same_fp16(float_to_fp16(above), hw_float_to_fp16(above), above);
    }
  }
}

TEST(Numeric, Fp16SpecialValues) {
  const float kMax = 65504.f;
  struct Case {
    float in;
    uint16_t want;
  };
  const Case cases[] = {
      {0.f, 0x0000},
      {-0.f, 0x8000},
      {1.f, 0x3c00},
      {kMax, 0x7bff},
      {65519.99f, 0x7bff},             // below max + half ulp: stays finite
      {65520.f, 0x7c00},               // max + half ulp ties to even = infinity
      {1e6f, 0x7c00},
      {-1e6f, 0xfc00},
      {kInfF, 0x7c00},
      {-kInfF, 0xfc00},
      {std::ldexp(1.f, -24), 0x0001},  // smallest subnormal
      {std::ldexp(1.f, -25), 0x0000},  // half of it ties to even zero
      {std::ldexp(1.5f, -25), 0x0001},
      {std::ldexp(3.f, -25), 0x0002},  // 1.5 units ties to even 2 units
      {std::ldexp(1.f, -14), 0x0400},  // smallest normal
      {std::ldexp(1023.f, -24), 0x03ff},
      {std::ldexp(2047.f, -25), 0x0400},  // largest subnormal + half unit rounds up to normal
      {1e-30f, 0x0000},
      {-1e-30f, 0x8000},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(float_to_fp16(c.in), c.want) << std::hexfloat << c.in;
    if (have_f16c()) EXPECT_EQ(hw_float_to_fp16(c.in), c.want) << std::hexfloat << c.in;
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(fp16_to_float(float_to_fp16(nan))));
  EXPECT_TRUE(std::isnan(fp16_to_float(float_to_fp16(-nan))));
  EXPECT_TRUE(std::isnan(fp16_to_float(float_to_fp16(f32(0x7f800001u)))));  // signalling NaN
  EXPECT_EQ(fp16_to_float(0x7c00), kInfF);
  EXPECT_EQ(fp16_to_float(0x0001), std::ldexp(1.f, -24));
}

TEST(Numeric, Fp16AndBf16RoundTripEveryValue) {
  for (uint32_t h = 0; h <= 0xffffu; ++h) {
    const float f16 = fp16_to_float(uint16_t(h)), b16 = bf16_to_float(uint16_t(h));
    if (!std::isnan(f16)) ASSERT_EQ(float_to_fp16(f16), h) << h;
    if (!std::isnan(b16)) ASSERT_EQ(float_to_bf16(b16), h) << h;
    if (std::isnan(b16)) ASSERT_TRUE(std::isnan(bf16_to_float(float_to_bf16(b16)))) << h;
  }
}

// Independent bf16 oracle: the two bf16 neighbours of f by truncation, the nearer one by exact
// comparison in double (floats and their midpoints are exact there), ties to even mantissa.
// Above the largest finite bf16 the upper neighbour is infinity, which is IEEE overflow.
uint16_t bf16_oracle(float f) {
  if (std::isnan(f)) return 0x7fc0;
  const uint32_t u = bits(f);
  const uint16_t lo = uint16_t(u >> 16);
  if ((u & 0xffffu) == 0) return lo;
  const uint16_t hi = uint16_t(lo + 1);
  const double dlo = std::fabs(double(f) - double(bf16_to_float(lo)));
  const double dhi = std::fabs(double(bf16_to_float(hi)) - double(f));
  if ((hi & 0x7fffu) == 0x7f80u) {  // upper neighbour is infinity: compare with max + half ulp
    const double half_ulp = std::ldexp(1.0, 127 - 8);
    return std::fabs(double(f)) - std::fabs(double(bf16_to_float(lo))) < half_ulp ? lo : hi;
  }
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1u) ? hi : lo;
}

TEST(Numeric, FloatToBf16MatchesExactRoundingOracle) {
  std::mt19937_64 rng(std::random_device{}());
  for (int n = 0; n < 2000000; ++n) {
    const float f = f32(uint32_t(rng()));
    const uint16_t got = float_to_bf16(f), want = bf16_oracle(f);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(bf16_to_float(got)));
      continue;
    }
    ASSERT_EQ(got, want) << std::hexfloat << f;
  }
  // Every halfway case of the positive finite range (and its neighbours).
  for (uint32_t h = 0; h < 0x7f7fu; ++h) {
    const float mid = f32((h << 16) | 0x8000u);
    ASSERT_EQ(float_to_bf16(mid), (h & 1u) ? h + 1 : h);
    ASSERT_EQ(float_to_bf16(std::nextafter(mid, 0.f)), h);
    ASSERT_EQ(float_to_bf16(std::nextafter(mid, kInfF)), h + 1);
  }
}

TEST(Numeric, Bf16SpecialValues) {
  EXPECT_EQ(float_to_bf16(0.f), 0x0000);
  EXPECT_EQ(float_to_bf16(-0.f), 0x8000);
  EXPECT_EQ(float_to_bf16(1.f), 0x3f80);
  EXPECT_EQ(float_to_bf16(kInfF), 0x7f80);
  EXPECT_EQ(float_to_bf16(-kInfF), 0xff80);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // overflows to inf
  EXPECT_EQ(float_to_bf16(f32(0x7f7f7fffu)), 0x7f7f);                   // just below the tie
  EXPECT_EQ(float_to_bf16(f32(0x00000001u)), 0x0000);                   // tiny subnormal
  EXPECT_EQ(float_to_bf16(f32(0x00018000u)), 0x0002);                   // subnormal tie to even
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(f32(0x7f800001u)))));  // sNaN stays NaN
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(f32(0xffc00000u)))));
}

TEST(Numeric, LoadStoreAndRoundToDtypeAgree) {
  std::mt19937_64 rng(std::random_device{}());
  std::normal_distribution<float> nd(0.f, 100.f);
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    std::vector<uint8_t> buf(64 * 4);
    for (int n = 0; n < 20000; ++n) {
      const float f = nd(rng);
      const int64_t idx = n % 64;
      store_from_float(buf.data(), t, idx, f);
      const float back = load_as_float(buf.data(), t, idx);
      ASSERT_EQ(bits(back), bits(round_to_dtype(f, t)));
      ASSERT_EQ(bits(round_to_dtype(back, t)), bits(back));  // idempotent
      // Rounding error at most half an ulp of the storage type (11 or 8 significant bits).
      const int mant = t == DType::kFloat32 ? 24 : t == DType::kFloat16 ? 11 : 8;
      if (std::isfinite(back) && std::fabs(f) > 1e-4f)
        ASSERT_LE(std::fabs(double(back) - f), std::ldexp(std::fabs(double(f)), -mant) * 1.0001);
    }
  }
}

// --------------------------------------------------------------------------------- Philox --

TEST(Philox, KnownAnswerVectors) {
  // Random123's kat_vectors for philox4x32 with 10 rounds.
  struct Kat {
    uint32_t ctr[4], key[2], out[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& k : kats) {
    const Philox4 out =
        philox4x32_10(Philox4{{k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3]}}, k.key[0], k.key[1]);
    for (int w = 0; w < 4; ++w) EXPECT_EQ(out.x[w], k.out[w]) << "word " << w;
  }
}

TEST(Philox, DropoutRngFollowsDocumentedCounterLayout) {
  // counter = (j / 4, i, lo32(offset + bh), hi32(offset + bh)), key = (lo32(seed), hi32(seed)),
  // word j % 4; the offset sits near 2^32 so offset + bh carries into the high word.
  std::mt19937_64 rng(std::random_device{}());
  DropoutRng r;
  r.seed = rng();
  r.offset = 0xfffffff0ull;
  r.threshold = dropout_threshold(0.37f);
  for (int n = 0; n < 5000; ++n) {
    const uint64_t bh = rng() % 64;
    const int i = int(rng() % 3000), j = int(rng() % 3000);
    const uint64_t c = r.offset + bh;
    const Philox4 w = philox4x32_10(
        Philox4{{uint32_t(j / 4), uint32_t(i), uint32_t(c), uint32_t(c >> 32)}},
        uint32_t(r.seed), uint32_t(r.seed >> 32));
    ASSERT_EQ(r.words(bh, i, j / 4).x[j % 4], w.x[j % 4]);
    ASSERT_EQ(r.keep(bh, i, j), w.x[j % 4] < r.threshold);
  }
}

TEST(Philox, DropoutThresholdEdges) {
  EXPECT_EQ(dropout_threshold(0.f), 0xffffffffu);
  EXPECT_EQ(dropout_threshold(0.5f), 0x80000000u);
  EXPECT_EQ(dropout_threshold(0.75f), 0x40000000u);
  EXPECT_EQ(dropout_threshold(1.f), 0u);
  // Monotone: a larger drop probability never keeps more.
  uint32_t prev = 0xffffffffu;
  for (int k = 1; k <= 1000; ++k) {
    const uint32_t t = dropout_threshold(float(k) / 1000.f);
    EXPECT_LE(t, prev);
    prev = t;
  }
}

TEST(Philox, KeepFractionWithinStatisticalBounds) {
  std::mt19937_64 rng(std::random_device{}());
  for (float p : {0.1f, 0.5f, 0.9f}) {
    DropoutRng r;
    r.seed = rng();
    r.offset = rng() % 1000;
    r.threshold = dropout_threshold(p);
    const int rows = 97, cols = 113, heads = 7;
    int64_t kept = 0, n = 0;
    for (uint64_t bh = 0; bh < uint64_t(heads); ++bh)
      for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j, ++n) kept += r.keep(bh, i, j);
    // Binomial(n, 1 - p): 6 standard deviations is a false alarm about once in 10^9 runs.
    const double mean = n * (1.0 - p), sd = std::sqrt(n * p * (1.0 - p));
    EXPECT_NEAR(double(kept), mean, 6 * sd) << "p=" << p;
  }
}

// ----------------------------------------------------------------------- VisibilityMask --

// The DESIGN rule, written out: j visible to i iff 0 <= i < s_q, 0 <= j < s_k and
// i + s_k - s_q - left <= j <= i + s_k - s_q + right (-1 = unbounded, causal: right = 0).
bool design_visible(int i, int j, int s_q, int s_k, bool causal, int left, int right) {
  if (causal) right = 0;
  if (i < 0 || i >= s_q || j < 0 || j >= s_k) return false;
  const long long off = (long long)i + s_k - s_q;
  if (left >= 0 && j < off - left) return false;
  if (right >= 0 && j > off + right) return false;
  return true;
}

struct MaskCase {
  int s_q, s_k, left, right;
  bool causal;
};

MaskCase random_mask_case(std::mt19937_64& rng) {
  static const int kLens[] = {1, 2, 3, 7, 16, 31, 64, 97, 113};
  MaskCase c;
  c.s_q = kLens[rng() % 9];
  c.s_k = kLens[rng() % 9];
  c.causal = rng() % 3 == 0;
  c.left = rng() % 3 == 0 ? -1 : int(rng() % 40);
  c.right = rng() % 3 == 0 ? -1 : int(rng() % 40);
  return c;
}

TEST(Mask, VisibleMatchesDesignRule) {
  std::mt19937_64 rng(std::random_device{}());
  for (int n = 0; n < 400; ++n) {
    const MaskCase c = random_mask_case(rng);
    const VisibilityMask m = VisibilityMask::make(c.s_q, c.s_k, c.causal, c.left, c.right);
    for (int i = 0; i < c.s_q; ++i) {
      bool any = false;
      for (int j = -2; j < c.s_k + 2; ++j) {
        const bool want = design_visible(i, j, c.s_q, c.s_k, c.causal, c.left, c.right);
        any |= want;
        ASSERT_EQ(m.visible(i, j), want) << "sq=" << c.s_q << " sk=" << c.s_k << " causal="
                                         << c.causal << " win=(" << c.left << "," << c.right
                                         << ") i=" << i << " j=" << j;
      }
      ASSERT_EQ(m.row_empty(i), !any);
    }
  }
}

TEST(Mask, KeyRangeIsExactlyTheKeysTheRowBlockSees) {
  std::mt19937_64 rng(std::random_device{}());
  for (int n = 0; n < 3000; ++n) {
    const MaskCase c = random_mask_case(rng);
    const VisibilityMask m = VisibilityMask::make(c.s_q, c.s_k, c.causal, c.left, c.right);
    const int m0 = int(rng() % c.s_q);
    const int m1 = m0 + 1 + int(rng() % (c.s_q - m0));
    int lo = c.s_k, hi = 0;  // union of the visible keys of rows [m0, m1)
    for (int i = m0; i < m1; ++i)
      for (int j = 0; j < c.s_k; ++j)
        if (design_visible(i, j, c.s_q, c.s_k, c.causal, c.left, c.right)) {
          lo = std::min(lo, j);
          hi = std::max(hi, j + 1);
        }
    int nb, ne;
    m.key_range(m0, m1, &nb, &ne);
    if (hi == 0) {
      EXPECT_LE(ne, nb) << "no visible key, range must be empty";
    } else {
      // Tight: a kernel visits no key block that no row of the block can see.
      EXPECT_EQ(nb, lo);
      EXPECT_EQ(ne, hi);
    }
  }
}

TEST(Mask, TileFullyVisibleIffEveryElementVisible) {
  std::mt19937_64 rng(std::random_device{}());
  int full = 0;
  for (int n = 0; n < 5000; ++n) {
    const MaskCase c = random_mask_case(rng);
    const VisibilityMask m = VisibilityMask::make(c.s_q, c.s_k, c.causal, c.left, c.right);
    // Tiles may hang over the ends (rows >= s_q, keys >= s_k), as the last tiles of a kernel do.
    const int m0 = int(rng() % c.s_q), n0 = int(rng() % c.s_k);
    const int m1 = m0 + 1 + int(rng() % 16), n1 = n0 + 1 + int(rng() % 16);
    bool all = true;
    for (int i = m0; i < m1 && all; ++i)
      for (int j = n0; j < n1 && all; ++j)
        all = design_visible(i, j, c.s_q, c.s_k, c.causal, c.left, c.right);
    full += all;
    ASSERT_EQ(m.tile_fully_visible(m0, m1, n0, n1), all)
        << "sq=" << c.s_q << " sk=" << c.s_k << " causal=" << c.causal << " win=(" << c.left
        << "," << c.right << ") tile [" << m0 << "," << m1 << ")x[" << n0 << "," << n1 << ")";
  }
  EXPECT_GT(full, 0);  // the sampling reached the interesting case
}

// ---------------------------------------------------------------------------- LSE merge --

TEST(LseMerge, LogaddexpIdentityOverflowAndValues) {
  const double ninf = neg_inf<double>();
  EXPECT_EQ(logaddexp(ninf, ninf), ninf);
  EXPECT_EQ(logaddexp(ninf, 2.5), 2.5);
  EXPECT_EQ(logaddexp(-3.0, ninf), -3.0);
  EXPECT_DOUBLE_EQ(logaddexp(1000.0, 1000.0), 1000.0 + std::log(2.0));  // no overflow
  EXPECT_DOUBLE_EQ(logaddexp(-1000.0, -1000.0), -1000.0 + std::log(2.0));
  EXPECT_FLOAT_EQ(logaddexp(88.f, 88.f), 88.f + std::log(2.f));
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> u(-20, 20);
  for (int n = 0; n < 1000; ++n) {
    const double a = u(rng), b = u(rng);
    const long double want = std::log(std::exp((long double)a) + std::exp((long double)b));
    EXPECT_NEAR(logaddexp(a, b), double(want), 1e-13);
    EXPECT_EQ(logaddexp(a, b), logaddexp(b, a));
  }
}

TEST(LseMerge, MergeWeightsOfSplitsSumToOne) {
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> u(-30, 30);
  for (int n = 0; n < 200; ++n) {
    std::vector<double> parts(1 + rng() % 6);
    for (double& x : parts) x = rng() % 4 == 0 ? neg_inf<double>() : u(rng);
    double total = neg_inf<double>();
    for (double x : parts) total = logaddexp(total, x);
    double sum = 0;
    for (double x : parts) sum += merge_weight(x, total);
    bool any = false;
    for (double x : parts) any |= x != neg_inf<double>();
    EXPECT_NEAR(sum, any ? 1.0 : 0.0, 1e-12);
    for (double x : parts)
      if (x == neg_inf<double>()) EXPECT_EQ(merge_weight(x, total), 0.0);
  }
  EXPECT_EQ(finalize_lse(neg_inf<float>()), kInfF);
  EXPECT_EQ(finalize_lse(-2.f), -2.f);
}

// -------------------------------------------------------------------------------- Rotary --

TEST(Rotary, InterleavedAndHalvesKnownValues) {
  // Angles with exact cos/sin: pair 0 rotates by 90 degrees, pair 1 by 180 degrees.
  auto table = [](int k, double* c, double* s) {
    *c = k == 0 ? 0.0 : -1.0;
    *s = k == 0 ? 1.0 : 0.0;
  };
  {
    double x[6] = {1, 2, 3, 4, 5, 6};
    apply_rotary(x, 4, /*interleaved=*/true, table);
    // Pairs (0,1), (2,3): (1,2) -> (-2, 1); (3,4) -> (-3,-4); dims 4, 5 untouched.
    const double want[6] = {-2, 1, -3, -4, 5, 6};
    for (int t = 0; t < 6; ++t) EXPECT_EQ(x[t], want[t]) << t;
  }
  {
    double x[6] = {1, 2, 3, 4, 5, 6};
    apply_rotary(x, 4, /*interleaved=*/false, table);
    // Pairs (0,2), (1,3): (1,3) -> (-3, 1); (2,4) -> (-2,-4).
    const double want[6] = {-3, -2, 1, -4, 5, 6};
    for (int t = 0; t < 6; ++t) EXPECT_EQ(x[t], want[t]) << t;
  }
  {
    // A general angle: x' = x0 cos - x1 sin, y' = x0 sin + x1 cos.
    const double a = 0.3;
    double x[2] = {0.5, -1.25};
    apply_rotary(x, 2, true, [&](int, double* c, double* s) {
      *c = std::cos(a);
      *s = std::sin(a);
    });
    EXPECT_DOUBLE_EQ(x[0], 0.5 * std::cos(a) + 1.25 * std::sin(a));
    EXPECT_DOUBLE_EQ(x[1], 0.5 * std::sin(a) - 1.25 * std::cos(a));
  }
}

TEST(Rotary, PreservesPairNormsAndLeavesTailUntouched) {
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> u(-1, 1);
  for (bool interleaved : {true, false}) {
    for (int rep = 0; rep < 50; ++rep) {
      const int d = 16, rot = 2 * (1 + int(rng() % 8));
      std::vector<double> x(d), y;
      for (double& e : x) e = u(rng);
      y = x;
      std::vector<double> theta(rot / 2);
      for (double& t : theta) t = u(rng) * 10;
      apply_rotary(y.data(), rot, interleaved, [&](int k, double* c, double* s) {
        *c = std::cos(theta[k]);
        *s = std::sin(theta[k]);
      });
      for (int k = 0; k < rot / 2; ++k) {
        const int a = interleaved ? 2 * k : k, b = interleaved ? 2 * k + 1 : k + rot / 2;
        EXPECT_NEAR(x[a] * x[a] + x[b] * x[b], y[a] * y[a] + y[b] * y[b], 1e-12);
        // The rotation angle of the pair is theta_k.
        const double ang = std::atan2(y[b], y[a]) - std::atan2(x[b], x[a]);
        EXPECT_NEAR(std::remainder(ang - theta[k], 2 * M_PI), 0.0, 1e-9);
      }
      for (int t = rot; t < d; ++t) EXPECT_EQ(y[t], x[t]);
    }
  }
}

// ----------------------------------------------------------------------------- ScoreMod --

TEST(ScoreMod, AppliesScaleThenSoftcapThenAlibi) {
  ScoreMod<double> m;
  m.scale = 0.5;
  EXPECT_DOUBLE_EQ(m.apply(3.0, 0, 0), 1.5);
  m.softcap = 2.0;
  EXPECT_DOUBLE_EQ(m.apply(3.0, 0, 0), 2.0 * std::tanh(1.5 / 2.0));
  m.alibi_slope = 0.25;
  m.offset = 5;  // s_k - s_q
  // Distance |i + offset - j|: i = 1, j = 9 -> |1 + 5 - 9| = 3.
  EXPECT_DOUBLE_EQ(m.apply(3.0, 1, 9), 2.0 * std::tanh(0.75) - 0.75);
  EXPECT_DOUBLE_EQ(m.apply(3.0, 4, 9), 2.0 * std::tanh(0.75));  // on the diagonal: no bias
  // The softcap bounds the capped part strictly inside (-cap, cap) for finite input.
  ScoreMod<double> c;
  c.scale = 1.0;
  c.softcap = 3.0;
  for (double x : {-1e3, -10.0, 0.0, 10.0, 1e3}) EXPECT_LE(std::fabs(c.apply(x, 0, 0)), 3.0);
}

TEST(ScoreMod, DscoreIsTheSoftcapDerivative) {
  ScoreMod<double> m;
  m.scale = 0.7;
  EXPECT_EQ(m.dscore(1.3), 1.0);  // no softcap: identity
  m.softcap = 1.5;
  for (double x = -6; x <= 6; x += 0.37) {
    // d apply / d (scale * x), by central differences in double.
    const double h = 1e-6;
    const double num = (m.apply(x + h / m.scale, 0, 0) - m.apply(x - h / m.scale, 0, 0)) / (2 * h);
    EXPECT_NEAR(m.dscore(x), num, 1e-8) << x;
  }
}

TEST(ScoreMod, OfParamsPicksTheHeadsSlopeAndTheSequenceOffset) {
  FwdParams p;
  p.softmax_scale = 0.125f;
  p.softcap = 30.f;
  const float slopes[2][3] = {{0.5f, 0.25f, 0.125f}, {1.f, 2.f, 4.f}};
  // No ALiBi: slope 0 (the identity), whatever the head.
  ScoreMod<double> m = ScoreMod<double>::of(p, 1, 2, 7, 11);
  EXPECT_EQ(m.scale, 0.125);
  EXPECT_EQ(m.softcap, 30.0);
  EXPECT_EQ(m.alibi_slope, 0.0);
  EXPECT_EQ(m.offset, 4);  // s_k - s_q
  // [h] slopes (batch stride 0): every batch entry reads row 0.
  p.alibi_slopes = &slopes[0][0];
  EXPECT_EQ(ScoreMod<float>::of(p, 1, 2, 7, 11).alibi_slope, 0.125f);
  // [b, h] slopes: row bidb.
  p.alibi_slopes_batch_stride = 3;
  EXPECT_EQ(ScoreMod<float>::of(p, 1, 2, 7, 11).alibi_slope, 4.f);
  EXPECT_EQ(ScoreMod<float>::of(p, 0, 1, 11, 7).offset, -4);
  // The double and float policies score alike (to float rounding).
  const ScoreMod<double> md = ScoreMod<double>::of(p, 1, 0, 5, 9);
  const ScoreMod<float> mf = ScoreMod<float>::of(p, 1, 0, 5, 9);
  for (int j = 0; j < 9; ++j) EXPECT_NEAR(md.apply(2.5, 3, j), mf.apply(2.5f, 3, j), 1e-5) << j;
}

// ------------------------------------------------------------------ PagedKV, SeqlenInfo --

TEST(PagedKV, OffsetFollowsBlockTable) {
  const int table[2][3] = {{4, 0, 2}, {1, 5, 3}};
  PagedKV pkv{&table[0][0], 3, 16};
  const int64_t page_stride = 1000, row_stride = 20, head_stride = 7;
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 48; ++t)
      for (int hh = 0; hh < 2; ++hh) {
        EXPECT_EQ(pkv.page_of(b, t), table[b][t / 16]);
        EXPECT_EQ(pkv.offset(b, t, hh, page_stride, row_stride, head_stride),
                  table[b][t / 16] * page_stride + (t % 16) * row_stride + hh * head_stride);
      }
}

TEST(SeqlenInfo, DenseVarlenPagedAndSequsedK) {
  FwdParams p;
  p.seqlen_q = 7;
  p.seqlen_k = 9;
  SeqlenInfo s = SeqlenInfo::make(p, 3);
  EXPECT_EQ(s.seqlen_q, 7);
  EXPECT_EQ(s.seqlen_k, 9);
  EXPECT_EQ(s.q_offset(1000, 10, 2, 3, 4, 1, false), 3 * 1000 + 4 * 10 + 2);

  const int cu_q[] = {0, 3, 3, 10}, cu_k[] = {0, 5, 6, 20}, used[] = {4, 1, 11};
  p.cu_seqlens_q = cu_q;
  p.cu_seqlens_k = cu_k;
  p.total_q = 10;
  p.total_k = 20;
  s = SeqlenInfo::make(p, 2);
  EXPECT_EQ(s.q_row0, 3);
  EXPECT_EQ(s.k_row0, 6);
  EXPECT_EQ(s.seqlen_q, 7);
  EXPECT_EQ(s.seqlen_k, 14);
  EXPECT_EQ(s.k_offset(1000, 10, 2, 2, 1, 1, true), (6 + 1) * 10 + 2);  // no batch term
  p.seqused_k = used;
  EXPECT_EQ(SeqlenInfo::make(p, 2).seqlen_k, 11);
  EXPECT_EQ(SeqlenInfo::make(p, 1).seqlen_q, 0);
  const int bt[] = {0};
  p.block_table = bt;
  EXPECT_EQ(SeqlenInfo::make(p, 2).k_row0, 0);  // paged keys are addressed by the table
}

// Device-resident offsets and lengths are never validated on the host: values that break the
// rules validation enforces make the sequence empty instead of pointing past the buffers.
TEST(SeqlenInfo, OutOfRangeDeviceValuesEmptyTheSequence) {
  FwdParams p;
  p.seqlen_q = 8;
  p.seqlen_k = 16;
  p.total_q = 10;
  p.total_k = 20;
  const int cu_q[] = {0, 6, 4, 12}, cu_k[] = {0, 12, -3, 25};
  p.cu_seqlens_q = cu_q;
  p.cu_seqlens_k = cu_k;
  SeqlenInfo s = SeqlenInfo::make(p, 0);  // valid
  EXPECT_EQ(s.seqlen_q, 6);
  EXPECT_EQ(s.seqlen_k, 12);
  EXPECT_EQ(s.rows_k, 12);
  s = SeqlenInfo::make(p, 1);  // q decreasing, k start negative
  EXPECT_EQ(s.seqlen_q, 0);
  EXPECT_EQ(s.seqlen_k, 0);
  EXPECT_EQ(s.rows_k, 0);
  s = SeqlenInfo::make(p, 2);  // q and k end past total_q / total_k
  EXPECT_EQ(s.seqlen_q, 0);
  EXPECT_EQ(s.q_row0, 0);
  EXPECT_EQ(s.seqlen_k, 0);
  EXPECT_EQ(s.k_row0, 0);

  FwdParams d;  // dense: seqused_k above seqlen_k or negative
  d.seqlen_q = 4;
  d.seqlen_k = 16;
  const int used[] = {16, 17, -1};
  d.seqused_k = used;
  EXPECT_EQ(SeqlenInfo::make(d, 0).seqlen_k, 16);
  EXPECT_EQ(SeqlenInfo::make(d, 1).seqlen_k, 0);
  EXPECT_EQ(SeqlenInfo::make(d, 2).seqlen_k, 0);
  EXPECT_EQ(SeqlenInfo::make(d, 1).rows_k, 16);  // its rows still get (zero) gradients
}

}  // namespace
}  // namespace flashattn
