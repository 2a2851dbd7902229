// Tests of the CPU reference backward (ref::mha_bwd): every gradient against central finite
// differences of the reference forward (computed in double) for plain, causal, window, softcap,
// ALiBi, GQA/MQA, varlen (zero-length sequences, seqused_k) and dropout (explicit mask and the
// Philox stream); plus structural properties: GQA gradients are sums over the group, keys no
// query sees get exact zeros, the given o/lse are not trusted, closed form for one key; fp32
// and accumulated gradient outputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "common/numeric.h"
#include "common/philox.h"
#include "test_reference_util.h"

namespace flashattn {
namespace {

using namespace reftest;
using testing::AttnConfig;
using testing::BwdProblem;
using testing::FwdProblem;
using testing::make_bwd_problem;

// dout as a logical vector in the order of Options::o_f64 ([rows_q, h, d]).
std::vector<float> logical_dout(const BwdProblem& bp) {
  const FwdProblem& f = bp.fwd;
  testing::Layout l;
  l.batch_stride = bp.params.do_batch_stride;
  l.row_stride = bp.params.do_row_stride;
  l.head_stride = bp.params.do_head_stride;
  return testing::gather(bp.dout, l, f.cfg.b, f.cfg.seqlen_q, f.cfg.h, f.cfg.v_dim(),
                         f.cfg.varlen(), f.rows_q());
}

// The scalar L = sum(dout * o), o from the reference forward in double precision.
double loss(BwdProblem& bp, const std::vector<float>& dout, const ref::Options& base) {
  std::vector<double> o(dout.size());
  ref::Options opt = base;
  opt.o_f64 = o.data();
  const Status s = ref::mha_fwd(bp.fwd.params, opt);
  EXPECT_TRUE(s.ok()) << s.to_string();
  double l = 0;
  for (size_t n = 0; n < o.size(); ++n) l += double(dout[n]) * o[n];
  return l;
}

// Compares dq, dk, dv (and dsinks, with sinks) of ref::mha_bwd with finite differences of L.
//
// The derivative estimate is Richardson-extrapolated central differences,
//   D(h) = (L(x + h) - L(x - h)) / 2h,   fd = (4 D(h/2) - D(h)) / 3,
// whose truncation error is O(h^4) instead of D's h^2/6 |L'''| (which alone reaches ~4e-7 with
// softcap). Inputs are snapped to multiples of 2^-12, so the steps h = 2^-9 and 2^-10 are exact
// in fp32. Remaining errors: truncation ~h^4 |L^(5)| ~ 1e-11, double rounding ~1e-16 |L| / h ~
// 1e-13, and the gradient's storage in fp32, at most 2^-24 |g|. So each element must satisfy
// |fd - g| <= 2^-24 |g| + kAbsTol with kAbsTol = 1e-8 (observed excess <= ~1e-12), while the
// gradients themselves are ~1e-2 .. 1: any wrong term in the backward fails by orders of
// magnitude.
void check_fd(const AttnConfig& c, const ref::Options& opt = {}) {
  constexpr double kAbsTol = 1e-8;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  ASSERT_EQ(c.dtype, DType::kFloat32);
  BwdProblem bp = make_bwd_problem(c, seed);
  const std::vector<int64_t> qo = q_offsets(bp.fwd), ko = k_offsets(bp.fwd),
                             vo = v_offsets(bp.fwd);
  snap_to_grid(bp.fwd.q, qo);
  snap_to_grid(bp.fwd.k, ko);
  snap_to_grid(bp.fwd.v, vo);
  for (float& s : bp.fwd.sinks) s = std::round(s * 4096.f) / 4096.f;
  ASSERT_OK(ref::mha_bwd(bp.params, opt));
  const std::vector<float> dout = logical_dout(bp);

  struct Tensor {
    const char* name;
    testing::Buffer* x;
    testing::Buffer* grad;
    const std::vector<int64_t>* offsets;
  };
  const Tensor tensors[] = {{"dq", &bp.fwd.q, &bp.dq, &qo},
                            {"dk", &bp.fwd.k, &bp.dk, &ko},
                            {"dv", &bp.fwd.v, &bp.dv, &vo}};
  for (const Tensor& t : tensors) {
    double worst_excess = -1, max_grad = 0;
    for (int64_t off : *t.offsets) {
      const float x0 = t.x->get(off);
      auto central = [&](float h) {
        t.x->set(off, x0 + h);
        const double lp = loss(bp, dout, opt);
        t.x->set(off, x0 - h);
        const double lm = loss(bp, dout, opt);
        t.x->set(off, x0);
        return (lp - lm) / (2.0 * h);
      };
      const double fd = (4 * central(1.f / 1024) - central(1.f / 512)) / 3;
      const double g = t.grad->get(off);
      ASSERT_TRUE(std::isfinite(g)) << t.name << " element " << off << " not written";
      worst_excess = std::max(worst_excess, std::fabs(fd - g) - std::ldexp(std::fabs(g), -24));
      max_grad = std::max(max_grad, std::fabs(g));
    }
    EXPECT_LT(worst_excess, kAbsTol) << t.name << " max |grad| " << max_grad;
    EXPECT_GT(max_grad, 1e-3) << t.name << ": the check needs non-trivial gradients";
  }
  // dsinks: the same estimate, perturbing one sink logit at a time (params.sinks points into
  // bp.fwd.sinks).
  double worst_excess = -1, max_grad = 0;
  for (size_t h = 0; h < bp.fwd.sinks.size(); ++h) {
    const float s0 = bp.fwd.sinks[h];
    auto central = [&](float step) {
      bp.fwd.sinks[h] = s0 + step;
      const double lp = loss(bp, dout, opt);
      bp.fwd.sinks[h] = s0 - step;
      const double lm = loss(bp, dout, opt);
      bp.fwd.sinks[h] = s0;
      return (lp - lm) / (2.0 * step);
    };
    const double fd = (4 * central(1.f / 1024) - central(1.f / 512)) / 3;
    const double g = bp.dsinks[h];
    ASSERT_TRUE(std::isfinite(g)) << "dsinks[" << h << "] not written";
    worst_excess = std::max(worst_excess, std::fabs(fd - g) - std::ldexp(std::fabs(g), -24));
    max_grad = std::max(max_grad, std::fabs(g));
  }
  if (!bp.fwd.sinks.empty()) {
    EXPECT_LT(worst_excess, kAbsTol) << "dsinks max |grad| " << max_grad;
    EXPECT_GT(max_grad, 1e-3) << "dsinks: the check needs non-trivial gradients";
  }
}

AttnConfig small(int s_q, int s_k, int h = 2, int h_k = 2) {
  AttnConfig c;
  c.b = 2;
  c.seqlen_q = s_q;
  c.seqlen_k = s_k;
  c.h = h;
  c.h_k = h_k;
  c.d = 5;
  return c;
}

TEST(RefBwd, FiniteDifferencesPlain) {
  check_fd(small(7, 9));
  check_fd(small(9, 4));
  check_fd(small(1, 13));
}

TEST(RefBwd, FiniteDifferencesCausal) {
  AttnConfig c = small(9, 5);  // the first 4 rows see nothing
  c.causal = true;
  check_fd(c);
  c = small(5, 9);
  c.causal = true;
  check_fd(c);
}

TEST(RefBwd, FiniteDifferencesWindow) {
  AttnConfig c = small(8, 8);
  c.window_left = 2;
  c.window_right = 1;
  check_fd(c);
  c = small(6, 11);
  c.window_left = 0;
  check_fd(c);
}

TEST(RefBwd, FiniteDifferencesSoftcap) {
  AttnConfig c = small(7, 9);
  c.softmax_scale = 1.5f;  // scores reach well into the tanh's curved region
  c.softcap = 0.8f;
  check_fd(c);
  c.causal = true;
  c.softcap = 2.f;
  check_fd(c);
}

TEST(RefBwd, FiniteDifferencesAlibi) {
  AttnConfig c = small(7, 10);
  c.alibi = true;
  check_fd(c);
  c.alibi_per_batch = true;
  c.causal = true;
  check_fd(c);
}

TEST(RefBwd, FiniteDifferencesGqaAndMqa) {
  AttnConfig c = small(6, 7, 6, 2);
  check_fd(c);
  c = small(7, 6, 3, 1);
  c.causal = true;
  check_fd(c);
}

TEST(RefBwd, FiniteDifferencesVarlen) {
  AttnConfig c = small(0, 0, 4, 2);
  c.b = 4;
  c.seqlens_q = {5, 0, 7, 3};
  c.seqlens_k = {6, 3, 0, 8};
  c.causal = true;
  check_fd(c);
  c.causal = false;
  c.seqused_k = {4, 3, 0, 5};  // keys past seqused_k get zero gradient
  check_fd(c);
}

// A random keep mask for the explicit-mask dropout path, [b, h, seqlen_q, seqlen_k].
std::vector<uint8_t> random_keep_mask(const AttnConfig& c, float p, uint64_t seed) {
  const int s_q = c.varlen() ? *std::max_element(c.seqlens_q.begin(), c.seqlens_q.end()) : c.seqlen_q;
  const int s_k = c.varlen() ? *std::max_element(c.seqlens_k.begin(), c.seqlens_k.end()) : c.seqlen_k;
  std::vector<uint8_t> m(size_t(c.b) * c.h * s_q * s_k);
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution keep(1.0 - p);
  for (auto& x : m) x = keep(rng);
  return m;
}

TEST(RefBwd, FiniteDifferencesDropoutWithFixedMask) {
  AttnConfig c = small(7, 9);
  c.p_dropout = 0.3f;
  c.causal = true;
  std::vector<uint8_t> mask = random_keep_mask(c, c.p_dropout, fresh_seed());
  ref::Options opt;
  opt.keep_mask = mask.data();
  check_fd(c, opt);
  // The Philox stream is a fixed mask too (a function of the counters only).
  c.causal = false;
  c.philox_seed = fresh_seed();
  check_fd(c);
}

TEST(RefBwd, FiniteDifferencesDropoutVarlen) {
  AttnConfig c = small(0, 0, 2, 1);
  c.b = 3;
  c.seqlens_q = {4, 6, 0};
  c.seqlens_k = {7, 2, 3};
  c.p_dropout = 0.25f;
  std::vector<uint8_t> mask = random_keep_mask(c, c.p_dropout, fresh_seed());
  ref::Options opt;
  opt.keep_mask = mask.data();
  check_fd(c, opt);
}

// ------------------------------------------------------------- sinks and dv != d --

AttnConfig with_sinks(AttnConfig c) {
  c.sinks = true;
  return c;
}

TEST(RefBwd, FiniteDifferencesSinks) {
  check_fd(with_sinks(small(7, 9)));
  check_fd(with_sinks(small(9, 4)));
  check_fd(with_sinks(small(1, 13, 3, 1)));
}

TEST(RefBwd, FiniteDifferencesSinksWithMasks) {
  AttnConfig c = with_sinks(small(9, 5));  // causal: the first 4 rows have only the sink
  c.causal = true;
  check_fd(c);
  c = with_sinks(small(8, 11));
  c.window_left = 2;
  c.window_right = 1;
  check_fd(c);
}

TEST(RefBwd, FiniteDifferencesSinksWithScoreMods) {
  AttnConfig c = with_sinks(small(7, 9));
  c.softmax_scale = 1.5f;
  c.softcap = 0.8f;
  check_fd(c);
  c = with_sinks(small(7, 10, 4, 2));
  c.alibi = true;
  c.alibi_per_batch = true;
  c.causal = true;
  check_fd(c);
}

TEST(RefBwd, FiniteDifferencesSinksVarlen) {
  AttnConfig c = with_sinks(small(0, 0, 4, 2));
  c.b = 4;
  c.seqlens_q = {5, 0, 7, 3};
  c.seqlens_k = {6, 3, 0, 8};
  c.causal = true;
  check_fd(c);
  c.causal = false;
  c.seqused_k = {4, 3, 0, 5};
  check_fd(c);
}

TEST(RefBwd, FiniteDifferencesSinksDropout) {
  AttnConfig c = with_sinks(small(7, 9));
  c.p_dropout = 0.3f;
  c.causal = true;
  std::vector<uint8_t> mask = random_keep_mask(c, c.p_dropout, fresh_seed());
  ref::Options opt;
  opt.keep_mask = mask.data();
  check_fd(c, opt);
  c.causal = false;
  c.philox_seed = fresh_seed();
  check_fd(c);
}

// V with a head dim of its own, smaller and larger than d, with and without sinks.
TEST(RefBwd, FiniteDifferencesValueHeadDim) {
  AttnConfig c = small(7, 9);
  c.dv = 3;
  check_fd(c);
  c = small(6, 7, 6, 2);
  c.dv = 9;
  c.causal = true;
  check_fd(c);
  c = with_sinks(small(0, 0, 4, 2));
  c.b = 3;
  c.seqlens_q = {5, 0, 7};
  c.seqlens_k = {6, 3, 4};
  c.dv = 8;
  c.softcap = 2.f;
  check_fd(c);
  c = with_sinks(small(8, 6));
  c.dv = 2;
  c.alibi = true;
  c.p_dropout = 0.25f;
  c.philox_seed = fresh_seed();
  check_fd(c);
}

// Runs the reference backward on a copy of bp with the given options and returns the logical
// gradients (dq, dk, dv concatenated).
std::vector<float> grads(BwdProblem bp, const ref::Options& opt = {}) {
  bp.bind();
  const Status s = ref::mha_bwd(bp.params, opt);
  EXPECT_TRUE(s.ok()) << s.to_string();
  std::vector<float> out = read(bp.dq, q_offsets(bp.fwd));
  for (const testing::Buffer* g : {&bp.dk, &bp.dv}) {
    const std::vector<float> x = read(*g, k_offsets(bp.fwd));
    out.insert(out.end(), x.begin(), x.end());
  }
  return out;
}

TEST(RefBwd, DropoutPhiloxStreamEqualsExplicitKeepMask) {
  AttnConfig c = small(13, 11, 4, 2);
  c.d = 8;
  c.causal = true;
  c.p_dropout = 0.35f;
  c.philox_seed = fresh_seed();
  c.philox_offset = 77;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  BwdProblem bp = make_bwd_problem(c, seed);
  DropoutRng rng{c.philox_seed, c.philox_offset, dropout_threshold(c.p_dropout)};
  std::vector<uint8_t> keep(size_t(c.b) * c.h * c.seqlen_q * c.seqlen_k);
  for (size_t n = 0; n < keep.size(); ++n) {
    const int j = int(n % c.seqlen_k), i = int(n / c.seqlen_k % c.seqlen_q);
    keep[n] = rng.keep(n / (size_t(c.seqlen_q) * c.seqlen_k), i, j);
  }
  ref::Options opt;
  opt.keep_mask = keep.data();
  const auto a = grads(bp), b = grads(bp, opt);
  EXPECT_EQ(testing::max_abs_diff(a, b), 0.0);
  EXPECT_EQ(testing::count_nonfinite(a), 0);
  // And dropout does change the gradients (the mask is really applied).
  BwdProblem nodrop = bp;
  nodrop.fwd.params.p_dropout = 0.f;
  EXPECT_GT(testing::max_abs_diff(a, grads(nodrop)), 1e-3);
}

TEST(RefBwd, GqaGradientsAreSumsOverRepeatedHeads) {
  AttnConfig c = small(9, 7, 6, 2);
  c.d = 8;
  c.causal = true;
  c.alibi = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  BwdProblem gqa = make_bwd_problem(c, seed);
  AttnConfig cm = c;
  cm.h_k = c.h;
  BwdProblem mha = make_bwd_problem(cm, seed + 1);
  const int group = c.h / c.h_k;
  for (int b = 0; b < c.b; ++b) {
    for (int i = 0; i < c.seqlen_q; ++i)
      for (int h = 0; h < c.h; ++h)
        for (int x = 0; x < c.d; ++x) {
          q_view(mha.fwd).set(b, i, h, x, q_view(gqa.fwd).get(b, i, h, x));
          mha.dout.set(q_view(mha.fwd).offset(b, i, h, x), gqa.dout.get(q_view(gqa.fwd).offset(b, i, h, x)));
        }
    for (int j = 0; j < c.seqlen_k; ++j)
      for (int h = 0; h < c.h; ++h)
        for (int x = 0; x < c.d; ++x) {
          k_view(mha.fwd).set(b, j, h, x, k_view(gqa.fwd).get(b, j, h / group, x));
          v_view(mha.fwd).set(b, j, h, x, v_view(gqa.fwd).get(b, j, h / group, x));
        }
  }
  mha.fwd.alibi = gqa.fwd.alibi;
  mha.bind();
  ASSERT_OK(ref::mha_bwd(gqa.params));
  ASSERT_OK(ref::mha_bwd(mha.params));
  const View dk_g{&gqa.dk, gqa.params.dk_batch_stride, gqa.params.dk_row_stride, gqa.params.dk_head_stride};
  const View dv_g{&gqa.dv, gqa.params.dv_batch_stride, gqa.params.dv_row_stride, gqa.params.dv_head_stride};
  const View dk_m{&mha.dk, mha.params.dk_batch_stride, mha.params.dk_row_stride, mha.params.dk_head_stride};
  const View dv_m{&mha.dv, mha.params.dv_batch_stride, mha.params.dv_row_stride, mha.params.dv_head_stride};
  const View dq_g{&gqa.dq, gqa.params.dq_batch_stride, gqa.params.dq_row_stride, gqa.params.dq_head_stride};
  const View dq_m{&mha.dq, mha.params.dq_batch_stride, mha.params.dq_row_stride, mha.params.dq_head_stride};
  for (int b = 0; b < c.b; ++b) {
    for (int i = 0; i < c.seqlen_q; ++i)
      for (int h = 0; h < c.h; ++h)
        for (int x = 0; x < c.d; ++x) EXPECT_EQ(dq_g.get(b, i, h, x), dq_m.get(b, i, h, x));
    for (int j = 0; j < c.seqlen_k; ++j)
      for (int hk = 0; hk < c.h_k; ++hk)
        for (int x = 0; x < c.d; ++x) {
          double sk = 0, sv = 0;
          for (int h = hk * group; h < (hk + 1) * group; ++h) {
            sk += dk_m.get(b, j, h, x);
            sv += dv_m.get(b, j, h, x);
          }
          EXPECT_NEAR(dk_g.get(b, j, hk, x), sk, 1e-6);
          EXPECT_NEAR(dv_g.get(b, j, hk, x), sv, 1e-6);
        }
  }
}

TEST(RefBwd, KeysNoQuerySeesGetExactZeroAndEveryElementIsWritten) {
  // s_q = 4, s_k = 12, window (1, 0): row i sees keys i + 7 .. i + 8, so keys 0..6 are unseen.
  AttnConfig c = small(4, 12, 4, 2);
  c.window_left = 1;
  c.window_right = 0;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  BwdProblem bp = make_bwd_problem(c, seed);
  ASSERT_OK(ref::mha_bwd(bp.params));
  const View dk{&bp.dk, bp.params.dk_batch_stride, bp.params.dk_row_stride, bp.params.dk_head_stride};
  const View dv{&bp.dv, bp.params.dv_batch_stride, bp.params.dv_row_stride, bp.params.dv_head_stride};
  for (int b = 0; b < c.b; ++b)
    for (int j = 0; j < c.seqlen_k; ++j)
      for (int hk = 0; hk < c.h_k; ++hk) {
        bool any_nonzero = false;
        for (int x = 0; x < c.d; ++x) {
          ASSERT_TRUE(std::isfinite(dk.get(b, j, hk, x)));
          ASSERT_TRUE(std::isfinite(dv.get(b, j, hk, x)));
          if (j < 7) {
            EXPECT_EQ(dk.get(b, j, hk, x), 0.f);
            EXPECT_EQ(dv.get(b, j, hk, x), 0.f);
          }
          any_nonzero |= dv.get(b, j, hk, x) != 0.f;
        }
        if (j >= 7) EXPECT_TRUE(any_nonzero) << "key " << j;
      }
  // Causal with s_q > s_k: the rows that see nothing get dq = 0.
  c = small(9, 3);
  c.causal = true;
  BwdProblem bq = make_bwd_problem(c, seed);
  ASSERT_OK(ref::mha_bwd(bq.params));
  const View dq{&bq.dq, bq.params.dq_batch_stride, bq.params.dq_row_stride, bq.params.dq_head_stride};
  for (int b = 0; b < c.b; ++b)
    for (int i = 0; i < c.seqlen_q; ++i)
      for (int h = 0; h < c.h; ++h)
        for (int x = 0; x < c.d; ++x) {
          ASSERT_TRUE(std::isfinite(dq.get(b, i, h, x)));
          if (i < 6) EXPECT_EQ(dq.get(b, i, h, x), 0.f);
        }
  // Varlen with seqused_k: the unused keys of each sequence get zeros, every row written.
  c = small(0, 0);
  c.b = 2;
  c.seqlens_q = {3, 5};
  c.seqlens_k = {6, 4};
  c.seqused_k = {2, 4};
  BwdProblem bv = make_bwd_problem(c, seed);
  ASSERT_OK(ref::mha_bwd(bv.params));
  const View dkv{&bv.dk, 0, bv.params.dk_row_stride, bv.params.dk_head_stride};
  for (int r = 0; r < 10; ++r)
    for (int hk = 0; hk < c.h_k; ++hk)
      for (int x = 0; x < c.d; ++x) {
        ASSERT_TRUE(std::isfinite(dkv.get(0, r, hk, x))) << r;
        if (r >= 2 && r < 6) EXPECT_EQ(dkv.get(0, r, hk, x), 0.f) << r;
      }
}

TEST(RefBwd, GivenOutputAndLseAreNotTrusted) {
  // The reference recomputes O and the LSE in double: poisoned inputs give the same gradients
  // as the forward's real results.
  AttnConfig c = small(7, 11, 4, 2);
  c.causal = true;
  c.softcap = 3.f;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  BwdProblem poisoned = make_bwd_problem(c, seed);
  BwdProblem real = poisoned;
  real.bind();
  ASSERT_OK(ref::mha_fwd(real.fwd.params));
  real.bind();
  ASSERT_TRUE(std::isnan(poisoned.fwd.lse[0]));
  const auto a = grads(poisoned), b = grads(real);
  EXPECT_EQ(testing::max_abs_diff(a, b), 0.0);
  EXPECT_EQ(testing::count_nonfinite(a), 0);
}

TEST(RefBwd, OneKeyClosedForm) {
  // One visible key: P = 1 whatever q and k, so dq = dk = 0 and dv = sum of dout over all rows
  // and query heads that share the kv head.
  AttnConfig c = small(6, 1, 4, 2);
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  BwdProblem bp = make_bwd_problem(c, seed);
  ASSERT_OK(ref::mha_bwd(bp.params));
  const View dout{&bp.dout, bp.params.do_batch_stride, bp.params.do_row_stride, bp.params.do_head_stride};
  const View dv{&bp.dv, bp.params.dv_batch_stride, bp.params.dv_row_stride, bp.params.dv_head_stride};
  for (float g : read(bp.dq, q_offsets(bp.fwd))) EXPECT_EQ(g, 0.f);
  for (float g : read(bp.dk, k_offsets(bp.fwd))) EXPECT_EQ(g, 0.f);
  for (int b = 0; b < c.b; ++b)
    for (int hk = 0; hk < c.h_k; ++hk)
      for (int x = 0; x < c.d; ++x) {
        double s = 0;
        for (int i = 0; i < c.seqlen_q; ++i)
          for (int h = hk * 2; h < hk * 2 + 2; ++h) s += dout.get(b, i, h, x);
        EXPECT_NEAR(dv.get(b, 0, hk, x), s, 1e-6);
      }
}

TEST(RefBwd, PaddedStridesEqualContiguous) {
  AttnConfig c = small(9, 13, 4, 2);
  c.d = 8;
  c.causal = true;
  c.alibi = true;
  c.p_dropout = 0.2f;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  BwdProblem dense = make_bwd_problem(c, seed);
  c.padded_strides = true;
  BwdProblem padded = make_bwd_problem(c, seed);
  const auto a = grads(dense), b = grads(padded);
  EXPECT_EQ(testing::max_abs_diff(a, b), 0.0);
  EXPECT_EQ(testing::count_nonfinite(a), 0);
}

TEST(RefBwd, LowPrecisionGradientsAreTheRoundedExactResult) {
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    AttnConfig c = small(7, 9, 2, 1);
    c.dtype = t;
    c.d = 16;
    c.causal = true;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(c.str() + " " + seed_str(seed));
    BwdProblem lp = make_bwd_problem(c, seed);
    BwdProblem f32 = lp;
    for (testing::Buffer* b : {&f32.fwd.q, &f32.fwd.k, &f32.fwd.v, &f32.fwd.o, &f32.dout, &f32.dq, &f32.dk, &f32.dv})
      *b = b->converted(DType::kFloat32);
    f32.fwd.cfg.dtype = DType::kFloat32;
    f32.fwd.params.dtype = DType::kFloat32;
    const auto a = grads(lp), b = grads(f32);
    for (size_t n = 0; n < a.size(); ++n) ASSERT_EQ(a[n], round_to_dtype(b[n], t)) << n;
  }
}

// dqkv_fp32: a low-precision problem's gradients come out in fp32, bitwise those of the same
// problem stored in fp32 (the reference rounds its double gradient once, to the output's type).
// dqkv_accumulate: the stored values grow by the gradient (one rounding of the double sum).
TEST(RefBwd, Fp32AndAccumulatedGradients) {
  for (DType t : {DType::kBFloat16, DType::kFloat16}) {
    AttnConfig c = small(7, 9, 4, 2);
    c.dtype = t;
    c.d = 16;
    c.causal = true;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(c.str() + " " + seed_str(seed));
    BwdProblem lp = make_bwd_problem(c, seed);
    BwdProblem f32 = lp;
    for (testing::Buffer* b : {&f32.fwd.q, &f32.fwd.k, &f32.fwd.v, &f32.fwd.o, &f32.dout, &f32.dq, &f32.dk, &f32.dv})
      *b = b->converted(DType::kFloat32);
    f32.fwd.cfg.dtype = DType::kFloat32;
    f32.fwd.params.dtype = DType::kFloat32;
    const std::vector<float> want = grads(f32);

    BwdProblem wide = lp;
    for (testing::Buffer* b : {&wide.dq, &wide.dk, &wide.dv}) *b = b->converted(DType::kFloat32);
    wide.params.dqkv_fp32 = true;
    const std::vector<float> got = grads(wide);
    ASSERT_EQ(got.size(), want.size());
    for (size_t n = 0; n < got.size(); ++n) ASSERT_EQ(got[n], want[n]) << n;

    // Accumulate twice onto random starting values: old + 2 g, within the two roundings.
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (testing::Buffer* b : {&wide.dq, &wide.dk, &wide.dv})
      for (int64_t i = 0; i < b->numel; ++i) b->set(i, u(rng));
    wide.bind();
    std::vector<float> old = read(wide.dq, q_offsets(wide.fwd));
    for (const testing::Buffer* g : {&wide.dk, &wide.dv}) {
      const std::vector<float> x = read(*g, k_offsets(wide.fwd));
      old.insert(old.end(), x.begin(), x.end());
    }
    wide.params.dqkv_accumulate = true;
    ASSERT_OK(ref::mha_bwd(wide.params));
    ASSERT_OK(ref::mha_bwd(wide.params));
    std::vector<float> sum = read(wide.dq, q_offsets(wide.fwd));
    for (const testing::Buffer* g : {&wide.dk, &wide.dv}) {
      const std::vector<float> x = read(*g, k_offsets(wide.fwd));
      sum.insert(sum.end(), x.begin(), x.end());
    }
    for (size_t n = 0; n < sum.size(); ++n)
      ASSERT_NEAR(sum[n], double(old[n]) + 2.0 * want[n], 1e-6 * (2.0 + std::fabs(want[n]))) << n;
  }
}

TEST(RefBwd, PagedKvIsRejected) {
  AttnConfig c = small(4, 8);
  BwdProblem bp = make_bwd_problem(c, fresh_seed());
  const int table[2] = {1, 0};
  bp.params.block_table = table;
  bp.params.page_block_size = 8;
  bp.params.block_table_batch_stride = 1;
  const Status s = ref::mha_bwd(bp.params);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  for (float g : read(bp.dq, q_offsets(bp.fwd))) EXPECT_TRUE(std::isnan(g));  // untouched
}

// A dense problem with no keys (or no queries) has empty k / v (q / o) tensors, whose pointers the
// API lets be null: the reference takes them, and the gradients of the other side are zeros.
TEST(RefBwd, EmptyDenseTensorsMayBeNull) {
  for (bool no_keys : {true, false}) {
    AttnConfig c;
    c.b = 2;
    c.h = c.h_k = 2;
    c.d = 32;
    c.seqlen_q = no_keys ? 9 : 0;
    c.seqlen_k = no_keys ? 0 : 9;
    SCOPED_TRACE(c.str());
    BwdProblem bp = make_bwd_problem(c, fresh_seed());
    if (no_keys) {
      bp.params.k_ptr = nullptr;
      bp.params.v_ptr = nullptr;
      bp.params.dk_ptr = nullptr;
      bp.params.dv_ptr = nullptr;
    } else {
      bp.params.q_ptr = nullptr;
      bp.params.o_ptr = nullptr;
      bp.params.do_ptr = nullptr;
      bp.params.dq_ptr = nullptr;
    }
    ASSERT_OK(ref::mha_bwd(bp.params));
    const testing::Buffer& g = no_keys ? bp.dq : bp.dk;
    for (int64_t i = 0; i < g.numel; ++i) EXPECT_EQ(g.get(i), 0.f) << i;
  }
}

}  // namespace
}  // namespace flashattn
