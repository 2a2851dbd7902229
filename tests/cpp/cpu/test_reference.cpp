// Tests of the CPU reference forward (ref::mha_fwd) and split merge (ref::mha_combine): closed
// forms (one key, uniform scores, masked rows, softcap bounds, ALiBi with zero queries),
// invariants (GQA = MHA with repeated heads, varlen = per-sequence dense, paged = contiguous,
// split-KV merge = unsplit, causal = window (-1, 0), padded = contiguous strides, shift and
// permutation invariance), dropout (Philox stream = explicit mask, keep fraction, LSE of the
// undropped softmax) and an independent naive implementation over random feature mixes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "common/numeric.h"
#include "common/philox.h"
#include "test_reference_util.h"

namespace flashattn {
namespace {

using namespace reftest;
using testing::AttnConfig;
using testing::FwdProblem;
using testing::make_fwd_problem;

float default_scale(const AttnConfig& c) {
  return c.softmax_scale != 0.f ? c.softmax_scale : 1.f / std::sqrt(float(c.d));
}

double dot_qk(FwdProblem& pr, int b, int i, int h, int j, int hk) {
  double s = 0;
  for (int x = 0; x < pr.cfg.d; ++x) s += double(q_view(pr).get(b, i, h, x)) * k_view(pr).get(b, j, hk, x);
  return s;
}

void set_q_zero(FwdProblem& pr) {
  for (int64_t off : q_offsets(pr)) pr.q.set(off, 0.f);
}

// ------------------------------------------------------------------------ closed forms --

TEST(RefFwd, OneKeyOutputsItsValueAndLseIsTheScore) {
  for (int s_q : {1, 7}) {
    for (bool causal : {false, true}) {
      AttnConfig c;
      c.b = 2;
      c.seqlen_q = s_q;
      c.seqlen_k = 1;
      c.h = 3;
      c.h_k = 1;
      c.d = 5;
      c.causal = causal;
      c.softmax_scale = 0.37f;
      const uint64_t seed = fresh_seed();
      SCOPED_TRACE(c.str() + " " + seed_str(seed));
      FwdProblem pr = make_fwd_problem(c, seed);
      ASSERT_OK(ref::mha_fwd(pr.params));
      for (int b = 0; b < c.b; ++b)
        for (int i = 0; i < s_q; ++i)
          for (int h = 0; h < c.h; ++h) {
            // Causal is bottom-right aligned: only the last query row sees the single key.
            const bool vis = design_visible(c, i, 0, s_q, 1);
            ASSERT_EQ(vis, !causal || i == s_q - 1);
            for (int x = 0; x < c.d; ++x)
              EXPECT_EQ(o_view(pr).get(b, i, h, x), vis ? v_view(pr).get(b, 0, 0, x) : 0.f);
            if (vis)
              EXPECT_NEAR(lse_at(pr, b, h, i), 0.37 * dot_qk(pr, b, i, h, 0, 0), 1e-6);
            else
              EXPECT_EQ(lse_at(pr, b, h, i), kInfF);
          }
    }
  }
}

TEST(RefFwd, ZeroQueryGivesMeanOfVisibleValuesAndLogCount) {
  struct Case {
    int s_q, s_k;
    bool causal;
    int left, right;
  };
  const Case cases[] = {{7, 13, false, -1, -1}, {13, 7, true, -1, -1}, {7, 13, true, -1, -1},
                        {9, 9, false, 2, 1},    {16, 5, false, 0, -1}, {5, 16, false, -1, 3},
                        {1, 97, true, -1, -1},  {20, 3, false, 1, 1}};
  for (const Case& cs : cases) {
    AttnConfig c;
    c.b = 2;
    c.seqlen_q = cs.s_q;
    c.seqlen_k = cs.s_k;
    c.h = 4;
    c.h_k = 2;
    c.d = 7;
    c.causal = cs.causal;
    c.window_left = cs.left;
    c.window_right = cs.right;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(c.str() + " " + seed_str(seed));
    FwdProblem pr = make_fwd_problem(c, seed);
    set_q_zero(pr);
    ASSERT_OK(ref::mha_fwd(pr.params));
    int empty_rows = 0;
    for (int b = 0; b < c.b; ++b)
      for (int i = 0; i < c.seqlen_q; ++i)
        for (int h = 0; h < c.h; ++h) {
          const int hk = h / (c.h / c.h_k);
          int n = 0;
          std::vector<double> mean(c.d, 0.0);
          for (int j = 0; j < c.seqlen_k; ++j) {
            if (!design_visible(c, i, j, c.seqlen_q, c.seqlen_k)) continue;
            ++n;
            for (int x = 0; x < c.d; ++x) mean[x] += v_view(pr).get(b, j, hk, x);
          }
          empty_rows += n == 0;
          for (int x = 0; x < c.d; ++x) {
            const float got = o_view(pr).get(b, i, h, x);
            if (n == 0)
              EXPECT_EQ(got, 0.f);
            else
              EXPECT_NEAR(got, mean[x] / n, 1e-6);
          }
          if (n == 0)
            EXPECT_EQ(lse_at(pr, b, h, i), kInfF);
          else
            EXPECT_NEAR(lse_at(pr, b, h, i), std::log(double(n)), 1e-6);
        }
    // Causal 13 x 7 and window (1, 1) at 20 x 3 really produce rows that see nothing.
    if (cs.s_q == 13 || cs.s_q == 20) EXPECT_GT(empty_rows, 0);
  }
}

TEST(RefFwd, WindowZeroZeroSelectsExactlyTheAlignedKey) {
  for (auto [s_q, s_k] : {std::pair{4, 20}, std::pair{20, 4}, std::pair{11, 11}}) {
    AttnConfig c;
    c.b = 1;
    c.seqlen_q = s_q;
    c.seqlen_k = s_k;
    c.h = 2;
    c.h_k = 2;
    c.d = 9;
    c.window_left = 0;
    c.window_right = 0;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(c.str() + " " + seed_str(seed));
    FwdProblem pr = make_fwd_problem(c, seed);
    ASSERT_OK(ref::mha_fwd(pr.params));
    for (int i = 0; i < s_q; ++i)
      for (int h = 0; h < c.h; ++h) {
        const int j = i + s_k - s_q;  // the one key on row i's bottom-right diagonal
        const bool vis = j >= 0 && j < s_k;
        for (int x = 0; x < c.d; ++x)
          EXPECT_EQ(o_view(pr).get(0, i, h, x), vis ? v_view(pr).get(0, j, h, x) : 0.f);
        if (vis)
          EXPECT_NEAR(lse_at(pr, 0, h, i), default_scale(c) * dot_qk(pr, 0, i, h, j, h), 1e-6);
        else
          EXPECT_EQ(lse_at(pr, 0, h, i), kInfF);
      }
  }
}

TEST(RefFwd, SoftcapBoundsScoresInsideTheCap) {
  // A huge scale makes raw scores span far more than 2 * cap; the cap must squeeze them into
  // (-cap, cap): probabilities within a row differ by less than exp(2 cap), and the LSE lies
  // within cap of log(n).
  const float cap = 1.5f;
  for (float softcap : {0.f, cap}) {
    AttnConfig c;
    c.b = 1;
    c.seqlen_q = 7;
    c.seqlen_k = 33;
    c.h = 2;
    c.h_k = 1;
    c.d = 16;
    c.softmax_scale = 10.f;
    c.softcap = softcap;
    c.return_probs = true;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(c.str() + " " + seed_str(seed));
    FwdProblem pr = make_fwd_problem(c, seed);
    ASSERT_OK(ref::mha_fwd(pr.params));
    double worst_ratio = 0;
    for (int h = 0; h < c.h; ++h)
      for (int i = 0; i < c.seqlen_q; ++i) {
        double lo = 1e300, hi = 0;
        for (int j = 0; j < c.seqlen_k; ++j) {
          const double pij = pr.p.get((int64_t(h) * c.seqlen_q + i) * c.seqlen_k + j);
          lo = std::min(lo, pij);
          hi = std::max(hi, pij);
        }
        worst_ratio = std::max(worst_ratio, hi / lo);
        if (softcap > 0) {
          EXPECT_LT(hi / lo, std::exp(2.0 * cap) * (1 + 1e-5));
          const double lse = lse_at(pr, 0, h, i);
          EXPECT_GT(lse, std::log(double(c.seqlen_k)) - cap - 1e-6);
          EXPECT_LT(lse, std::log(double(c.seqlen_k)) + cap + 1e-6);
        }
      }
    // Control: without the cap the same scale really produces ratios beyond the bound.
    if (softcap == 0) EXPECT_GT(worst_ratio, std::exp(2.0 * cap));
  }
}

TEST(RefFwd, AlibiWithZeroQueryIsSoftmaxOfNegativeDistance) {
  for (bool per_batch : {false, true}) {
    for (bool causal : {false, true}) {
      AttnConfig c;
      c.b = 2;
      c.seqlen_q = 9;
      c.seqlen_k = 14;
      c.h = 3;
      c.h_k = 1;
      c.d = 4;
      c.causal = causal;
      c.alibi = true;
      c.alibi_per_batch = per_batch;
      c.return_probs = true;
      const uint64_t seed = fresh_seed();
      SCOPED_TRACE(c.str() + " " + seed_str(seed));
      FwdProblem pr = make_fwd_problem(c, seed);
      set_q_zero(pr);
      ASSERT_OK(ref::mha_fwd(pr.params));
      for (int b = 0; b < c.b; ++b)
        for (int h = 0; h < c.h; ++h) {
          const double slope = pr.alibi[(per_batch ? b * c.h : 0) + h];
          for (int i = 0; i < c.seqlen_q; ++i) {
            std::vector<double> w(c.seqlen_k, 0.0);
            double l = 0;
            for (int j = 0; j < c.seqlen_k; ++j) {
              if (!design_visible(c, i, j, c.seqlen_q, c.seqlen_k)) continue;
              w[j] = std::exp(-slope * std::abs(i + c.seqlen_k - c.seqlen_q - j));
              l += w[j];
            }
            EXPECT_NEAR(lse_at(pr, b, h, i), std::log(l), 1e-6);
            std::vector<double> o(c.d, 0.0);
            for (int j = 0; j < c.seqlen_k; ++j) {
              const int64_t pidx = ((int64_t(b) * c.h + h) * c.seqlen_q + i) * c.seqlen_k + j;
              EXPECT_NEAR(pr.p.get(pidx), w[j] / l, 1e-7);
              for (int x = 0; x < c.d; ++x) o[x] += w[j] / l * v_view(pr).get(b, j, 0, x);
            }
            for (int x = 0; x < c.d; ++x) EXPECT_NEAR(o_view(pr).get(b, i, h, x), o[x], 1e-6);
          }
        }
    }
  }
}

// ------------------------------------------------------------------------- invariants --

TEST(RefFwd, AlibiPerBatchSlopesApplyToTheirBatch) {
  AttnConfig c;
  c.b = 3;
  c.seqlen_q = 7;
  c.seqlen_k = 11;
  c.h = 2;
  c.h_k = 2;
  c.d = 8;
  c.causal = true;
  c.alibi = true;
  c.alibi_per_batch = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  FwdProblem pr = make_fwd_problem(c, seed);
  ASSERT_OK(ref::mha_fwd(pr.params));
  for (int b = 0; b < c.b; ++b) {
    // The same inputs with [h] slopes equal to row b of the [b, h] table.
    FwdProblem one = pr;
    one.bind();
    one.o.fill_nan();
    one.params.alibi_slopes = one.alibi.data() + b * c.h;
    one.params.alibi_slopes_batch_stride = 0;
    ASSERT_OK(ref::mha_fwd(one.params));
    for (int i = 0; i < c.seqlen_q; ++i)
      for (int h = 0; h < c.h; ++h) {
        for (int x = 0; x < c.d; ++x)
          EXPECT_EQ(o_view(one).get(b, i, h, x), o_view(pr).get(b, i, h, x));
        EXPECT_EQ(lse_at(one, b, h, i), lse_at(pr, b, h, i));
      }
  }
}

TEST(RefFwd, GqaEqualsMhaWithRepeatedKvHeads) {
  for (int h_k : {1, 2, 3}) {
    AttnConfig c;
    c.b = 2;
    c.seqlen_q = 13;
    c.seqlen_k = 7;
    c.h = 6;
    c.h_k = h_k;
    c.d = 8;
    c.causal = h_k == 2;
    c.alibi = true;
    c.softcap = h_k == 3 ? 2.f : 0.f;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(c.str() + " " + seed_str(seed));
    FwdProblem gqa = make_fwd_problem(c, seed);
    AttnConfig cm = c;
    cm.h_k = c.h;
    FwdProblem mha = make_fwd_problem(cm, seed + 1);
    const int group = c.h / h_k;
    for (int b = 0; b < c.b; ++b) {
      for (int i = 0; i < c.seqlen_q; ++i)
        for (int h = 0; h < c.h; ++h)
          for (int x = 0; x < c.d; ++x) q_view(mha).set(b, i, h, x, q_view(gqa).get(b, i, h, x));
      for (int j = 0; j < c.seqlen_k; ++j)
        for (int h = 0; h < c.h; ++h)
          for (int x = 0; x < c.d; ++x) {
            k_view(mha).set(b, j, h, x, k_view(gqa).get(b, j, h / group, x));
            v_view(mha).set(b, j, h, x, v_view(gqa).get(b, j, h / group, x));
          }
    }
    mha.alibi = gqa.alibi;
    mha.bind();
    ASSERT_OK(ref::mha_fwd(gqa.params));
    ASSERT_OK(ref::mha_fwd(mha.params));
    // Same numbers through the same math: bitwise equal.
    const auto d = testing::diff(testing::gather_o(gqa), testing::gather_o(mha));
    EXPECT_EQ(d.max_abs, 0.0) << d.str();
    EXPECT_EQ(d.finiteness_mismatches, 0);
    EXPECT_EQ(testing::diff(gqa.lse, mha.lse).max_abs, 0.0);
    EXPECT_EQ(testing::diff(gqa.lse, mha.lse).finiteness_mismatches, 0);
  }
}

// Varlen (with a zero-length q or k sequence, seqused_k, dropout) against one dense problem per
// sequence. A dense single-sequence problem numbers its dropout streams bh = head, the varlen
// sequence i uses i * h + head: offsetting the dense philox_offset by i * h must give the same
// mask (the documented counter layout).
void check_varlen_against_dense(AttnConfig c, bool use_seqused) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + (use_seqused ? " seqused_k " : " ") + seed_str(seed));
  if (use_seqused)
    for (size_t i = 0; i < c.seqlens_k.size(); ++i) c.seqused_k.push_back(c.seqlens_k[i] * 2 / 3);
  FwdProblem vp = make_fwd_problem(c, seed);
  ASSERT_OK(ref::mha_fwd(vp.params));
  const int total_q = vp.rows_q();
  for (int s = 0; s < c.b; ++s) {
    const int s_q = c.seqlens_q[s];
    const int s_k = use_seqused ? c.seqused_k[s] : c.seqlens_k[s];
    const int q0 = vp.cu_q[s], k0 = vp.cu_k[s];
    if (s_q == 0) continue;
    for (int h = 0; h < c.h; ++h)
      for (int i = 0; i < s_q; ++i) {
        const float lse = vp.lse[size_t(h) * total_q + q0 + i];
        if (s_k == 0) {  // nothing to attend to
          EXPECT_EQ(lse, kInfF);
          for (int x = 0; x < c.d; ++x) EXPECT_EQ(o_view(vp).get(0, q0 + i, h, x), 0.f);
        }
      }
    if (s_k == 0) continue;
    AttnConfig dc = c;
    dc.seqlens_q.clear();
    dc.seqlens_k.clear();
    dc.seqused_k.clear();
    dc.b = 1;
    dc.seqlen_q = s_q;
    dc.seqlen_k = s_k;
    dc.alibi_per_batch = false;
    dc.philox_offset = c.philox_offset + uint64_t(s) * c.h;
    FwdProblem dp = make_fwd_problem(dc, seed + s);
    for (int i = 0; i < s_q; ++i)
      for (int h = 0; h < c.h; ++h)
        for (int x = 0; x < c.d; ++x) q_view(dp).set(0, i, h, x, q_view(vp).get(0, q0 + i, h, x));
    for (int j = 0; j < s_k; ++j)
      for (int h = 0; h < c.h_k; ++h)
        for (int x = 0; x < c.d; ++x) {
          k_view(dp).set(0, j, h, x, k_view(vp).get(0, k0 + j, h, x));
          v_view(dp).set(0, j, h, x, v_view(vp).get(0, k0 + j, h, x));
        }
    if (c.alibi) {
      const int row = c.alibi_per_batch ? s : 0;
      dp.alibi.assign(vp.alibi.begin() + row * c.h, vp.alibi.begin() + (row + 1) * c.h);
      dp.bind();
    }
    ASSERT_OK(ref::mha_fwd(dp.params));
    for (int i = 0; i < s_q; ++i)
      for (int h = 0; h < c.h; ++h) {
        for (int x = 0; x < c.d; ++x)
          ASSERT_EQ(o_view(vp).get(0, q0 + i, h, x), o_view(dp).get(0, i, h, x))
              << "seq " << s << " row " << i << " head " << h;
        ASSERT_EQ(vp.lse[size_t(h) * total_q + q0 + i], lse_at(dp, 0, h, i));
      }
  }
  EXPECT_EQ(testing::count_nonfinite(testing::gather_o(vp)), 0);
}

