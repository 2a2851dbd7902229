// The CPU backend with attention sinks and with a V head dim of its own (dv != d), against the
// CPU reference under the project's error rule: forward (o, lse, probabilities) and backward
// (dq, dk, dv, dsinks) with every feature the backend has, alone and combined: causal and
// windows (rows that see no key), GQA/MQA, varlen with empty sequences and seqused_k, softcap,
// ALiBi, dropout, paged K/V, split-KV (explicit and heuristic), fp16/bf16, padded strides, every
// micro-kernel table, K/V packed per call and the backward's key chunks; dsinks bitwise
// independent of the thread count. The KV-cache path is in test_cpu_backend_kvcache.cpp.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "test_cpu_backend_util.h"

namespace flashattn {
namespace {

using namespace cputest;

AttnConfig cfg(DType t, int b, int s_q, int s_k, int h, int h_k, int d, int dv, bool sinks) {
  AttnConfig c;
  c.dtype = t;
  c.b = b;
  c.seqlen_q = s_q;
  c.seqlen_k = s_k;
  c.h = h;
  c.h_k = h_k;
  c.d = d;
  c.dv = dv;
  c.sinks = sinks;
  return c;
}

// (d, dv) pairs: dv = d through dv = 0, V narrower and wider than Q/K, odd dims, DeepSeek's
// 192 / 128, the GPU's limit (256) and the CPU's (MLA's 576 / 512).
struct Dims {
  int d, dv;
  bool sinks;
};
const Dims kDims[] = {{64, 0, true},    {64, 32, false},  {64, 32, true},  {40, 72, true},
                      {5, 13, true},    {128, 256, true}, {256, 8, false}, {192, 128, true},
                      {576, 512, false}};

// Runs f(config, what) for every (d, dv, sinks) of kDims on a base shape.
template <typename F>
void for_each_dims(const AttnConfig& base, F f) {
  for (const Dims& dm : kDims) {
    AttnConfig c = base;
    c.d = dm.d;
    c.dv = dm.dv;
    c.sinks = dm.sinks;
    f(c);
  }
}

TEST(CpuSinks, ForwardShapesAndHeadDims) {
  for_each_isa([&] {
    for (auto [s_q, s_k] : {std::pair{1, 1}, std::pair{7, 97}, std::pair{97, 7},
                            std::pair{113, 113}, std::pair{1, 200}}) {
      for_each_dims(cfg(DType::kFloat32, 2, s_q, s_k, 4, 2, 0, 0, false),
                    [&](const AttnConfig& c) { check_fwd(c, fresh_seed(), "shape"); });
    }
  });
}

TEST(CpuSinks, ForwardMasksWithRowsThatSeeNoKey) {
  for_each_isa([&] {
    for (auto [s_q, s_k] : {std::pair{97, 7}, std::pair{7, 97}, std::pair{113, 113}}) {
      AttnConfig c = cfg(DType::kFloat32, 2, s_q, s_k, 4, 2, 32, 48, true);
      c.causal = true;
      check_fwd(c, fresh_seed(), "causal");
      c.causal = false;
      c.window_left = 5;
      c.window_right = 0;
      check_fwd(c, fresh_seed(), "window");
      c.window_left = 0;
      c.window_right = -1;
      c.seqlen_k = s_q / 3;  // rows past the keys see none: the sink alone
      check_fwd(c, fresh_seed(), "window past the keys");
    }
  });
}

TEST(CpuSinks, ForwardGqaMqaSoftcapAlibi) {
  for_each_isa([&] {
    for_each_dims(cfg(DType::kFloat32, 2, 45, 60, 6, 1, 0, 0, false), [&](AttnConfig c) {
      check_fwd(c, fresh_seed(), "mqa");
      c.softcap = 0.8f;
      c.softmax_scale = 2.f;
      c.causal = true;
      check_fwd(c, fresh_seed(), "softcap causal");
      c.softcap = 0.f;
      c.softmax_scale = 0.f;
      c.alibi = true;
      c.alibi_per_batch = true;
      check_fwd(c, fresh_seed(), "alibi[b,h] causal");
    });
  });
}

TEST(CpuSinks, ForwardVarlenWithEmptySequencesAndSeqused) {
  for_each_isa([&] {
    AttnConfig c = cfg(DType::kFloat32, 4, 0, 0, 4, 2, 40, 24, true);
    c.seqlens_q = {7, 0, 97, 12};
    c.seqlens_k = {97, 6, 7, 0};
    check_fwd(c, fresh_seed(), "varlen");
    c.causal = true;
    check_fwd(c, fresh_seed(), "varlen causal");
    AttnConfig u = cfg(DType::kFloat32, 3, 0, 0, 2, 1, 32, 16, true);
    u.seqlens_q = {20, 13, 5};
    u.seqlens_k = {40, 13, 9};
    u.seqused_k = {17, 0, 9};
    check_fwd(u, fresh_seed(), "seqused");
  });
}

TEST(CpuSinks, ForwardDropoutAndProbabilities) {
  for_each_isa([&] {
    AttnConfig c = cfg(DType::kFloat32, 2, 23, 37, 4, 2, 32, 20, true);
    c.p_dropout = 0.3f;
    c.philox_seed = fresh_seed();
    c.return_probs = true;
    check_fwd(c, fresh_seed(), "dropout probs");
    c.causal = true;
    check_fwd(c, fresh_seed(), "dropout causal probs");
    c.p_dropout = 0.f;
    c.seqlen_q = 50;  // causal rows 0..12 see no key
    check_fwd(c, fresh_seed(), "probs causal");
  });
}

TEST(CpuSinks, ForwardPaged) {
  for_each_isa([&] {
    for (int page : {1, 16}) {
      AttnConfig c = cfg(DType::kFloat32, 2, 19, 113, 4, 2, 32, 16, true);
      check_fwd(c, fresh_seed(), "paged", page);
      AttnConfig v = cfg(DType::kFloat32, 3, 0, 0, 2, 2, 24, 40, true);
      v.seqlens_q = {11, 1, 40};
      v.seqlens_k = {50, 7, 40};
      v.causal = true;
      check_fwd(v, fresh_seed(), "paged varlen causal", page);
    }
  });
}

TEST(CpuSinks, ForwardSplitKvAddsTheSinkOnceInTheMerge) {
  for_each_isa([&] {
    for (int splits : {2, 5, 0}) {
      // Few query rows over many keys: the heuristic (0) splits too. Causal with s_q > s_k on
      // the second shape leaves rows with no key in any split.
      AttnConfig c = cfg(DType::kFloat32, 1, 3, 1000, 2, 1, 64, 40, true);
      c.num_splits = splits;
      check_fwd(c, fresh_seed(), "splits " + std::to_string(splits));
      AttnConfig e = cfg(DType::kFloat32, 2, 300, 200, 2, 2, 32, 32, true);
      e.num_splits = splits;
      e.causal = true;
      e.window_left = 50;
      check_fwd(e, fresh_seed(), "splits causal window " + std::to_string(splits));
    }
  });
}

TEST(CpuSinks, ForwardHalfBFloat16AndPaddedStrides) {
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    for_each_dims(cfg(t, 2, 97, 113, 4, 2, 0, 0, false), [&](AttnConfig c) {
      c.causal = true;
      check_fwd(c, fresh_seed(), "causal");
      c.padded_strides = true;
      c.alibi = true;
      check_fwd(c, fresh_seed(), "padded alibi");
    });
  }
}

TEST(CpuSinks, BackwardShapesAndHeadDims) {
  for_each_isa([&] {
    for (auto [s_q, s_k] : {std::pair{1, 1}, std::pair{7, 97}, std::pair{97, 7},
                            std::pair{113, 113}}) {
      for_each_dims(cfg(DType::kFloat32, 2, s_q, s_k, 4, 2, 0, 0, false),
                    [&](const AttnConfig& c) { check_bwd(c, fresh_seed(), "shape"); });
    }
  });
}

TEST(CpuSinks, BackwardMasksGqaSoftcapAlibi) {
  for_each_isa([&] {
    for_each_dims(cfg(DType::kFloat32, 2, 60, 45, 6, 2, 0, 0, false), [&](AttnConfig c) {
      c.causal = true;
      check_bwd(c, fresh_seed(), "causal");
      c.causal = false;
      c.window_left = 10;
      c.window_right = 3;
      check_bwd(c, fresh_seed(), "window");
      c.window_left = c.window_right = -1;
      c.softcap = 0.8f;
      c.softmax_scale = 2.f;
      check_bwd(c, fresh_seed(), "softcap");
      c.softcap = 0.f;
      c.softmax_scale = 0.f;
      c.alibi = true;
      c.causal = true;
      check_bwd(c, fresh_seed(), "alibi causal");
    });
  });
}

TEST(CpuSinks, BackwardVarlenAndDropout) {
  for_each_isa([&] {
    AttnConfig c = cfg(DType::kFloat32, 4, 0, 0, 4, 2, 40, 24, true);
    c.seqlens_q = {7, 0, 97, 12};
    c.seqlens_k = {97, 6, 7, 0};
    c.causal = true;
    check_bwd(c, fresh_seed(), "varlen causal");
    AttnConfig u = cfg(DType::kFloat32, 3, 0, 0, 2, 1, 32, 48, true);
    u.seqlens_q = {20, 13, 5};
    u.seqlens_k = {40, 13, 9};
    u.seqused_k = {17, 0, 9};
    check_bwd(u, fresh_seed(), "seqused");
    AttnConfig dr = cfg(DType::kFloat32, 2, 37, 53, 4, 2, 32, 16, true);
    dr.p_dropout = 0.25f;
    dr.philox_seed = fresh_seed();
    dr.causal = true;
    check_bwd(dr, fresh_seed(), "dropout causal");
  });
}

TEST(CpuSinks, BackwardHalfBFloat16AndPaddedStrides) {
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    for_each_dims(cfg(t, 2, 97, 113, 4, 2, 0, 0, false), [&](AttnConfig c) {
      c.causal = true;
      check_bwd(c, fresh_seed(), "causal");
      c.padded_strides = true;
      c.p_dropout = 0.1f;
      check_bwd(c, fresh_seed(), "padded dropout");
    });
  }
}

