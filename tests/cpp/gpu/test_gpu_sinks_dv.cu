// Attention sinks and a V head dim other than d on device memory, skipped without a GPU.
//
// Sinks (the SM80 path in every forward family; api/route.h keeps them off the Hopper path):
//  - forward against the CPU reference (small shapes, every row) and the GPU fp32 reference
//    (large shapes) by flash_attn's 2x rule (fwd_checks_sm80.h; its low-precision attention
//    takes the sink as one more fp32 softmax term), with outputs NaN-poisoned and a second run
//    bitwise equal: masks that leave rows with no key (o = 0, LSE = the sink), GQA, varlen with
//    seqused_k, softcap, ALiBi, dropout and p_ptr (the probabilities leave the sink its share),
//    split-KV through both merges (the cluster merge of a contiguous K/V on sm_90 and the
//    combine kernel: paged K/V or more than 8 splits), paged KV, sinks far above and below the
//    scores;
//  - a sink of -inf gives exactly the bits of no sink, in every family;
//  - the backward's dsinks: tests/cpp/gpu/test_bwd_sm80.cu (BwdSm80.Sinks*); the KV-cache path:
//    tests/cpp/gpu/test_gpu_kvcache.cu (KVCacheGpu.Sinks).
// dv != d: the GPU kernels do not take it yet, so every GPU entry point must return NotSupported
// naming dv (with or without sinks) and leave every output as it was: no silent wrong answer, no
// half-written result, no append into the KV cache. The requests are valid (validation passes
// them on the GPU: bf16, head dims multiples of 8, aligned strides), so the refusal is the
// dispatch's.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "api/validate.h"
#include "gpu/fwd_checks_sm80.h"
#include "gpu/gpu_testing.h"

namespace flashattn::testing {
namespace {

// ----------------------------------------------------------------------- sinks, forward --

class GpuSinksFwd : public GpuTest {};

AttnConfig with_sinks(AttnConfig c) {
  c.sinks = true;
  return c;
}

// Masks whose rows see no key (causal and a window with s_q > s_k: the first rows), GQA / MQA,
// score mods, odd sizes: the plain family.
TEST_F(GpuSinksFwd, MasksScoreModsAndGqaAgainstCpuReference) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128, 256, 96}) {
      if (!hdim_compiled(d)) continue;
      check_small("sinks", with_sinks(base(t, 2, 97, 113, 4, 2, d)));
      check_small("sinks 1x1", with_sinks(base(t, 1, 1, 1, 2, 1, d)));
      AttnConfig c = with_sinks(base(t, 2, 150, 70, 4, 4, d));  // rows 0..79 see no key
      c.causal = true;
      check_small("sinks causal s_q > s_k", c);
      AttnConfig w = with_sinks(base(t, 1, 130, 70, 6, 2, d));
      w.window_left = 10;
      w.window_right = 0;
      check_small("sinks window s_q > s_k", w);
      AttnConfig sc = with_sinks(base(t, 2, 113, 97, 4, 1, d));
      sc.softcap = 2.f;
      sc.causal = true;
      check_small("sinks softcap causal mqa", sc);
      AttnConfig a = with_sinks(base(t, 2, 33, 257, 4, 2, d));
      a.alibi = true;
      a.alibi_per_batch = true;
      a.window_left = 40;
      a.window_right = 7;
      a.padded_strides = true;
      check_small("sinks alibi window padded", a);
    }
  }
}

TEST_F(GpuSinksFwd, VarlenWithSequsedKAndEmptySequences) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128}) {
      if (!hdim_compiled(d)) continue;
      AttnConfig v = with_sinks(base(t, 4, 0, 0, 6, 2, d));
      v.seqlens_q = {1, 77, 0, 140};
      v.seqlens_k = {50, 200, 9, 40};
      v.seqused_k = {50, 0, 9, 33};  // sequence 1 sees no key at all
      v.seqlen_q = 140;
      v.seqlen_k = 200;
      v.causal = true;
      check_small("sinks varlen seqused_k causal", v);
      v.causal = false;
      v.window_left = 20;
      v.window_right = 3;
      v.softcap = 5.f;
      check_small("sinks varlen seqused_k window softcap", v);
    }
  }
}