AttnConfig varlen_config() {
  AttnConfig c;
  c.b = 5;
  c.seqlens_q = {7, 0, 13, 1, 5};
  c.seqlens_k = {9, 4, 0, 17, 5};
  c.h = 4;
  c.h_k = 2;
  c.d = 8;
  return c;
}

TEST(RefFwd, VarlenEqualsPerSequenceDense) {
  AttnConfig c = varlen_config();
  check_varlen_against_dense(c, false);
  c.causal = true;
  c.alibi = true;
  c.alibi_per_batch = true;
  check_varlen_against_dense(c, false);
  c.causal = false;
  c.window_left = 2;
  c.window_right = 1;
  c.softcap = 3.f;
  check_varlen_against_dense(c, false);
}

TEST(RefFwd, VarlenSequsedKEqualsShorterDenseSequences) {
  AttnConfig c = varlen_config();
  c.causal = true;
  check_varlen_against_dense(c, true);
}

TEST(RefFwd, VarlenDropoutUsesPerSequenceCounters) {
  AttnConfig c = varlen_config();
  c.p_dropout = 0.3f;
  c.philox_offset = 12345;
  check_varlen_against_dense(c, false);
}

TEST(RefFwd, DenseSequsedKEqualsShorterKeys) {
  AttnConfig c;
  c.b = 3;
  c.seqlen_q = 9;
  c.seqlen_k = 20;
  c.h = 2;
  c.h_k = 1;
  c.d = 8;
  c.causal = true;
  c.alibi = true;
  const std::vector<int> used = {7, 20, 0};
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  FwdProblem pr = make_fwd_problem(c, seed);
  pr.params.seqused_k = used.data();
  ASSERT_OK(ref::mha_fwd(pr.params));
  for (int b = 0; b < c.b; ++b) {
    // Batch b's first used[b] keys as a plain dense problem of that length.
    FwdProblem one = pr;
    one.bind();
    one.o.fill_nan();
    one.params.seqused_k = nullptr;
    one.params.seqlen_k = used[b];
    if (used[b] > 0) ASSERT_OK(ref::mha_fwd(one.params));
    for (int i = 0; i < c.seqlen_q; ++i)
      for (int h = 0; h < c.h; ++h) {
        for (int x = 0; x < c.d; ++x)
          EXPECT_EQ(o_view(pr).get(b, i, h, x), used[b] > 0 ? o_view(one).get(b, i, h, x) : 0.f);
        EXPECT_EQ(lse_at(pr, b, h, i), used[b] > 0 ? lse_at(one, b, h, i) : kInfF);
      }
  }
}