// The forward with K and V packed once per call (a kv head with many query blocks: h / h_k = 8
// stacks 12 rows per block, so 100+ rows make 9+ blocks; bf16 V packed in key pairs, with odd
// dv) and the backward with several key chunks per (sequence, kv head) (b * h_k = 1 and 400+
// keys), with sinks and dv != d, fp32 and bf16.
TEST(CpuSinks, PackedKeysAndChunkedBackward) {
  for_each_isa([&] {
    for (DType t : {DType::kFloat32, DType::kBFloat16}) {
      for (const Dims& dm : {Dims{40, 72, true}, Dims{64, 13, true}, Dims{32, 48, false}}) {
        AttnConfig w = cfg(t, 2, 100, 203, 8, 1, dm.d, dm.dv, dm.sinks);
        w.window_left = 17;
        w.window_right = 4;
        check_fwd(w, fresh_seed(), "packed window");
        AttnConfig c = cfg(t, 1, 120, 203, 8, 1, dm.d, dm.dv, dm.sinks);
        c.causal = true;
        c.num_splits = 3;
        check_fwd(c, fresh_seed(), "packed causal splits");
        AttnConfig b = cfg(t, 1, 150, 420, 4, 1, dm.d, dm.dv, dm.sinks);
        b.causal = true;
        check_bwd(b, fresh_seed(), "chunked causal");
      }
    }
  });
}

