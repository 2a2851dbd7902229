// Tests of the SM80-path GPU backward kernel (src/sm80/*bwd*, through the public mha_bwd /
// mha_varlen_bwd), skipped without a GPU. The check of each case against the CPU reference, and
// its tolerance: gpu/bwd_cpu_checks.h. Also: unsupported requests return kNotSupported without
// writing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "api/validate.h"
#include "common/mask.h"
#include "common/numeric.h"
#include "common/philox.h"
#include "common/seqlen.h"
#include "cpu/reference.h"
#include "flashattn/flashattn.h"
#include "gpu/bwd_checks_sm80.h"
#include "gpu/bwd_cpu_checks.h"
#include "gpu/gpu_testing.h"
#include "testing/problem.h"

namespace flashattn::testing {
namespace {

int round_hdim(int d) {
  return d <= 32 ? 32 : d <= 64 ? 64 : d <= 96 ? 96 : d <= 128 ? 128 : d <= 192 ? 192 : 256;
}

bool hdim_compiled(int d) {
  for (int hd : build_info().head_dims)
    if (hd == round_hdim(d)) return true;
  return false;
}

bool dtype_compiled(DType t) {
  for (const std::string& s : build_info().dtypes)
    if (s == dtype_name(t)) return true;
  return false;
}

// A dtype compiled in this build (bf16 preferred), for the feature tests.
DType any_dtype() { return dtype_compiled(DType::kBFloat16) ? DType::kBFloat16 : DType::kFloat16; }

// The compiled head dim closest to `want` (feature tests run on whatever the build has).
int any_hdim(int want) {
  int best = 0;
  for (int hd : build_info().head_dims)
    if (best == 0 || std::abs(hd - want) < std::abs(best - want)) best = hd;
  return best;
}

class BwdSm80 : public GpuTest {};

TEST_F(BwdSm80, ShapesAndHeadDims) {
  struct Shape {
    int s_q, s_k, d;
  };
  const Shape shapes[] = {{1, 1, 64},   {2, 5, 32},     {17, 97, 64},  {97, 17, 128},
                          {113, 113, 128}, {5, 2, 72},  {1, 50, 256},  {113, 97, 256},
                          {200, 300, 128}, {300, 200, 64}, {97, 130, 192}, {33, 65, 96}};
  int ran = 0;
  for (DType t : {DType::kBFloat16, DType::kFloat16}) {
    if (!dtype_compiled(t)) continue;
    for (const Shape& s : shapes) {
      if (!hdim_compiled(s.d)) continue;
      check_bwd(base(t, 2, s.s_q, s.s_k, 2, 2, s.d), std::string(dtype_name(t)) + " dense");
      ++ran;
    }
  }
  if (ran == 0) GTEST_SKIP() << "no head dim of this test is compiled in this build";
}

TEST_F(BwdSm80, CausalAndWindows) {
  const DType t = any_dtype();
  const int d = any_hdim(128);
  for (auto [s_q, s_k] : {std::pair{97, 113}, std::pair{113, 97}, std::pair{200, 330}, std::pair{330, 200}}) {
    AttnConfig c = base(t, 2, s_q, s_k, 2, 2, d);
    c.causal = true;
    check_bwd(c, "causal");
    c.causal = false;
    c.window_left = 37;
    c.window_right = 5;
    check_bwd(c, "window(37,5)");
    c.window_left = 0;
    c.window_right = -1;
    check_bwd(c, "window(0,-1)");
  }
}

TEST_F(BwdSm80, SoftcapAndAlibi) {
  const DType t = any_dtype();
  const int d = any_hdim(64);
  AttnConfig c = base(t, 2, 150, 130, 2, 2, d);
  c.softcap = 0.8f;
  c.softmax_scale = 2.f;
  c.causal = true;
  check_bwd(c, "softcap causal");
  AttnConfig a = base(t, 2, 130, 150, 4, 2, d);
  a.alibi = true;
  a.alibi_per_batch = true;
  check_bwd(a, "alibi");
  a.causal = true;
  a.softcap = 5.f;
  check_bwd(a, "alibi softcap causal");
}

TEST_F(BwdSm80, GqaAndMqa) {
  const DType t = any_dtype();
  const int d = any_hdim(128);
  for (auto [h, h_k] : {std::pair{8, 2}, std::pair{6, 1}}) {
    AttnConfig c = base(t, 2, 41, 170, h, h_k, d);
    check_bwd(c, "gqa " + std::to_string(h) + "/" + std::to_string(h_k));
    c.causal = true;
    c.seqlen_q = 170;
    c.seqlen_k = 41;
    check_bwd(c, "gqa causal " + std::to_string(h) + "/" + std::to_string(h_k));
  }
}

TEST_F(BwdSm80, VarlenWithEmptySequencesAndSeqused) {
  const DType t = any_dtype();
  const int d = any_hdim(64);
  AttnConfig c = base(t, 4, 0, 0, 4, 2, d);
  c.seqlens_q = {7, 0, 97, 140};
  c.seqlens_k = {150, 6, 7, 0};
  c.seqlen_q = 140;
  c.seqlen_k = 150;
  check_bwd(c, "varlen");
  c.causal = true;
  check_bwd(c, "varlen causal");
  AttnConfig u = base(t, 3, 0, 0, 2, 1, d);
  u.seqlens_q = {20, 13, 5};
  u.seqlens_k = {140, 13, 9};
  u.seqused_k = {77, 0, 9};
  u.seqlen_q = 20;
  u.seqlen_k = 140;
  check_bwd(u, "varlen seqused");
}

TEST_F(BwdSm80, PaddedStridesAndBothDtypes) {
  for (DType t : {DType::kBFloat16, DType::kFloat16}) {
    if (!dtype_compiled(t)) continue;
    AttnConfig c = base(t, 2, 70, 93, 4, 2, any_hdim(64));
    c.padded_strides = true;
    c.window_left = 20;
    check_bwd(c, std::string(dtype_name(t)) + " padded");
  }
}

// Dropout: the backward regenerates the forward's Philox keep mask (common/philox.h); checked
// against the CPU reference backward (same mask, from the same counter layout) with the forward's
// o and LSE from the CPU backend (same mask again).
TEST_F(BwdSm80, Dropout) {
  const DType t = any_dtype();
  AttnConfig c = base(t, 2, 113, 97, 2, 2, any_hdim(64));
  c.p_dropout = 0.17f;
  c.philox_seed = fresh_seed();
  c.philox_offset = fresh_seed() % 1000;
  check_bwd(c, "dropout");
  c.causal = true;
  c.seqlen_q = 97;
  c.seqlen_k = 200;
  check_bwd(c, "dropout causal");
  AttnConfig g = base(t, 2, 150, 131, 6, 2, any_hdim(128));
  g.p_dropout = 0.3f;
  g.philox_seed = fresh_seed();
  g.alibi = true;
  check_bwd(g, "dropout gqa alibi");
  g.causal = true;
  g.window_left = 40;
  check_bwd(g, "dropout gqa alibi causal window");
  AttnConfig v = base(t, 3, 0, 0, 4, 1, any_hdim(64));
  v.seqlens_q = {70, 0, 129};
  v.seqlens_k = {150, 9, 33};
  v.seqlen_q = 129;
  v.seqlen_k = 150;
  v.p_dropout = 0.25f;
  v.philox_seed = fresh_seed();
  v.philox_offset = 12345;
  check_bwd(v, "dropout varlen mqa");
  v.causal = true;
  check_bwd(v, "dropout varlen mqa causal");
}

// Edge sizes 1, 2, 5, 17, 97, 113 for both sequence lengths (s_q < s_k, s_q > s_k, equal), plain
// and causal, on the compiled head dims.
TEST_F(BwdSm80, EdgeSizes) {
  const DType t = any_dtype();
  const int sizes[] = {1, 2, 5, 17, 97, 113};
  int ran = 0;
  for (int d : {64, 128, 256}) {
    if (!hdim_compiled(d)) continue;
    for (int a = 0; a < 6; ++a) {
      const int s_q = sizes[a], s_k = sizes[(a * 5 + 3) % 6];  // every size on both sides
      AttnConfig c = base(t, 1, s_q, s_k, 2, 1, d);
      c.causal = (a % 2) == 1;
      check_bwd(c, c.causal ? "edge causal" : "edge");
      ++ran;
    }
  }
  if (ran == 0) GTEST_SKIP() << "no head dim of this test is compiled in this build";
}

// deterministic = true: the same gradients, bit for bit, run after run (dQ is summed over key
// blocks in a fixed order; GQA dK / dV are always reduced in a fixed order). 50 runs each of a
// dense GQA problem (causal and not) and a varlen one, with several key blocks per query block
// (s_k >= 600) so that the order matters; each also checked against the oracle once.
TEST_F(BwdSm80, DeterministicIsBitwiseRepeatable) {
  const DType t = any_dtype();
  constexpr int kRuns = 50;
  std::vector<AttnConfig> cases;
  for (bool causal : {false, true}) {
    AttnConfig c = base(t, 2, 150, 600, 4, 2, any_hdim(128));
    c.causal = causal;
    cases.push_back(c);
  }
  AttnConfig v = base(t, 3, 0, 0, 4, 1, any_hdim(64));
  v.seqlens_q = {300, 0, 77};
  v.seqlens_k = {700, 5, 650};
  v.seqlen_q = 300;
  v.seqlen_k = 700;
  cases.push_back(v);
  for (const AttnConfig& c : cases) {
    SCOPED_TRACE(c.str());
    BwdProblem bp = make_bwd_problem(c, fresh_seed());
    ASSERT_TRUE((c.varlen() ? mha_varlen_fwd(bp.fwd.params) : mha_fwd(bp.fwd.params)).ok());
    bp.bind();
    bp.params.deterministic = true;
    DeviceBwdProblem dev(bp);
    Grads first;
    for (int r = 0; r < kRuns; ++r) {
      BwdProblem got = bp;
      got.bind();
      // Poison the device gradients before every run: a run must rewrite every element.
      dev.dq = DeviceBuffer::from(bp.dq);
      dev.dk = DeviceBuffer::from(bp.dk);
      dev.dv = DeviceBuffer::from(bp.dv);
      dev.params.dq_ptr = dev.dq.get();
      dev.params.dk_ptr = dev.dk.get();
      dev.params.dv_ptr = dev.dv.get();
      const Status s = run_bwd(dev.params);
      ASSERT_TRUE(s.ok()) << s.to_string();
      dev.copy_back(got);
      Grads g = gather_grads(got);
      if (r == 0) {
        EXPECT_EQ(count_nonfinite(g.dq) + count_nonfinite(g.dk) + count_nonfinite(g.dv), 0);
        first = std::move(g);
        continue;
      }
      // Bitwise: compare the bytes (== on floats would also accept -0 for +0).
      auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
        return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
      };
      ASSERT_TRUE(same(g.dq, first.dq)) << "dq differs in run " << r;
      ASSERT_TRUE(same(g.dk, first.dk)) << "dk differs in run " << r;
      ASSERT_TRUE(same(g.dv, first.dv)) << "dv differs in run " << r;
    }
    check_bwd(c, "deterministic", /*deterministic=*/true);
  }
}

// Attention sinks: dq, dk, dv need nothing new (the forward's LSE includes the sink, so
// P = exp(S - LSE) is already normalized over keys and sink), and dsinks comes from the
// preprocess's D; both are checked by the 3x rule against the CPU reference (check_bwd). The
// forward's o and LSE come from the CPU backend, with the sinks. Rows with no visible key
// (causal with s_q > s_k, windows, seqused_k = 0) have o = 0 and LSE = the sink: D = 0, nothing
// flows through them.
TEST_F(BwdSm80, Sinks) {
  for (DType t : {DType::kBFloat16, DType::kFloat16}) {
    if (!dtype_compiled(t)) continue;
    for (int d : {64, 128, 256}) {
      if (!hdim_compiled(d)) continue;
      AttnConfig c = base(t, 2, 97, 113, 4, 2, d);
      c.sinks = true;
      check_bwd(c, "sinks gqa");
      c.causal = true;
      c.seqlen_q = 200;
      c.seqlen_k = 70;
      check_bwd(c, "sinks causal s_q > s_k");
    }
  }
  const DType t = any_dtype();
  const int d = any_hdim(128);
  AttnConfig w = base(t, 2, 130, 70, 6, 1, d);
  w.sinks = true;
  w.window_left = 10;
  w.window_right = 0;
  check_bwd(w, "sinks window mqa");
  AttnConfig sc = base(t, 2, 150, 130, 2, 2, d);
  sc.sinks = true;
  sc.softcap = 0.8f;
  sc.softmax_scale = 2.f;
  sc.causal = true;
  check_bwd(sc, "sinks softcap causal");
  AttnConfig a = base(t, 2, 130, 150, 4, 2, d);
  a.sinks = true;
  a.alibi = true;
  a.alibi_per_batch = true;
  a.padded_strides = true;
  check_bwd(a, "sinks alibi padded");
  AttnConfig dr = base(t, 2, 113, 97, 4, 2, d);
  dr.sinks = true;
  dr.p_dropout = 0.17f;
  dr.philox_seed = fresh_seed();
  dr.philox_offset = fresh_seed() % 1000;
  dr.causal = true;
  check_bwd(dr, "sinks dropout causal");
  AttnConfig v = base(t, 4, 0, 0, 4, 2, any_hdim(64));
  v.sinks = true;
  v.seqlens_q = {7, 0, 97, 140};
  v.seqlens_k = {150, 6, 7, 0};
  v.seqlen_q = 140;
  v.seqlen_k = 150;
  v.causal = true;
  check_bwd(v, "sinks varlen causal");
  AttnConfig u = base(t, 3, 0, 0, 2, 1, any_hdim(64));
  u.sinks = true;
  u.seqlens_q = {20, 13, 5};
  u.seqlens_k = {140, 13, 9};
  u.seqused_k = {77, 0, 9};
  u.seqlen_q = 20;
  u.seqlen_k = 140;
  check_bwd(u, "sinks varlen seqused");
}

// dsinks is a sum over every query row of a head; the backward computes it with a fixed order
// (per-thread partials, then a fixed tree), so it is bitwise repeatable with or without
// `deterministic`, and overwritten (not added to) on every call: each run starts from NaN.
TEST_F(BwdSm80, SinksGradientIsBitwiseRepeatableAndOverwritten) {
  const DType t = any_dtype();
  constexpr int kRuns = 20;
  std::vector<AttnConfig> cases;
  AttnConfig c = base(t, 2, 700, 600, 4, 2, any_hdim(128));  // rows 0..99 see no key
  c.sinks = true;
  c.causal = true;
  cases.push_back(c);
  AttnConfig v = base(t, 3, 0, 0, 4, 1, any_hdim(64));
  v.sinks = true;
  v.seqlens_q = {300, 0, 1077};
  v.seqlens_k = {700, 5, 650};
  v.seqlen_q = 1077;
  v.seqlen_k = 700;
  cases.push_back(v);
  for (const AttnConfig& cc : cases)
    for (bool deterministic : {false, true}) {
      SCOPED_TRACE(cc.str() + (deterministic ? " deterministic" : ""));
      BwdProblem bp = make_bwd_problem(cc, fresh_seed());
      ASSERT_TRUE((cc.varlen() ? mha_varlen_fwd(bp.fwd.params) : mha_fwd(bp.fwd.params)).ok());
      bp.bind();
      bp.params.deterministic = deterministic;
      DeviceBwdProblem dev(bp);
      std::vector<float> first;
      for (int r = 0; r < kRuns; ++r) {
        dev.dsinks = DeviceBuffer::from(bp.dsinks);  // NaN before every run
        dev.params.dsinks = dev.dsinks.as<float>();
        const Status s = run_bwd(dev.params);
        ASSERT_TRUE(s.ok()) << s.to_string();
        BwdProblem got = bp;
        got.bind();
        dev.copy_back(got);
        EXPECT_EQ(count_nonfinite(got.dsinks), 0) << "dsinks not written in run " << r;
        if (r == 0) {
          first = got.dsinks;
          continue;
        }
        ASSERT_EQ(0, std::memcmp(got.dsinks.data(), first.data(), first.size() * sizeof(float)))
            << "dsinks differs in run " << r;
      }
    }
  check_bwd(cases[0], "sinks deterministic", /*deterministic=*/true);
}

// Bad input is rejected before anything is written: h not a multiple of h_k (invalid), and paged
// KV (no backward).
TEST_F(BwdSm80, BadInputRejectedWithoutWriting) {
  AttnConfig c = base(any_dtype(), 2, 17, 33, 4, 2, any_hdim(64));
  BwdProblem bp = make_bwd_problem(c, fresh_seed());
  ASSERT_TRUE(mha_fwd(bp.fwd.params).ok());
  bp.bind();
  DeviceBwdProblem dev(bp);
  BwdParams bad = dev.params;
  bad.h_k = 3;
  Status s = mha_bwd(bad);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  bad = dev.params;
  int table[2] = {0, 1};
  DeviceBuffer dtable = DeviceBuffer::from_host(table, sizeof(table));
  bad.block_table = dtable.as<int>();
  bad.page_block_size = 64;
  bad.max_blocks_per_seq = 1;
  bad.num_blocks = 2;
  s = mha_bwd(bad);
  EXPECT_FALSE(s.ok()) << "paged KV backward accepted";
  dev.copy_back(bp);
  EXPECT_EQ(count_nan(bp.dq), bp.dq.numel) << "dq written";
  EXPECT_EQ(count_nan(bp.dk), bp.dk.numel) << "dk written";
  EXPECT_EQ(count_nan(bp.dv), bp.dv.numel) << "dv written";
}

// fp32 and accumulated gradient outputs (BwdParams::dqkv_fp32, dqkv_accumulate: context
// parallelism) are CPU-only for now: the GPU backward returns kNotSupported naming the field and
// writes nothing.
TEST_F(BwdSm80, Fp32AndAccumulatedGradientsAreNotSupported) {
  AttnConfig c = base(any_dtype(), 2, 17, 33, 4, 2, any_hdim(64));
  for (bool fp32 : {true, false}) {
    BwdProblem bp = make_bwd_problem(c, fresh_seed());
    ASSERT_TRUE(mha_fwd(bp.fwd.params).ok());
    if (fp32)
      for (Buffer* g : {&bp.dq, &bp.dk, &bp.dv}) *g = g->converted(DType::kFloat32);
    bp.bind();
    DeviceBwdProblem dev(bp);
    BwdParams p = dev.params;
    const char* field = fp32 ? "dqkv_fp32" : "dqkv_accumulate";
    p.dqkv_fp32 = fp32;
    p.dqkv_accumulate = !fp32;
    const Status s = mha_bwd(p);
    EXPECT_EQ(s.code(), StatusCode::kNotSupported) << s.to_string();
    EXPECT_NE(s.message().find(field), std::string::npos) << s.message();
    dev.copy_back(bp);
    EXPECT_EQ(count_nan(bp.dq), bp.dq.numel) << field << ": dq written";
    EXPECT_EQ(count_nan(bp.dk), bp.dk.numel) << field << ": dk written";
    EXPECT_EQ(count_nan(bp.dv), bp.dv.numel) << field << ": dv written";
  }
}

}  // namespace
}  // namespace flashattn::testing