TEST(RefFwd, PagedEqualsContiguousForAnyPageSize) {
  AttnConfig c;
  c.b = 3;
  c.seqlen_q = 13;
  c.seqlen_k = 97;
  c.h = 4;
  c.h_k = 2;
  c.d = 16;
  c.causal = true;
  c.alibi = true;
  for (bool padded : {false, true}) {
    c.padded_strides = padded;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(c.str() + " " + seed_str(seed));
    FwdProblem contiguous = make_fwd_problem(c, seed);
    ASSERT_OK(ref::mha_fwd(contiguous.params));
    for (int page : {1, 3, 16, 256}) {
      SCOPED_TRACE("page " + std::to_string(page));
      FwdProblem paged = testing::to_paged(contiguous, page, seed + page);
      paged.o.fill_nan();
      ASSERT_OK(ref::mha_fwd(paged.params));
      const auto d = testing::diff(testing::gather_o(paged), testing::gather_o(contiguous));
      EXPECT_EQ(d.max_abs, 0.0) << d.str();
      EXPECT_EQ(d.finiteness_mismatches, 0);
      EXPECT_EQ(testing::diff(paged.lse, contiguous.lse).max_abs, 0.0);
    }
  }
}

TEST(RefFwd, PagedVarlenEqualsContiguousVarlen) {
  AttnConfig c;
  c.b = 3;
  c.seqlens_q = {5, 3, 40};
  c.seqlens_k = {97, 0, 40};
  c.h = 2;
  c.h_k = 1;
  c.d = 8;
  c.window_left = 16;
  c.window_right = 4;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  FwdProblem contiguous = make_fwd_problem(c, seed);
  ASSERT_OK(ref::mha_fwd(contiguous.params));
  for (int page : {1, 16, 256}) {
    FwdProblem paged = testing::to_paged(contiguous, page, seed + page);
    paged.o.fill_nan();
    ASSERT_OK(ref::mha_fwd(paged.params));
    const auto d = testing::diff(testing::gather_o(paged), testing::gather_o(contiguous));
    EXPECT_EQ(d.max_abs, 0.0) << "page " << page << " " << d.str();
    EXPECT_EQ(d.finiteness_mismatches, 0);
    EXPECT_EQ(testing::diff(paged.lse, contiguous.lse).max_abs, 0.0);
  }
}