// Sinks far above and far below every score: the sink takes (almost) all or none of each row.
TEST_F(GpuSinksFwd, ExtremeSinks) {
  for (DType t : compiled_dtypes()) {
    const int d = hdim_compiled(128) ? 128 : 64;
    if (!hdim_compiled(d)) continue;
    for (int splits : {1, 3}) {
      AttnConfig c = with_sinks(base(t, 2, 70, 150, 4, 2, d));
      c.causal = true;
      c.num_splits = splits;
      const uint64_t seed = fresh_seed();
      FwdProblem pr = make_fwd_problem(c, seed);
      pr.sinks = {30.f, -30.f, 8.f, -std::numeric_limits<float>::infinity()};
      pr.bind();
      check_small_problem(splits > 1 ? "sinks extreme split" : "sinks extreme", pr, seed);
    }
  }
}

// Dropout (the dropout family) and p_ptr: the probabilities are exp(s - lse) with the
// sink-inclusive LSE, so they sum to 1 - P_sink, as the CPU reference returns them.
TEST_F(GpuSinksFwd, DropoutAndProbabilities) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128}) {
      if (!hdim_compiled(d)) continue;
      AttnConfig c = with_sinks(base(t, 2, 97, 113, 3, 3, d));
      c.p_dropout = 0.17f;
      c.return_probs = true;
      check_dropout_probs("sinks dropout", c);
      AttnConfig cc = with_sinks(base(t, 1, 130, 70, 4, 2, d));  // s_q > s_k: empty rows
      cc.p_dropout = 0.5f;
      cc.causal = true;
      cc.return_probs = true;
      check_dropout_probs("sinks dropout causal", cc);
      AttnConfig a = with_sinks(base(t, 2, 33, 257, 2, 1, d));
      a.p_dropout = 0.3f;
      a.alibi = true;
      a.window_left = 40;
      a.window_right = 7;
      check_dropout_probs("sinks dropout alibi window", a);
      AttnConfig v = with_sinks(base(t, 4, 0, 0, 6, 2, d));
      v.seqlens_q = {1, 77, 0, 140};
      v.seqlens_k = {50, 200, 9, 140};
      v.seqlen_q = 140;
      v.seqlen_k = 200;
      v.p_dropout = 0.25f;
      v.causal = true;
      check_dropout_probs("sinks dropout varlen", v);
      AttnConfig p = with_sinks(base(t, 2, 45, 70, 2, 1, d));  // p_ptr without dropout
      p.return_probs = true;
      p.softcap = 2.f;
      check_dropout_probs("sinks probs softcap", p);
    }
  }
}

