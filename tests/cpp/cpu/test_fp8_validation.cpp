// FP8 argument rules (docs/validation.md, "FP8"): each test breaks one rule of a valid fp8 call
// and asserts InvalidArgument naming the argument, with the output untouched (still the NaN
// poison); and the GPU routing: fp8 is covered by no GPU kernel path (NotSupported naming fp8).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "api/route.h"
#include "api/validate.h"
#include "flashattn/flashattn.h"
#include "testing/problem.h"

namespace flashattn {
namespace {

using testing::AttnConfig;
using testing::Buffer;
using testing::FwdProblem;

::testing::AssertionResult Rejected(const Status& s, const std::string& arg,
                                    StatusCode code = StatusCode::kInvalidArgument) {
  if (s.code() != code)
    return ::testing::AssertionFailure() << "expected " << status_code_name(code) << " naming '"
                                         << arg << "', got " << s.to_string();
  const std::string& m = s.message();
  if (m.compare(0, arg.size(), arg) != 0 || m.size() == arg.size() ||
      (m[arg.size()] != ':' && m[arg.size()] != '['))
    return ::testing::AssertionFailure() << "message does not start with '" << arg << "': " << m;
  return ::testing::AssertionSuccess();
}

bool all_nan(const Buffer& b) {
  for (int64_t i = 0; i < b.numel; ++i)
    if (!std::isnan(b.get(i))) return false;
  return true;
}

// A valid fp8 call with per-head and per-block descales: b 2, s_q 7, s_k 13, GQA 4/2, d 16.
struct Fp8Call {
  FwdProblem pr;
  std::vector<float> qd, kd, vd, qb, kb, vb;