TEST(RefFwd, CausalEqualsWindowMinusOneZero) {
  for (auto [s_q, s_k] : {std::pair{9, 9}, std::pair{7, 13}, std::pair{13, 7}}) {
    AttnConfig c;
    c.b = 2;
    c.seqlen_q = s_q;
    c.seqlen_k = s_k;
    c.h = 2;
    c.h_k = 1;
    c.d = 6;
    c.causal = true;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(c.str() + " " + seed_str(seed));
    FwdProblem causal = make_fwd_problem(c, seed);
    FwdProblem window = causal;
    window.bind();
    window.params.is_causal = false;
    window.params.window_size_left = -1;
    window.params.window_size_right = 0;
    ASSERT_OK(ref::mha_fwd(causal.params));
    ASSERT_OK(ref::mha_fwd(window.params));
    const auto d = testing::diff(testing::gather_o(causal), testing::gather_o(window));
    EXPECT_EQ(d.max_abs, 0.0);
    EXPECT_EQ(d.finiteness_mismatches, 0);
    EXPECT_EQ(testing::diff(causal.lse, window.lse).finiteness_mismatches, 0);
    EXPECT_EQ(testing::diff(causal.lse, window.lse).max_abs, 0.0);
  }
}

TEST(RefFwd, PaddedStridesEqualContiguous) {
  AttnConfig c;
  c.b = 2;
  c.seqlen_q = 11;
  c.seqlen_k = 19;
  c.h = 4;
  c.h_k = 2;
  c.d = 12;
  c.causal = true;
  c.softcap = 4.f;
  c.alibi = true;
  c.p_dropout = 0.2f;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  // make_fwd_problem draws the logical elements in the same order whatever the strides, so the
  // two problems hold the same values.
  FwdProblem dense = make_fwd_problem(c, seed);
  c.padded_strides = true;
  FwdProblem padded = make_fwd_problem(c, seed);
  ASSERT_NE(padded.params.q_row_stride, dense.params.q_row_stride);
  ASSERT_OK(ref::mha_fwd(dense.params));
  ASSERT_OK(ref::mha_fwd(padded.params));
  const auto d = testing::diff(testing::gather_o(dense), testing::gather_o(padded));
  EXPECT_EQ(d.max_abs, 0.0);
  EXPECT_EQ(d.finiteness_mismatches, 0);
  EXPECT_EQ(testing::diff(dense.lse, padded.lse).max_abs, 0.0);
  // The padding of o was not written: it still holds the poison.
  std::vector<bool> logical(padded.o.numel, false);
  for (int64_t off : q_offsets(padded)) logical[off] = true;
  for (int64_t n = 0; n < padded.o.numel; ++n)
    if (!logical[n]) ASSERT_TRUE(std::isnan(padded.o.get(n))) << n;
}

TEST(RefFwd, ShiftingAllKeysShiftsLseOnly) {
  // k_j -> k_j + c adds scale * q_i . c to every score of row i (ALiBi and the mask do not
  // depend on k): o is unchanged, lse_i moves by scale * q_i . c.
  AttnConfig c;
  c.b = 2;
  c.seqlen_q = 9;
  c.seqlen_k = 23;
  c.h = 4;
  c.h_k = 2;
  c.d = 8;
  c.causal = true;
  c.alibi = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  FwdProblem a = make_fwd_problem(c, seed);
  snap_to_grid(a.k, k_offsets(a));
  FwdProblem b = a;
  b.bind();
  std::mt19937_64 rng(seed);
  std::vector<float> shift(size_t(c.b) * c.h_k * c.d);
  for (float& s : shift) s = float(int(rng() % 9) - 4) / 8.f;  // exact on the 2^-12 grid
  for (int bb = 0; bb < c.b; ++bb)
    for (int j = 0; j < c.seqlen_k; ++j)
      for (int hk = 0; hk < c.h_k; ++hk)
        for (int x = 0; x < c.d; ++x)
          k_view(b).set(bb, j, hk, x,
                        k_view(a).get(bb, j, hk, x) + shift[(size_t(bb) * c.h_k + hk) * c.d + x]);
  ASSERT_OK(ref::mha_fwd(a.params));
  ASSERT_OK(ref::mha_fwd(b.params));
  EXPECT_LT(testing::max_abs_diff(testing::gather_o(a), testing::gather_o(b)), 2e-6);
  for (int bb = 0; bb < c.b; ++bb)
    for (int h = 0; h < c.h; ++h)
      for (int i = 0; i < c.seqlen_q; ++i) {
        const int hk = h / (c.h / c.h_k);
        double qc = 0;
        for (int x = 0; x < c.d; ++x)
          qc += double(q_view(a).get(bb, i, h, x)) * shift[(size_t(bb) * c.h_k + hk) * c.d + x];
        EXPECT_NEAR(lse_at(b, bb, h, i) - lse_at(a, bb, h, i), default_scale(c) * qc, 1e-5);
      }
}