// dsinks is summed over every sequence and row: the partial sums are reduced in a fixed order,
// so the gradient is bitwise the same whatever the thread count.
TEST(CpuSinks, BackwardIsBitwiseIndependentOfTheThreadCount) {
  AttnConfig c = cfg(DType::kBFloat16, 3, 0, 0, 8, 2, 64, 32, true);
  c.seqlens_q = {130, 1, 77};
  c.seqlens_k = {90, 200, 77};
  c.causal = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " seed=" + std::to_string(seed));
  auto run = [&](const char* threads) {
    if (threads != nullptr) setenv("FLASHATTN_NUM_THREADS", threads, 1);
    BwdProblem bp = testing::make_bwd_problem(c, seed);
    EXPECT_TRUE(run_fwd(bp.fwd.params).ok());
    bp.bind();
    EXPECT_TRUE(run_bwd(bp.params).ok());
    unsetenv("FLASHATTN_NUM_THREADS");
    return bp;
  };
  const BwdProblem many = run(nullptr), one = run("1"), three = run("3");
  for (const BwdProblem* o : {&one, &three}) {
    EXPECT_EQ(many.dq.bytes, o->dq.bytes);
    EXPECT_EQ(many.dk.bytes, o->dk.bytes);
    EXPECT_EQ(many.dv.bytes, o->dv.bytes);
    EXPECT_EQ(0, std::memcmp(many.dsinks.data(), o->dsinks.data(), many.dsinks.size() * 4));
  }
}