  Fp8Call() {
    AttnConfig c;
    c.dtype = DType::kFloat8E4M3;
    c.b = 2;
    c.seqlen_q = 7;
    c.seqlen_k = 13;
    c.h = 4;
    c.h_k = 2;
    c.d = 16;
    pr = testing::make_fwd_problem(c, std::random_device{}());
    pr.o = Buffer::make(DType::kBFloat16, pr.o.numel);
    pr.o.fill_nan();
    pr.bind();
    qd.assign(4, 0.5f);
    kd.assign(4, 2.f);
    vd.assign(4, 1.5f);
    qb.assign(2 * 4 * 2, 1.f);  // blocks of 4 q rows: 2 per head
    kb.assign(2 * 2 * 3, 1.f);  // blocks of 5 key rows: 3 per kv head
    vb.assign(2 * 2 * 3, 1.f);
    FwdParams& p = pr.params;
    p.q_descale = qd.data();
    p.k_descale = kd.data();
    p.v_descale = vd.data();
    p.q_descale_batch_stride = p.k_descale_batch_stride = p.v_descale_batch_stride = 2;
    p.q_descale_head_stride = p.k_descale_head_stride = p.v_descale_head_stride = 1;
    p.descale_block_m = 4;
    p.descale_block_n = 5;
    p.q_block_descale = qb.data();
    p.q_block_descale_batch_stride = 8;
    p.q_block_descale_head_stride = 2;
    p.k_block_descale = kb.data();
    p.v_block_descale = vb.data();
    p.k_block_descale_batch_stride = p.v_block_descale_batch_stride = 6;
    p.k_block_descale_head_stride = p.v_block_descale_head_stride = 3;
  }
};

// Applies `breakit` to a valid call, which must then be rejected naming `arg`, untouched.
void expect_rejected(const std::function<void(Fp8Call&)>& breakit, const std::string& arg) {
  Fp8Call ok;
  ASSERT_TRUE(mha_fwd(ok.pr.params).ok()) << "the unbroken call must pass";
  Fp8Call c;
  breakit(c);
  EXPECT_TRUE(Rejected(mha_fwd(c.pr.params), arg));
  EXPECT_TRUE(all_nan(c.pr.o)) << "output touched";
}

TEST(Fp8Validation, ValidCallPassesAndUnsetOutputIsBf16) {
  Fp8Call c;
  const FwdParams r = detail::resolve(c.pr.params);
  EXPECT_EQ(r.out_dtype, DType::kBFloat16);
  EXPECT_TRUE(detail::validate_fwd(r, Backend::kCpu, false).ok());
  EXPECT_TRUE(mha_fwd(c.pr.params).ok());
  EXPECT_FALSE(all_nan(c.pr.o));
  // Non-fp8 dtypes resolve out_dtype to themselves.
  FwdParams p;
  p.dtype = DType::kFloat16;
  EXPECT_EQ(detail::resolve(p).out_dtype, DType::kFloat16);
}

TEST(Fp8Validation, OutputMustBe16Bit) {
  expect_rejected([](Fp8Call& c) { c.pr.params.out_dtype = DType::kFloat32; }, "out_dtype");
  expect_rejected([](Fp8Call& c) { c.pr.params.out_dtype = DType::kFloat8E4M3; }, "out_dtype");
}

TEST(Fp8Validation, OutputTypeOnlyForFp8) {
  AttnConfig c;
  c.dtype = DType::kBFloat16;
  FwdProblem pr = testing::make_fwd_problem(c, 1);
  pr.params.out_dtype = DType::kFloat16;
  EXPECT_TRUE(Rejected(mha_fwd(pr.params), "out_dtype"));
  pr.params.out_dtype = DType::kBFloat16;
  EXPECT_TRUE(mha_fwd(pr.params).ok());
}

TEST(Fp8Validation, DescalesOnlyWithFp8) {
  AttnConfig c;
  c.dtype = DType::kBFloat16;
  FwdProblem pr = testing::make_fwd_problem(c, 2);
  const float one = 1.f;
  for (const char* name : {"q_descale", "k_descale", "v_descale", "q_block_descale",
                           "k_block_descale", "v_block_descale"}) {
    FwdParams p = pr.params;
    const std::string n = name;
    if (n == "q_descale") p.q_descale = &one;
    if (n == "k_descale") p.k_descale = &one;
    if (n == "v_descale") p.v_descale = &one;
    if (n == "q_block_descale") p.q_block_descale = &one;
    if (n == "k_block_descale") p.k_block_descale = &one;
    if (n == "v_block_descale") p.v_block_descale = &one;
    EXPECT_TRUE(Rejected(mha_fwd(p), name));
    EXPECT_NE(mha_fwd(p).message().find("fp8"), std::string::npos);
  }
  FwdParams p = pr.params;
  p.descale_block_n = 128;
  EXPECT_TRUE(Rejected(mha_fwd(p), "descale_block_n"));
}

TEST(Fp8Validation, BlockSizesGoWithBlockDescales) {
  expect_rejected([](Fp8Call& c) { c.pr.params.descale_block_m = 0; }, "descale_block_m");
  expect_rejected([](Fp8Call& c) { c.pr.params.descale_block_n = -3; }, "descale_block_n");
  expect_rejected(
      [](Fp8Call& c) {
        c.pr.params.q_block_descale = nullptr;  // a block size without factors
      },
      "descale_block_m");
  expect_rejected(
      [](Fp8Call& c) {
        c.pr.params.k_block_descale = c.pr.params.v_block_descale = nullptr;
      },
      "descale_block_n");
}

TEST(Fp8Validation, DescaleLayouts) {
  expect_rejected([](Fp8Call& c) { c.pr.params.k_descale_head_stride = -1; },
                  "k_descale_head_stride");
  expect_rejected([](Fp8Call& c) { c.pr.params.v_block_descale_batch_stride = -6; },
                  "v_block_descale_batch_stride");
  // An output may not share memory with a descale.
  expect_rejected(
      [](Fp8Call& c) {
        c.pr.params.softmax_lse_ptr = const_cast<float*>(c.pr.params.q_block_descale);
      },
      "softmax_lse_ptr");
}

TEST(Fp8Validation, DescaleValuesMustBeFiniteAndPositive) {
  for (float bad : {0.f, -1.f, std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    expect_rejected([bad](Fp8Call& c) { c.kd[3] = bad; }, "k_descale");
    expect_rejected([bad](Fp8Call& c) { c.vb[11] = bad; }, "v_block_descale");
    expect_rejected([bad](Fp8Call& c) { c.qb[15] = bad; }, "q_block_descale");
  }
  // The message locates the element: kv head 1 of batch 1, block 2.
  Fp8Call c;
  c.kb[1 * 6 + 1 * 3 + 2] = -2.f;
  EXPECT_NE(mha_fwd(c.pr.params).message().find("k_block_descale[1][1][2]"), std::string::npos)
      << mha_fwd(c.pr.params).message();
}

TEST(Fp8Validation, InferenceOnly) {
  expect_rejected([](Fp8Call& c) { c.pr.params.p_dropout = 0.1f; }, "p_dropout");
  expect_rejected(
      [](Fp8Call& c) {
        c.pr.p = Buffer::make(DType::kBFloat16, 2 * 4 * 7 * 13);
        c.pr.params.p_ptr = c.pr.p.data();
      },
      "p_ptr");
}

TEST(Fp8Validation, NoBackward) {
  Fp8Call c;
  BwdParams b;
  static_cast<FwdParams&>(b) = c.pr.params;
  Buffer g = Buffer::make(DType::kFloat8E4M3, c.pr.q.numel);
  b.do_ptr = c.pr.o.data();
  b.dq_ptr = b.dk_ptr = b.dv_ptr = g.data();
  const Status s = mha_bwd(b);
  EXPECT_TRUE(Rejected(s, "dtype"));
  EXPECT_NE(s.message().find("no backward"), std::string::npos) << s.message();
}

TEST(Fp8Validation, KVCacheRotaryIsRefused) {
  testing::KVCacheConfig kc;
  kc.attn.dtype = DType::kFloat8E4M3;
  kc.attn.h = kc.attn.h_k = 2;
  kc.seqlen_new = 2;
  kc.rotary_dim = 8;
  testing::KVCacheProblem pr = testing::make_kvcache_problem(kc, 3);
  pr.o = Buffer::make(DType::kBFloat16, pr.o.numel);
  pr.o.fill_nan();
  pr.bind();
  EXPECT_TRUE(Rejected(mha_fwd_kvcache(pr.params), "rotary_cos"));
  EXPECT_TRUE(all_nan(pr.o));
  kc.rotary_dim = 0;
  testing::KVCacheProblem ok = testing::make_kvcache_problem(kc, 4);
  ok.o = Buffer::make(DType::kBFloat16, ok.o.numel);
  ok.bind();
  EXPECT_TRUE(mha_fwd_kvcache(ok.params).ok()) << mha_fwd_kvcache(ok.params).to_string();
}

TEST(Fp8Validation, CombineHasNoFp8Output) {
  CombineParams p;
  p.dtype = DType::kFloat8E4M3;
  p.num_splits = p.b = p.seqlen_q = p.h = p.d = 1;
  EXPECT_TRUE(Rejected(detail::validate_combine(p, Backend::kCpu), "dtype"));
}

// The GPU: the Hopper FP8 forward takes dense fp8 inputs with per-head descales and d % 16 == 0;
// the entry points refuse the rest before dispatch, naming what is not covered, and the KV-cache
// entry refuses fp8 altogether. Route::fp8_sm90_uncovered adds what only the dispatch knows.
TEST(Fp8Route, GpuCoverage) {
  Fp8Call c;  // per-head and per-block descales, d = 16
  std::string why = route::gpu_unsupported(c.pr.params);
  EXPECT_NE(why.find("per-block descales"), std::string::npos) << why;
  FwdParams p = c.pr.params;
  p.q_block_descale = p.k_block_descale = p.v_block_descale = nullptr;
  p.descale_block_m = p.descale_block_n = 0;
  EXPECT_EQ(route::gpu_unsupported(p), "");
  FwdParams odd = p;
  odd.d = odd.dv = 24;
  EXPECT_NE(route::gpu_unsupported(odd).find("head dim 24"), std::string::npos);
  FwdParams var = p;
  static const int cu[3] = {0, 3, 7};
  var.cu_seqlens_q = var.cu_seqlens_k = cu;
  EXPECT_NE(route::gpu_unsupported(var).find("varlen"), std::string::npos);
  FwdParams paged = p;
  static const int table[2] = {0, 1};
  paged.block_table = table;
  EXPECT_NE(route::gpu_unsupported(paged).find("paged KV"), std::string::npos);
  KVCacheParams kv;
  static_cast<FwdParams&>(kv) = p;
  EXPECT_NE(route::gpu_unsupported(kv).find("KV-cache"), std::string::npos);

  route::FwdRequest hopper;
  hopper.device_runs_sm90 = true;
  hopper.sm90_compiled = true;
  EXPECT_EQ(route::fp8_sm90_uncovered(p, hopper), "");
  EXPECT_EQ(route::fwd_sm90_uncovered(p, hopper), "");
  route::FwdRequest ampere = hopper;
  ampere.device_runs_sm90 = false;
  EXPECT_NE(route::fp8_sm90_uncovered(p, ampere).find("Hopper"), std::string::npos);
  route::FwdRequest missing = hopper;
  missing.sm90_compiled = false;
  EXPECT_NE(route::fp8_sm90_uncovered(p, missing).find("not compiled"), std::string::npos);
  {
    const GpuPath saved = gpu_path();
    set_gpu_path(GpuPath::kSm80);
    EXPECT_NE(route::fp8_sm90_uncovered(p, hopper).find("SM80"), std::string::npos);
    set_gpu_path(saved);
  }
  FwdParams bf16 = c.pr.params;
  bf16.dtype = DType::kBFloat16;
  EXPECT_EQ(route::gpu_unsupported(bf16), "");
  // Validation of an fp8 call for the GPU passes (it is a valid request): a refusal is
  // NotSupported, from the routing, never a conversion to another dtype.
  EXPECT_TRUE(detail::validate_fwd(detail::resolve(c.pr.params), Backend::kCuda, false).ok())
      << detail::validate_fwd(detail::resolve(c.pr.params), Backend::kCuda, false).to_string();
}

}  // namespace
}  // namespace flashattn