TEST(RefFwd, PermutingKeysWithoutMaskChangesNothing) {
  AttnConfig c;
  c.b = 2;
  c.seqlen_q = 7;
  c.seqlen_k = 31;
  c.h = 2;
  c.h_k = 1;
  c.d = 10;
  c.softcap = 2.5f;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  FwdProblem a = make_fwd_problem(c, seed);
  FwdProblem b = a;
  b.bind();
  std::vector<int> perm(c.seqlen_k);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(seed));
  for (int bb = 0; bb < c.b; ++bb)
    for (int j = 0; j < c.seqlen_k; ++j)
      for (int x = 0; x < c.d; ++x) {
        k_view(b).set(bb, j, 0, x, k_view(a).get(bb, perm[j], 0, x));
        v_view(b).set(bb, j, 0, x, v_view(a).get(bb, perm[j], 0, x));
      }
  ASSERT_OK(ref::mha_fwd(a.params));
  ASSERT_OK(ref::mha_fwd(b.params));
  EXPECT_LT(testing::max_abs_diff(testing::gather_o(a), testing::gather_o(b)), 1e-6);
  EXPECT_LT(testing::max_abs_diff(a.lse, b.lse), 1e-6);
}

TEST(RefFwd, SoftmaxScaleDefaultAndExplicit) {
  AttnConfig c;
  c.b = 1;
  c.seqlen_q = 5;
  c.seqlen_k = 12;
  c.h = 2;
  c.h_k = 2;
  c.d = 7;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  FwdProblem def = make_fwd_problem(c, seed);
  FwdProblem expl = def;
  expl.bind();
  expl.params.softmax_scale = 1.f / std::sqrt(7.f);
  // Doubling the scale equals doubling q (both exact power-of-two scalings).
  FwdProblem twice = def;
  twice.bind();
  twice.params.softmax_scale = 2.f / std::sqrt(7.f);
  FwdProblem q2 = def;
  q2.bind();
  for (int64_t off : q_offsets(q2)) q2.q.set(off, 2.f * q2.q.get(off));
  for (FwdProblem* pr : {&def, &expl, &twice, &q2}) ASSERT_OK(ref::mha_fwd(pr->params));
  EXPECT_EQ(testing::max_abs_diff(testing::gather_o(def), testing::gather_o(expl)), 0.0);
  EXPECT_EQ(testing::max_abs_diff(testing::gather_o(twice), testing::gather_o(q2)), 0.0);
  EXPECT_EQ(testing::max_abs_diff(twice.lse, q2.lse), 0.0);
  EXPECT_GT(testing::max_abs_diff(testing::gather_o(def), testing::gather_o(twice)), 1e-4);
}

TEST(RefFwd, ReturnedProbabilitiesAreTheMaskedSoftmax) {
  AttnConfig c;
  c.b = 2;
  c.seqlen_q = 13;
  c.seqlen_k = 8;
  c.h = 2;
  c.h_k = 1;
  c.d = 5;
  c.causal = true;
  c.window_left = 3;
  c.return_probs = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  FwdProblem pr = make_fwd_problem(c, seed);
  ASSERT_OK(ref::mha_fwd(pr.params));
  EXPECT_EQ(testing::count_nonfinite(std::vector<float>(
                reinterpret_cast<const float*>(pr.p.data()),
                reinterpret_cast<const float*>(pr.p.data()) + pr.p.numel)),
            0);
  for (int b = 0; b < c.b; ++b)
    for (int h = 0; h < c.h; ++h)
      for (int i = 0; i < c.seqlen_q; ++i) {
        double sum = 0;
        std::vector<double> o(c.d, 0.0);
        bool any = false;
        for (int j = 0; j < c.seqlen_k; ++j) {
          const double pij = pr.p.get(((int64_t(b) * c.h + h) * c.seqlen_q + i) * c.seqlen_k + j);
          if (!design_visible(c, i, j, c.seqlen_q, c.seqlen_k)) {
            EXPECT_EQ(pij, 0.0);
            continue;
          }
          any = true;
          EXPECT_GT(pij, 0.0);
          sum += pij;
          for (int x = 0; x < c.d; ++x) o[x] += pij * v_view(pr).get(b, j, 0, x);
        }
        EXPECT_NEAR(sum, any ? 1.0 : 0.0, 1e-6);
        for (int x = 0; x < c.d; ++x) EXPECT_NEAR(o_view(pr).get(b, i, h, x), o[x], 1e-6);
      }
}

// -------------------------------------------------------------------------------- dropout --

TEST(RefFwd, DropoutPhiloxStreamEqualsExplicitKeepMask) {
  AttnConfig c;
  c.b = 2;
  c.seqlen_q = 13;
  c.seqlen_k = 29;
  c.h = 3;
  c.h_k = 1;
  c.d = 6;
  c.causal = true;
  c.p_dropout = 0.25f;
  c.philox_seed = fresh_seed();
  c.philox_offset = 0xfffffffeull;  // the per-head counters cross a 32-bit boundary
  c.return_probs = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  FwdProblem philox = make_fwd_problem(c, seed);
  FwdProblem masked = philox;
  masked.bind();
  DropoutRng rng{c.philox_seed, c.philox_offset, dropout_threshold(c.p_dropout)};
  std::vector<uint8_t> keep(size_t(c.b) * c.h * c.seqlen_q * c.seqlen_k);
  for (int b = 0; b < c.b; ++b)
    for (int h = 0; h < c.h; ++h)
      for (int i = 0; i < c.seqlen_q; ++i)
        for (int j = 0; j < c.seqlen_k; ++j)
          keep[((size_t(b) * c.h + h) * c.seqlen_q + i) * c.seqlen_k + j] =
              rng.keep(uint64_t(b) * c.h + h, i, j);
  ref::Options opt;
  opt.keep_mask = keep.data();
  ASSERT_OK(ref::mha_fwd(philox.params));
  ASSERT_OK(ref::mha_fwd(masked.params, opt));
  EXPECT_EQ(testing::max_abs_diff(testing::gather_o(philox), testing::gather_o(masked)), 0.0);
  EXPECT_EQ(testing::diff(philox.lse, masked.lse).max_abs, 0.0);
  // The returned probabilities are negative exactly where the mask drops a visible key.
  for (size_t n = 0; n < keep.size(); ++n) {
    const int j = int(n % c.seqlen_k), i = int(n / c.seqlen_k % c.seqlen_q);
    if (!design_visible(c, i, j, c.seqlen_q, c.seqlen_k)) continue;
    ASSERT_EQ(std::signbit(philox.p.get(int64_t(n))), keep[n] == 0) << n;
  }
  // Another offset draws another mask.
  FwdProblem shifted = philox;
  shifted.bind();
  shifted.params.philox_offset += uint64_t(c.b) * c.h;
  ASSERT_OK(ref::mha_fwd(shifted.params));
  EXPECT_GT(testing::max_abs_diff(testing::gather_o(philox), testing::gather_o(shifted)), 1e-3);
}