// Split-KV: the partials leave the sink out and the merge adds it once. A contiguous K/V with
// 2..8 splits merges inside a thread-block cluster on sm_90; paged K/V and 9+ splits merge in
// the combine kernel; the heuristic (0) may pick either.
TEST_F(GpuSinksFwd, SplitKvAndPaged) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128, 256}) {
      if (!hdim_compiled(d)) continue;
      for (int splits : {2, 3, 8, 9, 0}) {
        AttnConfig c = with_sinks(base(t, 2, 70, 900, 4, 2, d));
        c.num_splits = splits;
        check_small("sinks split gqa", c);
        AttnConfig e = with_sinks(base(t, 2, 700, 600, 2, 2, d));  // rows 0..99 see no key
        e.causal = true;
        e.num_splits = splits;
        check_small("sinks split causal s_q > s_k", e);
        const uint64_t seed = fresh_seed();
        AttnConfig pc = with_sinks(base(t, 2, 33, 700, 4, 1, d));
        pc.causal = true;
        pc.num_splits = splits;
        check_small_problem("sinks split paged", to_paged(make_fwd_problem(pc, seed), 16, seed + 1),
                            seed);
      }
      const uint64_t seed = fresh_seed();
      AttnConfig pg = with_sinks(base(t, 2, 77, 300, 4, 2, d));  // paged, one split
      pg.alibi = true;
      pg.softcap = 3.f;
      check_small_problem("sinks paged alibi softcap",
                          to_paged(make_fwd_problem(pg, seed), 3, seed + 1), seed);
      AttnConfig v = with_sinks(base(t, 4, 0, 0, 4, 1, d));  // varlen split, paged
      v.num_splits = 3;
      v.seqlens_q = {17, 200, 1, 0};
      v.seqlens_k = {333, 97, 1, 64};
      v.seqused_k = {300, 97, 0, 0};
      v.seqlen_q = 200;
      v.seqlen_k = 333;
      v.window_left = 100;
      v.window_right = 10;
      check_small("sinks split varlen window", v);
      check_small_problem("sinks split varlen paged",
                          to_paged(make_fwd_problem(v, seed + 2), 64, seed + 3), seed + 2);
    }
  }
}

// A sink of -inf is no sink: the same bits as a null sinks pointer, in every family and merge.
TEST_F(GpuSinksFwd, MinusInfSinksGiveTheBitsOfNoSinks) {
  for (DType t : compiled_dtypes()) {
    const int d = hdim_compiled(128) ? 128 : 64;
    if (!hdim_compiled(d)) continue;
    std::vector<std::pair<std::string, AttnConfig>> cases;
    AttnConfig c = with_sinks(base(t, 2, 150, 70, 4, 2, d));
    c.causal = true;  // rows with no key: LSE = +inf either way
    cases.push_back({"plain causal s_q > s_k", c});
    AttnConfig dr = c;
    dr.p_dropout = 0.2f;
    dr.return_probs = true;
    cases.push_back({"dropout probs", dr});
    for (int splits : {3, 9}) {
      AttnConfig s = with_sinks(base(t, 2, 70, 900, 4, 2, d));
      s.causal = true;
      s.seqlen_q = 950;
      s.num_splits = splits;
      cases.push_back({"split " + std::to_string(splits), s});
    }
    AttnConfig v = with_sinks(base(t, 3, 0, 0, 4, 1, d));
    v.seqlens_q = {17, 0, 130};
    v.seqlens_k = {333, 9, 64};
    v.seqlen_q = 130;
    v.seqlen_k = 333;
    v.causal = true;
    cases.push_back({"varlen causal", v});
    for (const auto& [what, cfg] : cases) {
      const uint64_t seed = fresh_seed();
      SCOPED_TRACE(what + " " + cfg.str() + " seed=" + std::to_string(seed));
      FwdProblem with = make_fwd_problem(cfg, seed);
      with.sinks.assign(with.sinks.size(), -std::numeric_limits<float>::infinity());
      with.bind();
      FwdProblem without = with;
      without.bind();
      without.params.sinks = nullptr;
      for (bool paged : {false, true}) {
        if (paged && cfg.p_dropout > 0.f) continue;  // dropout has no paged kernel
        const FwdProblem a = paged ? to_paged(with, 16, seed + 1) : with;
        FwdProblem b = paged ? to_paged(without, 16, seed + 1) : without;
        b.params.sinks = nullptr;
        const RunResult ra = run_gpu(a), rb = run_gpu(b);
        ASSERT_TRUE(ra.status.ok()) << ra.status.to_string();
        ASSERT_TRUE(rb.status.ok()) << rb.status.to_string();
        EXPECT_EQ(0, std::memcmp(ra.o_raw.data(), rb.o_raw.data(), ra.o_raw.bytes.size()))
            << (paged ? "paged: " : "") << "outputs differ";
        EXPECT_EQ(0, std::memcmp(ra.lse.data(), rb.lse.data(), ra.lse.size() * sizeof(float)))
            << (paged ? "paged: " : "") << "LSE differs";
      }
    }
  }
}

