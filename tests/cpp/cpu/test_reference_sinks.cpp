// Tests of the CPU reference forward with attention sinks and a V head dim of its own (dv != d):
// an independent direct formula over random feature mixes (dense and varlen, masks, softcap,
// ALiBi, GQA, padded strides, sinks, dv); closed forms (rows that see no key give o = 0 and
// lse = sink, zero queries give sum v / (n + e^sink)); a sink of -inf is no sink (forward and
// backward, bitwise); returned probabilities leave the sink its share; key-chunk partials leave
// the sink to the merge; and the KV-cache path equals the dense forward over the cache it
// leaves behind. The gradients (dsinks included) are checked against finite differences in
// test_reference_bwd.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common/lse_merge.h"
#include "test_reference_util.h"

namespace flashattn {
namespace {

using namespace reftest;
using testing::AttnConfig;
using testing::BwdProblem;
using testing::FwdProblem;
using testing::make_bwd_problem;
using testing::make_fwd_problem;

// The direct formula of docs/semantics.md in long double, everything inline (nothing from
// src/common): for each (sequence, head, row) the visible scores s_j,
//   P_j = e^(s_j) / (e^(sink) + sum_j e^(s_j)),  o = sum_j P_j v_j,  lse = log(denominator),
// with o = 0 and lse = +inf for a row with no key and no sink. Dense or varlen (seqused_k too);
// o comes out logical [rows_q, h, dv], lse in the params' layout.
void direct_forward(FwdProblem& pr, std::vector<float>* o, std::vector<float>* lse) {
  const AttnConfig& c = pr.cfg;
  const FwdParams& p = pr.params;
  const bool vl = c.varlen();
  const int dv = c.v_dim();
  const long double scale =
      c.softmax_scale != 0.f ? c.softmax_scale : 1.0L / std::sqrt((long double)c.d);
  o->assign(size_t(pr.rows_q()) * c.h * dv, 0.f);
  lse->assign(pr.lse.size(), 0.f);
  for (int b = 0; b < c.b; ++b) {
    const int s_q = vl ? c.seqlens_q[b] : c.seqlen_q;
    int s_k = vl ? c.seqlens_k[b] : c.seqlen_k;
    if (vl && !c.seqused_k.empty()) s_k = c.seqused_k[b];
    const int64_t q0 = vl ? pr.cu_q[b] : 0, k0 = vl ? pr.cu_k[b] : 0, bb = vl ? 0 : b;
    for (int h = 0; h < c.h; ++h)
      for (int i = 0; i < s_q; ++i) {
        const int hk = h / (c.h / c.h_k);
        const int64_t row = vl ? q0 + i : int64_t(b) * c.seqlen_q + i;
        const size_t li = vl ? size_t(h) * pr.rows_q() + row : (size_t(b) * c.h + h) * c.seqlen_q + i;
        std::vector<long double> e(size_t(s_k), 0.0L);
        long double denom = c.sinks ? std::exp((long double)pr.sinks[h]) : 0.0L;
        bool any = c.sinks;
        for (int j = 0; j < s_k; ++j) {
          if (!design_visible(c, i, j, s_q, s_k)) continue;
          long double x = 0;
          for (int t = 0; t < c.d; ++t)
            x += (long double)pr.q.get(bb * p.q_batch_stride + (q0 + i) * p.q_row_stride +
                                       h * p.q_head_stride + t) *
                 pr.k.get(bb * p.k_batch_stride + (k0 + j) * p.k_row_stride +
                          hk * p.k_head_stride + t);
          x *= scale;
          if (c.softcap > 0) x = c.softcap * std::tanh(x / c.softcap);
          if (c.alibi)
            x -= pr.alibi[(c.alibi_per_batch ? b * c.h : 0) + h] *
                 std::fabs((long double)i + s_k - s_q - j);
          e[size_t(j)] = std::exp(x);
          denom += e[size_t(j)];
          any = true;
        }
        if (!any) {
          (*lse)[li] = std::numeric_limits<float>::infinity();
          continue;
        }
        (*lse)[li] = float(std::log(denom));
        for (int x = 0; x < dv; ++x) {
          long double acc = 0;
          for (int j = 0; j < s_k; ++j)
            acc += e[size_t(j)] / denom *
                   pr.v.get(bb * p.v_batch_stride + (k0 + j) * p.v_row_stride +
                            hk * p.v_head_stride + x);
          (*o)[(size_t(row) * c.h + h) * dv + x] = float(acc);
        }
      }
  }
}

// Scores stay moderate here (|s| of a few units), so long double exp neither overflows nor
// loses the comparison's digits; the reference works in double, hence the tolerances.
void expect_matches_direct(FwdProblem& pr) {
  ASSERT_OK(ref::mha_fwd(pr.params));
  std::vector<float> o, lse;
  direct_forward(pr, &o, &lse);
  const auto d = testing::diff(testing::gather_o(pr), o);
  EXPECT_LT(d.max_abs, 1e-6) << d.str();
  EXPECT_EQ(d.finiteness_mismatches, 0);
  const auto dl = testing::diff(pr.lse, lse);
  EXPECT_LT(dl.max_abs, 1e-5) << dl.str();
  EXPECT_EQ(dl.finiteness_mismatches, 0);
}

TEST(RefSinks, MatchesTheDirectFormulaOnRandomFeatureMixes) {
  std::mt19937_64 rng(fresh_seed());
  const int kLens[] = {1, 2, 7, 16, 33, 97};
  for (int rep = 0; rep < 60; ++rep) {
    AttnConfig c;
    c.b = 1 + int(rng() % 3);
    const int heads[][2] = {{1, 1}, {4, 4}, {4, 2}, {6, 1}, {3, 3}};
    const auto& hh = heads[rng() % 5];
    c.h = hh[0];
    c.h_k = hh[1];
    c.d = 1 + int(rng() % 20);
    c.dv = rng() % 3 == 0 ? 0 : 1 + int(rng() % 24);
    c.sinks = rng() % 4 != 0;
    if (rng() % 3 == 0) {
      // Empty sequences after the first (the reference wants non-null, non-empty tensors).
      for (int b = 0; b < c.b; ++b) {
        c.seqlens_q.push_back(kLens[rng() % 6] - (b > 0 && rng() % 4 == 0 ? 1 : 0));
        c.seqlens_k.push_back(kLens[rng() % 6] - (b > 0 && rng() % 4 == 0 ? 1 : 0));
      }
      if (rng() % 2 == 0)
        for (int b = 0; b < c.b; ++b) c.seqused_k.push_back(int(rng() % (c.seqlens_k[b] + 1)));
    } else {
      c.seqlen_q = kLens[rng() % 6];
      c.seqlen_k = kLens[rng() % 6];
      c.padded_strides = rng() % 2 == 0;
    }
    c.causal = rng() % 3 == 0;
    c.window_left = rng() % 3 == 0 ? int(rng() % 20) : -1;
    c.window_right = !c.causal && rng() % 3 == 0 ? int(rng() % 20) : -1;
    c.softcap = rng() % 3 == 0 ? 0.5f + float(rng() % 40) / 8.f : 0.f;
    c.alibi = rng() % 2 == 0;
    c.alibi_per_batch = c.alibi && rng() % 2 == 0;
    c.softmax_scale = rng() % 2 == 0 ? 0.f : float(rng() % 100) / 25.f - 2.f;
    const uint64_t seed = rng();
    SCOPED_TRACE(c.str() + " " + seed_str(seed));
    FwdProblem pr = make_fwd_problem(c, seed);
    expect_matches_direct(pr);
  }
}

TEST(RefSinks, RowsThatSeeNoKeyGiveZeroAndTheSink) {
  // Causal with s_q = 9 > s_k = 4: rows 0..4 see no key; their softmax is the sink alone.
  AttnConfig c;
  c.b = 2;
  c.seqlen_q = 9;
  c.seqlen_k = 4;
  c.h = 4;
  c.h_k = 2;
  c.d = 6;
  c.dv = 3;
  c.causal = true;
  c.sinks = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  FwdProblem pr = make_fwd_problem(c, seed);
  ASSERT_OK(ref::mha_fwd(pr.params));
  for (int b = 0; b < c.b; ++b)
    for (int h = 0; h < c.h; ++h)
      for (int i = 0; i < c.seqlen_q; ++i) {
        const float l = lse_at(pr, b, h, i);
        ASSERT_TRUE(std::isfinite(l));
        if (i < 5) {
          EXPECT_EQ(l, pr.sinks[h]);
          for (int x = 0; x < 3; ++x) EXPECT_EQ(o_view(pr).get(b, i, h, x), 0.f);
        } else {
          EXPECT_GT(l, pr.sinks[h]);  // the keys add mass to the sink's
        }
      }
}

TEST(RefSinks, ZeroQueryGivesValueSumOverCountPlusSinkMass) {
  // q = 0: every visible score is 0, so P_j = 1 / (n + e^sink), o = sum_j v_j / (n + e^sink)
  // and lse = log(n + e^sink), n the number of visible keys.
  struct Case {
    int s_q, s_k;
    bool causal;
    int left, right;
  };
  const Case cases[] = {{7, 13, false, -1, -1}, {13, 7, true, -1, -1}, {9, 9, false, 2, 1},
                        {16, 5, false, 0, -1}, {1, 97, true, -1, -1}};
  for (const Case& cs : cases) {
    AttnConfig c;
    c.b = 2;
    c.seqlen_q = cs.s_q;
    c.seqlen_k = cs.s_k;
    c.h = 4;
    c.h_k = 2;
    c.d = 7;
    c.dv = 11;
    c.causal = cs.causal;
    c.window_left = cs.left;
    c.window_right = cs.right;
    c.sinks = true;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(c.str() + " " + seed_str(seed));
    FwdProblem pr = make_fwd_problem(c, seed);
    for (int64_t off : q_offsets(pr)) pr.q.set(off, 0.f);
    ASSERT_OK(ref::mha_fwd(pr.params));
    for (int b = 0; b < c.b; ++b)
      for (int i = 0; i < c.seqlen_q; ++i)
        for (int h = 0; h < c.h; ++h) {
          const int hk = h / (c.h / c.h_k);
          int n = 0;
          std::vector<double> sum(size_t(c.dv), 0.0);
          for (int j = 0; j < c.seqlen_k; ++j) {
            if (!design_visible(c, i, j, c.seqlen_q, c.seqlen_k)) continue;
            ++n;
            for (int x = 0; x < c.dv; ++x) sum[size_t(x)] += v_view(pr).get(b, j, hk, x);
          }
          const double denom = n + std::exp(double(pr.sinks[h]));
          EXPECT_NEAR(lse_at(pr, b, h, i), std::log(denom), 1e-6);
          for (int x = 0; x < c.dv; ++x)
            EXPECT_NEAR(o_view(pr).get(b, i, h, x), sum[size_t(x)] / denom, 1e-6);
        }
  }
}

TEST(RefSinks, MinusInfinitySinkIsNoSink) {
  AttnConfig c;
  c.b = 2;
  c.seqlen_q = 9;
  c.seqlen_k = 5;
  c.h = 4;
  c.h_k = 2;
  c.d = 8;
  c.dv = 12;
  c.causal = true;
  c.softcap = 3.f;
  c.alibi = true;
  c.p_dropout = 0.2f;
  c.sinks = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  BwdProblem with = make_bwd_problem(c, seed);
  std::fill(with.fwd.sinks.begin(), with.fwd.sinks.end(), -std::numeric_limits<float>::infinity());
  BwdProblem without = with;
  without.bind();
  without.params.sinks = without.fwd.params.sinks = nullptr;
  without.params.dsinks = nullptr;
  ASSERT_OK(ref::mha_fwd(with.fwd.params));
  ASSERT_OK(ref::mha_fwd(without.fwd.params));
  EXPECT_EQ(with.fwd.o.bytes, without.fwd.o.bytes);
  EXPECT_EQ(0, std::memcmp(with.fwd.lse.data(), without.fwd.lse.data(),
                           with.fwd.lse.size() * sizeof(float)));
  with.bind();
  without.bind();
  without.params.sinks = nullptr;
  without.params.dsinks = nullptr;
  ASSERT_OK(ref::mha_bwd(with.params));
  ASSERT_OK(ref::mha_bwd(without.params));
  EXPECT_EQ(with.dq.bytes, without.dq.bytes);
  EXPECT_EQ(with.dk.bytes, without.dk.bytes);
  EXPECT_EQ(with.dv.bytes, without.dv.bytes);
  for (float g : with.dsinks) EXPECT_EQ(g, 0.f);
}

TEST(RefSinks, ReturnedProbabilitiesLeaveTheSinkItsShare) {
  // Each row's probabilities sum to 1 - P_sink, P_sink = e^(sink - lse).
  AttnConfig c;
  c.b = 2;
  c.seqlen_q = 7;
  c.seqlen_k = 11;
  c.h = 3;
  c.h_k = 1;
  c.d = 5;
  c.dv = 9;
  c.window_left = 3;
  c.sinks = true;
  c.return_probs = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  FwdProblem pr = make_fwd_problem(c, seed);
  ASSERT_OK(ref::mha_fwd(pr.params));
  for (int b = 0; b < c.b; ++b)
    for (int h = 0; h < c.h; ++h)
      for (int i = 0; i < c.seqlen_q; ++i) {
        double sum = 0;
        for (int j = 0; j < c.seqlen_k; ++j)
          sum += pr.p.get(((int64_t(b) * c.h + h) * c.seqlen_q + i) * c.seqlen_k + j);
        const double p_sink = std::exp(double(pr.sinks[h]) - lse_at(pr, b, h, i));
        EXPECT_GT(p_sink, 0.0);
        EXPECT_NEAR(sum, 1.0 - p_sink, 1e-6);
      }
}

TEST(RefSinks, KeyChunkPartialsLeaveTheSinkToTheMerge) {
  AttnConfig c;
  c.b = 2;
  c.seqlen_q = 6;
  c.seqlen_k = 23;
  c.h = 4;
  c.h_k = 2;
  c.d = 8;
  c.dv = 5;
  c.causal = true;
  c.sinks = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " " + seed_str(seed));
  const FwdProblem base = make_fwd_problem(c, seed);
  FwdProblem full = base;
  full.bind();
  ASSERT_OK(ref::mha_fwd(full.params));
  const int bounds[] = {0, 9, 17, 23};
  std::vector<std::vector<float>> o_parts, lse_parts;
  for (int s = 0; s < 3; ++s) {
    ref::Options opt;
    opt.key_begin = bounds[s];
    opt.key_end = bounds[s + 1];
    FwdProblem with = base, without = base;
    with.bind();
    without.bind();
    without.params.sinks = nullptr;
    ASSERT_OK(ref::mha_fwd(with.params, opt));
    ASSERT_OK(ref::mha_fwd(without.params, opt));
    EXPECT_EQ(with.o.bytes, without.o.bytes) << "split " << s;
    EXPECT_EQ(0, std::memcmp(with.lse.data(), without.lse.data(), with.lse.size() * sizeof(float)));
    o_parts.push_back(testing::gather_o(with));
    lse_parts.push_back(with.lse);
  }
  // lse = logaddexp(sink, lse_1, lse_2, lse_3), o = sum_s e^(lse_s - lse) o_s (empty chunks,
  // lse = +inf here, weigh nothing).
  const std::vector<float> o_full = testing::gather_o(full);
  for (int b = 0; b < c.b; ++b)
    for (int h = 0; h < c.h; ++h)
      for (int i = 0; i < c.seqlen_q; ++i) {
        const size_t li = (size_t(b) * c.h + h) * c.seqlen_q + i;
        double lse = base.sinks[size_t(h)];
        for (const auto& l : lse_parts)
          if (std::isfinite(l[li])) lse = logaddexp<double>(lse, l[li]);
        EXPECT_NEAR(lse, full.lse[li], 1e-5);
        for (int x = 0; x < c.dv; ++x) {
          double o = 0;
          for (size_t s = 0; s < o_parts.size(); ++s)
            if (std::isfinite(lse_parts[s][li]))
              o += std::exp(lse_parts[s][li] - lse) *
                   o_parts[s][((size_t(b) * c.seqlen_q + i) * c.h + h) * c.dv + x];
          EXPECT_NEAR(o, o_full[((size_t(b) * c.seqlen_q + i) * c.h + h) * c.dv + x], 1e-6);
        }
      }
}

// The KV-cache path with sinks and dv != d, appending: equal (bitwise) to the dense forward over
// the cache the call leaves behind, each sequence using its first cache_seqlens + seqlen_new keys
// (the dense entry point takes them as seqused_k).
TEST(RefSinks, KVCacheEqualsTheDenseForwardOverTheUpdatedCache) {
  for (bool causal : {false, true}) {
    testing::KVCacheConfig kc;
    kc.attn.b = 3;
    kc.attn.seqlen_q = 4;
    kc.attn.h = 4;
    kc.attn.h_k = 2;
    kc.attn.d = 12;
    kc.attn.dv = 7;
    kc.attn.causal = causal;
    kc.attn.alibi = true;
    kc.attn.sinks = true;
    kc.seqlen_cache = 30;
    kc.seqlen_new = 3;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(kc.attn.str() + " " + seed_str(seed));
    testing::KVCacheProblem pr = testing::make_kvcache_problem(kc, seed);
    ASSERT_OK(ref::mha_fwd_kvcache(pr.params));

    const KVCacheParams& kp = pr.params;
    std::vector<int> used(pr.cache_seqlens);
    for (int& u : used) u += kc.seqlen_new;
    testing::Buffer o = pr.o;
    o.fill_nan();
    std::vector<float> lse(pr.lse.size(), std::numeric_limits<float>::quiet_NaN());
    FwdParams f = kp;  // the forward's fields of the KV-cache call
    f.seqused_k = used.data();
    f.o_ptr = o.data();
    f.softmax_lse_ptr = lse.data();
    ASSERT_OK(ref::mha_fwd(f));
    EXPECT_EQ(o.bytes, pr.o.bytes);
    EXPECT_EQ(0, std::memcmp(lse.data(), pr.lse.data(), lse.size() * sizeof(float)));
  }
}

}  // namespace
}  // namespace flashattn