TEST(RefFwd, DropoutKeepFractionWithinStatisticalBounds) {
  AttnConfig c;
  c.b = 2;
  c.seqlen_q = 64;
  c.seqlen_k = 61;
  c.h = 4;
  c.h_k = 4;
  c.d = 4;
  c.p_dropout = 0.3f;
  c.philox_seed = fresh_seed();
  c.return_probs = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  FwdProblem pr = make_fwd_problem(c, seed);
  ASSERT_OK(ref::mha_fwd(pr.params));
  int64_t kept = 0;
  const int64_t n = pr.p.numel;
  for (int64_t e = 0; e < n; ++e) kept += !std::signbit(pr.p.get(e));
  const double p = c.p_dropout, mean = n * (1 - p), sd = std::sqrt(n * p * (1 - p));
  EXPECT_NEAR(double(kept), mean, 6 * sd);  // a false alarm about once in 10^9 runs
}

TEST(RefFwd, DropoutRescalesKeptProbabilitiesAndKeepsUndroppedLse) {
  AttnConfig c;
  c.b = 2;
  c.seqlen_q = 17;
  c.seqlen_k = 9;
  c.h = 2;
  c.h_k = 1;
  c.d = 6;
  c.causal = true;
  c.alibi = true;
  c.p_dropout = 0.4f;
  c.philox_seed = fresh_seed();
  c.return_probs = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  FwdProblem drop = make_fwd_problem(c, seed);
  FwdProblem nodrop = drop;
  nodrop.bind();
  nodrop.params.p_dropout = 0.f;
  ASSERT_OK(ref::mha_fwd(drop.params));
  ASSERT_OK(ref::mha_fwd(nodrop.params));
  // flash_attn's convention: the LSE is of the softmax before dropout.
  EXPECT_EQ(testing::diff(drop.lse, nodrop.lse).max_abs, 0.0);
  EXPECT_EQ(testing::diff(drop.lse, nodrop.lse).finiteness_mismatches, 0);
  for (int b = 0; b < c.b; ++b)
    for (int h = 0; h < c.h; ++h)
      for (int i = 0; i < c.seqlen_q; ++i) {
        std::vector<double> o(c.d, 0.0);
        for (int j = 0; j < c.seqlen_k; ++j) {
          const int64_t idx = ((int64_t(b) * c.h + h) * c.seqlen_q + i) * c.seqlen_k + j;
          const double pd = drop.p.get(idx), pn = nodrop.p.get(idx);
          EXPECT_EQ(std::fabs(pd), pn);  // same probabilities, sign = keep
          if (pd > 0)
            for (int x = 0; x < c.d; ++x) o[x] += pd / (1 - c.p_dropout) * v_view(drop).get(b, j, 0, x);
        }
        for (int x = 0; x < c.d; ++x) EXPECT_NEAR(o_view(drop).get(b, i, h, x), o[x], 2e-6);
      }
}

// ---------------------------------------------------------------------- dtypes and rows --

TEST(RefFwd, LowPrecisionOutputsAreTheRoundedExactResult) {
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    AttnConfig c;
    c.dtype = t;
    c.b = 2;
    c.seqlen_q = 7;
    c.seqlen_k = 15;
    c.h = 2;
    c.h_k = 1;
    c.d = 16;
    c.causal = true;
    c.return_probs = true;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(c.str() + " " + seed_str(seed));
    FwdProblem lp = make_fwd_problem(c, seed);
    FwdProblem f32 = lp;
    f32.cfg.dtype = DType::kFloat32;
    for (testing::Buffer* b : {&f32.q, &f32.k, &f32.v, &f32.o, &f32.p}) *b = b->converted(DType::kFloat32);
    f32.bind();
    f32.params.dtype = DType::kFloat32;
    ASSERT_OK(ref::mha_fwd(lp.params));
    ASSERT_OK(ref::mha_fwd(f32.params));
    const auto o_lp = testing::gather_o(lp), o32 = testing::gather_o(f32);
    for (size_t n = 0; n < o_lp.size(); ++n) ASSERT_EQ(o_lp[n], round_to_dtype(o32[n], t)) << n;
    for (int64_t n = 0; n < lp.p.numel; ++n) ASSERT_EQ(lp.p.get(n), round_to_dtype(f32.p.get(n), t));
    EXPECT_EQ(testing::diff(lp.lse, f32.lse).max_abs, 0.0);  // the LSE is fp32 either way
  }
}

TEST(RefFwd, RowRangeComputesOnlyThoseRows) {
  AttnConfig c;
  c.b = 2;
  c.seqlen_q = 13;
  c.seqlen_k = 10;
  c.h = 2;
  c.h_k = 2;
  c.d = 4;
  c.causal = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  FwdProblem full = make_fwd_problem(c, seed);
  FwdProblem part = full;
  part.bind();
  ASSERT_OK(ref::mha_fwd(full.params));
  ref::Options opt;
  opt.row_begin = 3;
  opt.row_end = 8;
  ASSERT_OK(ref::mha_fwd(part.params, opt));
  for (int b = 0; b < c.b; ++b)
    for (int h = 0; h < c.h; ++h)
      for (int i = 0; i < c.seqlen_q; ++i) {
        const bool in = i >= 3 && i < 8;
        for (int x = 0; x < c.d; ++x) {
          if (in)
            EXPECT_EQ(o_view(part).get(b, i, h, x), o_view(full).get(b, i, h, x));
          else
            EXPECT_TRUE(std::isnan(o_view(part).get(b, i, h, x)));
        }
        if (in)
          EXPECT_EQ(lse_at(part, b, h, i), lse_at(full, b, h, i));
        else
          EXPECT_TRUE(std::isnan(lse_at(part, b, h, i)));
      }
}

TEST(RefFwd, NumSplitsDoesNotChangeTheResult) {
  AttnConfig c;
  c.b = 1;
  c.seqlen_q = 5;
  c.seqlen_k = 40;
  c.h = 2;
  c.h_k = 1;
  c.d = 8;
  const uint64_t seed = fresh_seed();
  FwdProblem one = make_fwd_problem(c, seed);
  FwdProblem many = one;
  many.bind();
  many.params.num_splits = 7;
  ASSERT_OK(ref::mha_fwd(one.params));
  ASSERT_OK(ref::mha_fwd(many.params));
  EXPECT_EQ(testing::max_abs_diff(testing::gather_o(one), testing::gather_o(many)), 0.0);
}