// Large shapes against the GPU fp32 reference (sampled rows by the 2x rule, every row within
// the bound of the sampled rows).
TEST_F(GpuSinksFwd, LargeAgainstGpuReference) {
  for (DType t : compiled_dtypes()) {
    if (hdim_compiled(128)) {
      AttnConfig c = with_sinks(base(t, 2, 1, 32768, 8, 2, 128));
      c.num_splits = 0;
      const uint64_t seed = fresh_seed();
      check_large_problem("large sinks decode paged split",
                          to_paged(make_fwd_problem(c, seed), 16, seed + 1), seed);
      AttnConfig p = with_sinks(base(t, 1, 16, 20000, 4, 4, 128));
      p.num_splits = 128;
      p.causal = true;
      check_large("large sinks prefill split=128 causal", p);
      AttnConfig pr = with_sinks(base(t, 1, 2048, 3000, 4, 2, 128));
      pr.causal = true;
      check_large("large sinks prefill causal gqa", pr);
      AttnConfig dr = pr;
      dr.p_dropout = 0.2f;
      check_large("large sinks dropout causal", dr);
    }
    if (hdim_compiled(64)) {
      AttnConfig v = with_sinks(base(t, 3, 0, 0, 4, 2, 64));
      v.num_splits = 0;
      v.seqlens_q = {3, 1, 2};
      v.seqlens_k = {9000, 1, 20000};
      v.seqlen_q = 3;
      v.seqlen_k = 20000;
      check_large("large sinks varlen split", v);
      AttnConfig w = with_sinks(base(t, 2, 3000, 1500, 4, 1, 64));  // rows with no key
      w.causal = true;
      w.window_left = 256;
      w.softcap = 10.f;
      check_large("large sinks causal window softcap s_q > s_k", w);
    }
  }
}

// ---------------------------------------------------------------------------- dv != d --

// What one case turns on, and the word its NotSupported message must contain.
struct Feature {
  bool sinks;
  int dv;  // 0: = d
  const char* named;
};
const Feature kFeatures[] = {{false, 32, "dv"}, {true, 96, "dv"}};

AttnConfig config(const Feature& f, bool varlen) {
  AttnConfig c;
  c.dtype = DType::kBFloat16;
  c.b = 2;
  c.seqlen_q = 65;
  c.seqlen_k = 130;
  c.h = 4;
  c.h_k = 2;
  c.d = 64;
  c.dv = f.dv;
  c.sinks = f.sinks;
  c.causal = true;
  if (varlen) {
    c.seqlens_q = {65, 17};
    c.seqlens_k = {130, 40};
  }
  return c;
}

bool all_nan(const Buffer& b) {
  for (int64_t i = 0; i < b.numel; ++i)
    if (!std::isnan(b.get(i))) return false;
  return true;
}
bool all_nan(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isnan(x)) return false;
  return true;
}

::testing::AssertionResult NotSupportedNaming(const Status& s, const std::string& word) {
  if (s.code() != StatusCode::kNotSupported)
    return ::testing::AssertionFailure() << "expected NotSupported naming '" << word << "', got "
                                         << s.to_string();
  if (s.message().find(word) == std::string::npos)
    return ::testing::AssertionFailure() << "the message does not name '" << word
                                         << "': " << s.message();
  return ::testing::AssertionSuccess();
}

class GpuSinksDv : public GpuTest {};