// A sink of -inf is no sink: the same bits as a call without sinks, forward and backward, split
// or not, and a zero gradient for it.
TEST(CpuSinks, MinusInfinitySinkIsNoSink) {
  for (int splits : {1, 3}) {
    AttnConfig c = cfg(DType::kBFloat16, 2, 37, 300, 4, 2, 32, 48, true);
    c.causal = true;
    c.num_splits = splits;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(c.str() + " seed=" + std::to_string(seed));
    BwdProblem with = testing::make_bwd_problem(c, seed);
    std::fill(with.fwd.sinks.begin(), with.fwd.sinks.end(), -kInf);
    BwdProblem without = with;
    without.bind();
    without.fwd.params.sinks = nullptr;
    FA_ASSERT_OK(run_fwd(with.fwd.params));
    FA_ASSERT_OK(run_fwd(without.fwd.params));
    EXPECT_EQ(with.fwd.o.bytes, without.fwd.o.bytes);
    EXPECT_EQ(0, std::memcmp(with.fwd.lse.data(), without.fwd.lse.data(),
                             with.fwd.lse.size() * 4));
    with.bind();
    without.bind();
    without.params.sinks = nullptr;
    without.params.dsinks = nullptr;
    FA_ASSERT_OK(run_bwd(with.params));
    FA_ASSERT_OK(run_bwd(without.params));
    EXPECT_EQ(with.dq.bytes, without.dq.bytes);
    EXPECT_EQ(with.dk.bytes, without.dk.bytes);
    EXPECT_EQ(with.dv.bytes, without.dv.bytes);
    for (float g : with.dsinks) EXPECT_EQ(g, 0.f);
  }
}

// dsinks is always overwritten (never added to) and comes out in fp32 whatever dqkv_fp32 and
// dqkv_accumulate say about dq, dk, dv.
TEST(CpuSinks, DsinksIgnoreTheGradientOutputOptions) {
  AttnConfig c = cfg(DType::kBFloat16, 2, 33, 47, 4, 2, 32, 24, true);
  c.causal = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.str() + " seed=" + std::to_string(seed));
  BwdProblem plain = testing::make_bwd_problem(c, seed);
  FA_ASSERT_OK(run_fwd(plain.fwd.params));
  plain.bind();
  BwdProblem acc = plain;
  for (Buffer* g : {&acc.dq, &acc.dk, &acc.dv}) {
    *g = g->converted(DType::kFloat32);
    for (int64_t i = 0; i < g->numel; ++i) g->set(i, 0.5f);
  }
  std::fill(acc.dsinks.begin(), acc.dsinks.end(), 7.f);
  acc.bind();
  acc.params.dqkv_fp32 = acc.params.dqkv_accumulate = true;
  FA_ASSERT_OK(run_bwd(plain.params));
  FA_ASSERT_OK(run_bwd(acc.params));
  FA_ASSERT_OK(run_bwd(acc.params));
  EXPECT_EQ(0, std::memcmp(plain.dsinks.data(), acc.dsinks.data(), plain.dsinks.size() * 4));
}

}  // namespace
}  // namespace flashattn