// An independent, naive forward (long double, everything inline from the DESIGN formulas) for
// dense problems: catches plumbing errors (strides, head mapping, slopes) in the reference.
void naive_forward(FwdProblem& pr, std::vector<float>* o, std::vector<float>* lse) {
  const AttnConfig& c = pr.cfg;
  const long double scale = default_scale(c);
  o->assign(size_t(c.b) * c.seqlen_q * c.h * c.d, 0.f);
  lse->assign(size_t(c.b) * c.h * c.seqlen_q, 0.f);
  for (int b = 0; b < c.b; ++b)
    for (int h = 0; h < c.h; ++h)
      for (int i = 0; i < c.seqlen_q; ++i) {
        const int hk = h * c.h_k / c.h;
        std::vector<long double> s(c.seqlen_k, -INFINITY);
        long double m = -INFINITY;
        for (int j = 0; j < c.seqlen_k; ++j) {
          if (!design_visible(c, i, j, c.seqlen_q, c.seqlen_k)) continue;
          long double x = 0;
          for (int e = 0; e < c.d; ++e)
            x += (long double)q_view(pr).get(b, i, h, e) * k_view(pr).get(b, j, hk, e);
          x *= scale;
          if (c.softcap > 0) x = c.softcap * std::tanh(x / c.softcap);
          if (c.alibi)
            x -= pr.alibi[(c.alibi_per_batch ? b * c.h : 0) + h] *
                 std::fabs((long double)i + c.seqlen_k - c.seqlen_q - j);
          s[j] = x;
          m = std::max(m, x);
        }
        const size_t li = (size_t(b) * c.h + h) * c.seqlen_q + i;
        if (m == -INFINITY) {
          (*lse)[li] = kInfF;
          continue;
        }
        long double l = 0;
        for (int j = 0; j < c.seqlen_k; ++j) l += std::exp(s[j] - m);
        (*lse)[li] = float(m + std::log(l));
        for (int e = 0; e < c.d; ++e) {
          long double acc = 0;
          for (int j = 0; j < c.seqlen_k; ++j)
            if (s[j] != -INFINITY) acc += std::exp(s[j] - m) / l * v_view(pr).get(b, j, hk, e);
          (*o)[((size_t(b) * c.seqlen_q + i) * c.h + h) * c.d + e] = float(acc);
        }
      }
}

TEST(RefFwd, MatchesIndependentNaiveImplementationOnRandomFeatureMixes) {
  std::mt19937_64 rng(fresh_seed());
  const int kLens[] = {1, 2, 7, 16, 33, 97};
  for (int rep = 0; rep < 40; ++rep) {
    AttnConfig c;
    c.b = 1 + int(rng() % 3);
    c.seqlen_q = kLens[rng() % 6];
    c.seqlen_k = kLens[rng() % 6];
    const int heads[][2] = {{1, 1}, {4, 4}, {4, 2}, {6, 1}, {3, 3}};
    const auto& hh = heads[rng() % 5];
    c.h = hh[0];
    c.h_k = hh[1];
    c.d = 1 + int(rng() % 20);
    c.causal = rng() % 3 == 0;
    c.window_left = rng() % 3 == 0 ? int(rng() % 20) : -1;
    c.window_right = !c.causal && rng() % 3 == 0 ? int(rng() % 20) : -1;
    c.softcap = rng() % 3 == 0 ? 0.5f + float(rng() % 40) / 8.f : 0.f;
    c.alibi = rng() % 2 == 0;
    c.alibi_per_batch = c.alibi && rng() % 2 == 0;
    c.softmax_scale = rng() % 2 == 0 ? 0.f : float(rng() % 100) / 25.f - 2.f;
    c.padded_strides = rng() % 2 == 0;
    const uint64_t seed = rng();
    SCOPED_TRACE(c.str() + " " + seed_str(seed));
    FwdProblem pr = make_fwd_problem(c, seed);
    ASSERT_OK(ref::mha_fwd(pr.params));
    std::vector<float> o, lse;
    naive_forward(pr, &o, &lse);
    const auto d = testing::diff(testing::gather_o(pr), o);
    EXPECT_LT(d.max_abs, 1e-6) << d.str();
    EXPECT_EQ(d.finiteness_mismatches, 0);
    const auto dl = testing::diff(pr.lse, lse);
    EXPECT_LT(dl.max_abs, 1e-5) << dl.str();
    EXPECT_EQ(dl.finiteness_mismatches, 0);
  }
}

TEST(RefFwd, MediumShapeMatchesIndependentNaiveImplementation) {
  AttnConfig c;
  c.b = 1;
  c.seqlen_q = 200;
  c.seqlen_k = 263;
  c.h = 4;
  c.h_k = 2;
  c.d = 64;
  c.causal = true;
  c.window_left = 97;
  c.softcap = 5.f;
  c.alibi = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  FwdProblem pr = make_fwd_problem(c, seed);
  ASSERT_OK(ref::mha_fwd(pr.params));
  std::vector<float> o, lse;
  naive_forward(pr, &o, &lse);
  const auto d = testing::diff(testing::gather_o(pr), o);
  EXPECT_LT(d.max_abs, 1e-6) << d.str();
  EXPECT_EQ(d.finiteness_mismatches, 0);
  EXPECT_LT(testing::diff(pr.lse, lse).max_abs, 1e-5);
}

// -------------------------------------------------------------------------------- combine --

// Run the reference on keys [begin, end) only: a split's partial o (dense [b, s_q, h, d]) and
// lse ([b, h, s_q], -inf for rows with no key in the split: the partial-result convention).
void split_partial(const FwdProblem& full, int begin, int end, std::vector<float>* o,
                   std::vector<float>* lse) {
  FwdProblem pr = full;
  pr.bind();
  pr.o.fill_nan();
  ref::Options opt;
  opt.key_begin = begin;
  opt.key_end = end;
  ASSERT_OK(ref::mha_fwd(pr.params, opt));
  *o = testing::gather_o(pr);
  *lse = pr.lse;
  for (float& x : *lse)
    if (x == kInfF) x = -kInfF;
}

CombineParams combine_params(const AttnConfig& c, int splits, const std::vector<float>& o_part,
                             const std::vector<float>& lse_part, std::vector<float>* out,
                             std::vector<float>* lse) {
  CombineParams cp;
  cp.num_splits = splits;
  cp.b = c.b;
  cp.seqlen_q = c.seqlen_q;
  cp.h = c.h;
  cp.d = c.d;
  cp.out_partial = o_part.data();
  cp.lse_partial = lse_part.data();
  cp.dtype = DType::kFloat32;
  out->assign(size_t(c.b) * c.seqlen_q * c.h * c.d, NAN);
  lse->assign(size_t(c.b) * c.h * c.seqlen_q, NAN);
  cp.out = out->data();
  cp.out_head_stride = c.d;
  cp.out_row_stride = int64_t(c.h) * c.d;
  cp.out_batch_stride = int64_t(c.seqlen_q) * c.h * c.d;
  cp.lse = lse->data();
  return cp;
}