TEST_F(GpuSinksDv, ForwardIsRefusedAndWritesNothing) {
  for (const Feature& f : kFeatures)
    for (bool varlen : {false, true}) {
      const AttnConfig c = config(f, varlen);
      SCOPED_TRACE(c.str());
      FwdProblem pr = make_fwd_problem(c, fresh_seed());
      ASSERT_TRUE(detail::validate_fwd(detail::resolve(pr.params), Backend::kCuda, varlen).ok());
      DeviceFwdProblem dev(pr);
      const Status s = varlen ? mha_varlen_fwd(dev.params) : mha_fwd(dev.params);
      EXPECT_TRUE(NotSupportedNaming(s, f.named));
      dev.copy_back(pr);
      EXPECT_TRUE(all_nan(pr.o)) << "o was written";
      EXPECT_TRUE(all_nan(pr.lse)) << "softmax_lse was written";
      std::printf("[gpu-sinks-dv] forward%s: %s\n", varlen ? " varlen" : "",
                  s.to_string().c_str());
    }
}

TEST_F(GpuSinksDv, BackwardIsRefusedAndWritesNothing) {
  for (const Feature& f : kFeatures)
    for (bool varlen : {false, true})
      for (bool want_dsinks : {true, false}) {
        if (want_dsinks && !f.sinks) continue;
        const AttnConfig c = config(f, varlen);
        SCOPED_TRACE(c.str() + (want_dsinks ? " dsinks" : ""));
        BwdProblem bp = make_bwd_problem(c, fresh_seed());
        // The forward's outputs are inputs of the backward: the CPU backend provides them.
        ASSERT_TRUE((varlen ? mha_varlen_fwd(bp.fwd.params) : mha_fwd(bp.fwd.params)).ok());
        bp.bind();
        if (!want_dsinks) bp.params.dsinks = nullptr;
        ASSERT_TRUE(detail::validate_bwd(detail::resolve(bp.params), Backend::kCuda, varlen).ok());
        DeviceBwdProblem dev(bp);
        const Status s = varlen ? mha_varlen_bwd(dev.params) : mha_bwd(dev.params);
        EXPECT_TRUE(NotSupportedNaming(s, f.named));
        dev.copy_back(bp);
        EXPECT_TRUE(all_nan(bp.dq)) << "dq was written";
        EXPECT_TRUE(all_nan(bp.dk)) << "dk was written";
        EXPECT_TRUE(all_nan(bp.dv)) << "dv was written";
        EXPECT_TRUE(all_nan(bp.dsinks)) << "dsinks was written";
      }
}

// The KV-cache call appends into the cache in place: a refused request must leave the cache
// byte for byte as it was, on the paged and the contiguous path, with and without rotary.
TEST_F(GpuSinksDv, KVCacheIsRefusedBeforeTheAppend) {
  for (const Feature& f : kFeatures)
    for (int page : {0, 16}) {
      KVCacheConfig kc;
      kc.attn = config(f, false);
      kc.attn.seqlen_q = 1;
      kc.seqlen_cache = 256;
      kc.seqlen_new = 1;
      kc.page_size = page;
      kc.rotary_dim = page == 0 ? 64 : 0;
      SCOPED_TRACE(kc.attn.str() + " page=" + std::to_string(page));
      KVCacheProblem pr = make_kvcache_problem(kc, fresh_seed());
      ASSERT_TRUE(detail::validate_kvcache(detail::resolve(pr.params), Backend::kCuda).ok());
      const Buffer k_before = pr.k_cache, v_before = pr.v_cache;
      DeviceKVCacheProblem dev(pr);
      const Status s = mha_fwd_kvcache(dev.params);
      EXPECT_TRUE(NotSupportedNaming(s, f.named));
      dev.copy_back(pr);
      EXPECT_TRUE(pr.k_cache.bytes == k_before.bytes) << "k_cache was written";
      EXPECT_TRUE(pr.v_cache.bytes == v_before.bytes) << "v_cache was written";
      EXPECT_TRUE(all_nan(pr.o)) << "o was written";
      EXPECT_TRUE(all_nan(pr.lse)) << "softmax_lse was written";
    }
}

}  // namespace
}  // namespace flashattn::testing