TEST(RefCombine, SplitKvMergeEqualsUnsplit) {
  struct Case {
    int s_q, s_k;
    bool causal, alibi;
    float softcap;
    int left;
  };
  const Case cases[] = {{11, 45, false, false, 0.f, -1}, {11, 45, true, true, 0.f, -1},
                        {7, 97, false, true, 3.f, 20},   {13, 5, true, false, 0.f, -1},
                        {1, 113, true, false, 0.f, 7}};
  std::mt19937_64 rng(fresh_seed());
  for (const Case& cs : cases) {
    for (int splits : {1, 2, 3, 5}) {
      AttnConfig c;
      c.b = 2;
      c.seqlen_q = cs.s_q;
      c.seqlen_k = cs.s_k;
      c.h = 4;
      c.h_k = 2;
      c.d = 8;
      c.causal = cs.causal;
      c.alibi = cs.alibi;
      c.softcap = cs.softcap;
      c.window_left = cs.left;
      const uint64_t seed = rng();
      SCOPED_TRACE(c.str() + " splits=" + std::to_string(splits) + " " + seed_str(seed));
      FwdProblem full = make_fwd_problem(c, seed);
      ASSERT_OK(ref::mha_fwd(full.params));
      // Random cut points (empty splits allowed).
      std::vector<int> cuts = {0, c.seqlen_k};
      for (int s = 1; s < splits; ++s) cuts.push_back(int(rng() % (c.seqlen_k + 1)));
      std::sort(cuts.begin(), cuts.end());
      std::vector<float> o_part, lse_part;
      for (int s = 0; s < splits; ++s) {
        std::vector<float> o, lse;
        split_partial(full, cuts[s], cuts[s + 1], &o, &lse);
        o_part.insert(o_part.end(), o.begin(), o.end());
        lse_part.insert(lse_part.end(), lse.begin(), lse.end());
      }
      std::vector<float> out, lse;
      ASSERT_OK(ref::mha_combine(combine_params(c, splits, o_part, lse_part, &out, &lse)));
      const auto d = testing::diff(out, testing::gather_o(full));
      EXPECT_LT(d.max_abs, 1e-6) << d.str();
      EXPECT_EQ(d.finiteness_mismatches, 0);
      const auto dl = testing::diff(lse, full.lse);
      EXPECT_LT(dl.max_abs, 2e-6) << dl.str();
      EXPECT_EQ(dl.finiteness_mismatches, 0);
    }
  }
}

TEST(RefCombine, TwoSplitsClosedForm) {
  // lse_1 = log 1, lse_2 = log 3: total log 4, weights 1/4 and 3/4.
  AttnConfig c;
  c.b = 1;
  c.seqlen_q = 1;
  c.h = 1;
  c.d = 3;
  const std::vector<float> o_part = {1, 2, 3, 5, 6, 7};
  const std::vector<float> lse_part = {0.f, std::log(3.f)};
  std::vector<float> out, lse;
  ASSERT_OK(ref::mha_combine(combine_params(c, 2, o_part, lse_part, &out, &lse)));
  EXPECT_NEAR(lse[0], std::log(4.0), 1e-6);
  EXPECT_NEAR(out[0], 0.25 * 1 + 0.75 * 5, 1e-6);
  EXPECT_NEAR(out[1], 0.25 * 2 + 0.75 * 6, 1e-6);
  EXPECT_NEAR(out[2], 0.25 * 3 + 0.75 * 7, 1e-6);
}

TEST(RefCombine, EmptySplitsAreIgnoredAndAllEmptyRowsGiveZero) {
  AttnConfig c;
  c.b = 2;
  c.seqlen_q = 3;
  c.h = 2;
  c.d = 5;
  const int splits = 3;
  const size_t n_o = size_t(c.b) * c.seqlen_q * c.h * c.d, n_l = size_t(c.b) * c.h * c.seqlen_q;
  std::mt19937_64 rng(fresh_seed());
  std::uniform_real_distribution<float> u(-2, 2);
  std::vector<float> o_part(splits * n_o), lse_part(splits * n_l);
  for (float& x : o_part) x = u(rng);
  for (float& x : lse_part) x = u(rng);
  // Split 1 is empty everywhere (its output is garbage: NaN); row (b=1, h=0, i=2) is empty in
  // every split.
  for (size_t n = 0; n < n_l; ++n) lse_part[n_l + n] = -kInfF;
  for (size_t n = 0; n < n_o; ++n) o_part[n_o + n] = NAN;
  const size_t empty_l = (size_t(1) * c.h + 0) * c.seqlen_q + 2;
  const size_t empty_o = ((size_t(1) * c.seqlen_q + 2) * c.h + 0) * c.d;
  for (int s = 0; s < splits; ++s) {
    lse_part[s * n_l + empty_l] = -kInfF;
    for (int x = 0; x < c.d; ++x) o_part[s * n_o + empty_o + x] = NAN;
  }
  std::vector<float> out, lse;
  ASSERT_OK(ref::mha_combine(combine_params(c, splits, o_part, lse_part, &out, &lse)));
  // Expected: the merge of splits 0 and 2 alone.
  std::vector<float> o02(o_part.begin(), o_part.begin() + n_o), l02(lse_part.begin(), lse_part.begin() + n_l);
  o02.insert(o02.end(), o_part.begin() + 2 * n_o, o_part.end());
  l02.insert(l02.end(), lse_part.begin() + 2 * n_l, lse_part.end());
  std::vector<float> out02, lse02;
  ASSERT_OK(ref::mha_combine(combine_params(c, 2, o02, l02, &out02, &lse02)));
  for (size_t n = 0; n < n_o; ++n) {
    if (n >= empty_o && n < empty_o + c.d)
      EXPECT_EQ(out[n], 0.f);
    else
      EXPECT_EQ(out[n], out02[n]) << n;
  }
  for (size_t n = 0; n < n_l; ++n) {
    if (n == empty_l)
      EXPECT_EQ(lse[n], kInfF);
    else
      EXPECT_EQ(lse[n], lse02[n]);
  }
}

TEST(RefCombine, WritesDtypeThroughStrides) {
  AttnConfig c;
  c.b = 2;
  c.seqlen_q = 3;
  c.h = 2;
  c.d = 4;
  const int splits = 2;
  std::mt19937_64 rng(fresh_seed());
  std::uniform_real_distribution<float> u(-2, 2);
  std::vector<float> o_part(splits * size_t(c.b) * c.seqlen_q * c.h * c.d), lse_part(splits * size_t(c.b) * c.h * c.seqlen_q);
  for (float& x : o_part) x = u(rng);
  for (float& x : lse_part) x = u(rng);
  std::vector<float> out32, lse32;
  ASSERT_OK(ref::mha_combine(combine_params(c, splits, o_part, lse_part, &out32, &lse32)));
  // bf16 output with padded strides; lse not requested.
  const testing::Layout l = testing::Layout::make(c.b, c.seqlen_q, c.h, c.d, /*padded=*/true);
  testing::Buffer out = testing::Buffer::make(DType::kBFloat16, l.numel);
  out.fill_nan();
  std::vector<float> unused_out, unused_lse;
  CombineParams cp = combine_params(c, splits, o_part, lse_part, &unused_out, &unused_lse);
  cp.dtype = DType::kBFloat16;
  cp.out = out.data();
  cp.out_batch_stride = l.batch_stride;
  cp.out_row_stride = l.row_stride;
  cp.out_head_stride = l.head_stride;
  cp.lse = nullptr;
  ASSERT_OK(ref::mha_combine(cp));
  const auto got = testing::gather(out, l, c.b, c.seqlen_q, c.h, c.d, false, 0);
  for (size_t n = 0; n < got.size(); ++n) EXPECT_EQ(got[n], round_to_dtype(out32[n], DType::kBFloat16));
}

}  // namespace
}  // namespace flashattn
