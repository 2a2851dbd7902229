// The CPU backend's forward against the CPU reference: every feature and the combinations users
// combine (causal + window, GQA + varlen, ALiBi + causal, softcap + causal, dropout + causal,
// paged + varlen, split-KV), odd sizes with s_q < s_k and s_q > s_k, many head dims, the three
// dtypes, padded strides, every micro-kernel table (src/cpu/kernels.h), poisoned outputs
// checked fully written (and nothing written outside them), +inf LSE on fully masked rows,
// bitwise determinism. Inputs are fresh random every run; the seed is in every failure message.
#include <gtest/gtest.h>

#include <cstring>

#include "test_cpu_backend_util.h"

namespace flashattn {
namespace {

using namespace cputest;

AttnConfig cfg(DType t, int b, int s_q, int s_k, int h, int h_k, int d) {
  AttnConfig c;
  c.dtype = t;
  c.b = b;
  c.seqlen_q = s_q;
  c.seqlen_k = s_k;
  c.h = h;
  c.h_k = h_k;
  c.d = d;
  return c;
}

TEST(CpuFwd, ShapesAndHeadDims) {
  struct Shape {
    int s_q, s_k, d;
  };
  const Shape shapes[] = {{1, 1, 32},   {7, 97, 64},  {97, 7, 80},  {113, 113, 128},
                          {1, 113, 256}, {33, 20, 40}, {20, 33, 72}, {9, 17, 3}};
  for_each_isa([&] {
    for (const Shape& s : shapes)
      check_fwd(cfg(DType::kFloat32, 2, s.s_q, s.s_k, 3, 3, s.d), fresh_seed());
  });
}

TEST(CpuFwd, CausalBothAspectRatios) {
  for_each_isa([&] {
    for (auto [s_q, s_k] : {std::pair{7, 97}, std::pair{97, 7}, std::pair{113, 113},
                            std::pair{1, 50}, std::pair{50, 1}}) {
      AttnConfig c = cfg(DType::kFloat32, 2, s_q, s_k, 2, 2, 64);
      c.causal = true;
      check_fwd(c, fresh_seed());
    }
  });
}

TEST(CpuFwd, SlidingWindowAndCausalWindow) {
  for_each_isa([&] {
    struct W {
      bool causal;
      int left, right;
      int s_q, s_k;
    };
    for (const W& w : {W{false, 16, 5, 97, 113}, W{true, 10, -1, 113, 97},
                       W{false, 0, 0, 40, 40}, W{false, -1, 3, 60, 30},
                       W{false, 2, -1, 30, 60}, W{true, 150, -1, 120, 200}}) {
      AttnConfig c = cfg(DType::kFloat32, 2, w.s_q, w.s_k, 2, 1, 32);
      c.causal = w.causal;
      c.window_left = w.left;
      c.window_right = w.right;
      check_fwd(c, fresh_seed());
    }
  });
}

TEST(CpuFwd, FullyMaskedRowsGiveZerosAndInfLse) {
  // Causal with s_q > s_k: the first s_q - s_k rows see no key.
  AttnConfig c = cfg(DType::kFloat32, 1, 120, 17, 2, 2, 32);
  c.causal = true;
  FwdProblem pr = testing::make_fwd_problem(c, fresh_seed());
  check_fwd(pr, "masked rows");
  int empty = 0;
  for (int h = 0; h < c.h; ++h)
    for (int i = 0; i < c.seqlen_q; ++i) {
      const float lse = pr.lse[size_t(h) * c.seqlen_q + i];
      if (i < c.seqlen_q - c.seqlen_k) {
        ++empty;
        EXPECT_EQ(lse, kInf) << "row " << i;
        for (int x = 0; x < c.d; ++x)
          EXPECT_EQ(pr.o.get(int64_t(i) * pr.params.o_row_stride + h * pr.params.o_head_stride + x), 0.f);
      } else {
        EXPECT_TRUE(std::isfinite(lse)) << "row " << i;
      }
    }
  EXPECT_EQ(empty, 2 * (120 - 17));
}

TEST(CpuFwd, GqaAndMqa) {
  for_each_isa([&] {
    for (auto [h, h_k] : {std::pair{8, 2}, std::pair{6, 1}, std::pair{12, 4}}) {
      AttnConfig c = cfg(DType::kFloat32, 2, 37, 53, h, h_k, 64);
      check_fwd(c, fresh_seed(), "gqa");
      c.causal = true;
      check_fwd(c, fresh_seed(), "gqa causal");
    }
  });
  // Many query heads per kv head: rows per item drop to kBlockM / group.
  AttnConfig c = cfg(DType::kFloat32, 1, 29, 41, 128, 1, 16);
  c.causal = true;
  check_fwd(c, fresh_seed(), "mqa 128:1");
}

TEST(CpuFwd, VarlenWithEmptySequencesAndGqa) {
  for_each_isa([&] {
    AttnConfig c = cfg(DType::kFloat32, 5, 0, 0, 4, 2, 40);
    c.seqlens_q = {7, 0, 97, 1, 30};
    c.seqlens_k = {97, 5, 7, 0, 30};
    check_fwd(c, fresh_seed(), "varlen");
    c.causal = true;
    check_fwd(c, fresh_seed(), "varlen causal");
    c.causal = false;
    c.window_left = 3;
    c.window_right = 2;
    check_fwd(c, fresh_seed(), "varlen window");
  });
}

TEST(CpuFwd, VarlenSequsedK) {
  AttnConfig c = cfg(DType::kFloat32, 3, 0, 0, 2, 1, 32);
  c.seqlens_q = {20, 13, 5};
  c.seqlens_k = {40, 13, 9};
  c.seqused_k = {17, 0, 9};
  check_fwd(c, fresh_seed(), "seqused");
  c.causal = true;
  check_fwd(c, fresh_seed(), "seqused causal");
}

TEST(CpuFwd, PagedDenseAndVarlen) {
  for_each_isa([&] {
    for (int page : {1, 3, 16, 256}) {
      AttnConfig c = cfg(DType::kFloat32, 2, 19, 113, 4, 2, 32);
      check_fwd(c, fresh_seed(), "paged", page);
      AttnConfig v = cfg(DType::kFloat32, 3, 0, 0, 2, 2, 32);
      v.seqlens_q = {11, 1, 40};
      v.seqlens_k = {50, 7, 40};
      v.causal = true;
      check_fwd(v, fresh_seed(), "paged varlen causal", page);
    }
  });
}

TEST(CpuFwd, SoftcapWithCausal) {
  for_each_isa([&] {
    AttnConfig c = cfg(DType::kFloat32, 2, 50, 70, 2, 2, 64);
    c.softcap = 0.7f;
    c.softmax_scale = 3.f;  // scores well into the tanh's saturation
    check_fwd(c, fresh_seed(), "softcap");
    c.causal = true;
    check_fwd(c, fresh_seed(), "softcap causal");
  });
}

TEST(CpuFwd, AlibiPerHeadAndPerBatch) {
  for_each_isa([&] {
    AttnConfig c = cfg(DType::kFloat32, 2, 70, 50, 4, 2, 32);
    c.alibi = true;
    check_fwd(c, fresh_seed(), "alibi[h]");
    c.causal = true;
    check_fwd(c, fresh_seed(), "alibi[h] causal");
    c.alibi_per_batch = true;
    c.window_left = 9;
    check_fwd(c, fresh_seed(), "alibi[b,h] causal window");
  });
}

TEST(CpuFwd, NegativeAndLargeScale) {
  AttnConfig c = cfg(DType::kFloat32, 1, 31, 45, 2, 2, 32);
  c.softmax_scale = -0.9f;
  c.causal = true;
  check_fwd(c, fresh_seed(), "negative scale");
  c.softmax_scale = 25.f;  // near one-hot softmax
  check_fwd(c, fresh_seed(), "large scale");
}

TEST(CpuFwd, DropoutReproducesThePhiloxMaskExactly) {
  // p_ptr carries the probabilities negated where dropped: the backend's keep mask must agree
  // with the reference's (same Philox stream, same counter layout) element for element.
  for_each_isa([&] {
    AttnConfig c = cfg(DType::kFloat32, 2, 23, 37, 4, 2, 32);
    c.p_dropout = 0.3f;
    c.philox_seed = fresh_seed();
    c.philox_offset = 12345;
    c.return_probs = true;
    check_fwd(c, fresh_seed(), "dropout probs");
    c.causal = true;
    check_fwd(c, fresh_seed(), "dropout causal probs");
  });
}

TEST(CpuFwd, DropoutOutputsWithoutProbs) {
  AttnConfig c = cfg(DType::kFloat32, 2, 97, 113, 2, 1, 64);
  c.p_dropout = 0.17f;
  c.philox_seed = fresh_seed();
  c.causal = true;
  check_fwd(c, fresh_seed(), "dropout causal");
  c.causal = false;
  c.seqlens_q = {97, 30};
  c.seqlens_k = {113, 64};
  check_fwd(c, fresh_seed(), "dropout varlen");
}

TEST(CpuFwd, ReturnProbsWithoutDropoutOrLse) {
  AttnConfig c = cfg(DType::kFloat32, 1, 30, 20, 2, 2, 16);
  c.return_probs = true;
  c.window_left = 4;
  c.window_right = 1;
  FwdProblem pr = testing::make_fwd_problem(c, fresh_seed());
  FwdProblem ref = as_fp32(pr);
  FA_ASSERT_OK(ref::mha_fwd(ref.params));
  pr.params.softmax_lse_ptr = nullptr;  // the backend needs the LSE internally anyway
  FA_ASSERT_OK(mha_fwd(pr.params));
  for (int64_t i = 0; i < pr.p.numel; ++i)
    ASSERT_NEAR(pr.p.get(i), ref.p.get(i), kFwdSlack) << i;
  for (float x : pr.lse) EXPECT_TRUE(std::isnan(x)) << "lse_ptr was null: nothing written";
}

TEST(CpuFwd, HalfAndBFloat16) {
  for_each_isa([&] {
    for (DType t : {DType::kFloat16, DType::kBFloat16}) {
      AttnConfig c = cfg(t, 2, 97, 113, 4, 2, 64);
      check_fwd(c, fresh_seed(), "plain");
      c.causal = true;
      c.alibi = true;
      check_fwd(c, fresh_seed(), "causal alibi");
      AttnConfig v = cfg(t, 3, 0, 0, 2, 1, 80);
      v.seqlens_q = {1, 50, 7};
      v.seqlens_k = {33, 50, 113};
      v.softcap = 1.5f;
      check_fwd(v, fresh_seed(), "varlen softcap", 5);
    }
  });
}

// bf16 on every table: with AVX-512 BF16 both block products run on bf16 operands (P rounded
// to bf16), so the operand layouts meet every shape and feature here: odd and padded head dims,
// odd key counts, stacked GQA heads, windows, dropout, splits, pages, varlen.
TEST(CpuFwd, BFloat16ProductsAcrossFeatures) {
  for_each_isa([&] {
    for (int d : {3, 40, 72, 128}) {
      AttnConfig c = cfg(DType::kBFloat16, 2, 37, 101, 6, 2, d);
      check_fwd(c, fresh_seed(), "d=" + std::to_string(d));
    }
    AttnConfig g = cfg(DType::kBFloat16, 1, 29, 211, 12, 2, 64);
    g.causal = true;
    check_fwd(g, fresh_seed(), "gqa 6:1 causal");
    AttnConfig w = cfg(DType::kBFloat16, 2, 113, 97, 2, 1, 64);
    w.window_left = 12;
    w.window_right = 3;
    check_fwd(w, fresh_seed(), "window paged", 16);
    AttnConfig dr = cfg(DType::kBFloat16, 2, 50, 61, 2, 2, 32);
    dr.p_dropout = 0.15f;
    dr.return_probs = true;
    check_fwd(dr, fresh_seed(), "dropout probs");
    AttnConfig sp = cfg(DType::kBFloat16, 1, 9, 700, 4, 1, 64);
    sp.num_splits = 3;
    check_fwd(sp, fresh_seed(), "splits");
  });
}

// Sequences with many query blocks per kv head (here 8 stacked heads: 12 rows per block) read
// K and V from the per-call packed copy: odd key counts, windows that start blocks at odd keys
// (bf16 V is packed in key pairs), causal with splits, pages, varlen mixing packed and unpacked
// sequences, fp32 and bf16.
TEST(CpuFwd, PackedKeysAcrossFeatures) {
  for_each_isa([&] {
    for (DType t : {DType::kFloat32, DType::kBFloat16}) {
      const std::string dt = dtype_name(t);
      AttnConfig w = cfg(t, 2, 100, 203, 8, 1, 40);
      w.window_left = 17;
      w.window_right = 4;
      check_fwd(w, fresh_seed(), dt + " packed window");
      AttnConfig c = cfg(t, 1, 120, 203, 8, 1, 64);
      c.causal = true;
      c.num_splits = 3;
      check_fwd(c, fresh_seed(), dt + " packed causal splits", 16);
      AttnConfig v = cfg(t, 3, 0, 0, 8, 1, 72);
      v.seqlens_q = {100, 5, 130};
      v.seqlens_k = {203, 77, 130};
      v.causal = true;
      check_fwd(v, fresh_seed(), dt + " packed varlen");
    }
  });
}

TEST(CpuFwd, PaddedStrides) {
  for (DType t : {DType::kFloat32, DType::kBFloat16}) {
    AttnConfig c = cfg(t, 2, 45, 31, 4, 2, 72);
    c.padded_strides = true;
    c.causal = true;
    check_fwd(c, fresh_seed(), "padded");
    AttnConfig v = cfg(t, 2, 0, 0, 2, 2, 32);
    v.padded_strides = true;
    v.seqlens_q = {10, 20};
    v.seqlens_k = {30, 5};
    check_fwd(v, fresh_seed(), "padded varlen");
  }
}

TEST(CpuFwd, SplitKvMatchesReferenceAndUnsplit) {
  for_each_isa([&] {
    AttnConfig base = cfg(DType::kFloat32, 2, 33, 500, 4, 2, 64);
    base.causal = true;
    const uint64_t seed = fresh_seed();
    FwdProblem unsplit = testing::make_fwd_problem(base, seed);
    FA_ASSERT_OK(mha_fwd(unsplit.params));
    const std::vector<int64_t> oo = o_offsets(unsplit);
    for (int splits : {0, 1, 2, 3, 4, 5, 6, 7}) {
      AttnConfig c = base;
      c.num_splits = splits;
      FwdProblem pr = testing::make_fwd_problem(c, seed);  // same seed: same inputs
      check_fwd(pr, "splits=" + std::to_string(splits));
      // Split-KV reassociates the sums only: equal to the unsplit result up to fp32 rounding.
      EXPECT_LE(testing::max_abs_diff(read(pr.o, oo), read(unsplit.o, oo)), 2e-6);
      EXPECT_LE(testing::diff(pr.lse, unsplit.lse).max_abs, 2e-6);
    }
  });
}

TEST(CpuFwd, SplitKvWithEmptySplitsVarlenPagedAndWindow) {
  // More splits than key blocks (empty splits), windows that leave whole splits unseen.
  AttnConfig c = cfg(DType::kFloat32, 3, 0, 0, 2, 1, 32);
  c.seqlens_q = {5, 60, 1};
  c.seqlens_k = {300, 60, 1};
  c.window_left = 20;
  c.window_right = 0;
  for (int splits : {3, 7, 64}) {
    c.num_splits = splits;
    check_fwd(c, fresh_seed(), "splits varlen window");
    check_fwd(c, fresh_seed(), "splits varlen window paged", 7);
  }
}

TEST(CpuFwd, LongSequenceOnce) {
  AttnConfig c = cfg(DType::kBFloat16, 1, 1023, 1023, 2, 1, 64);
  c.causal = true;
  check_fwd(c, fresh_seed(), "s=1023");
}

TEST(CpuFwd, DeterministicAndThreadCountIndependent) {
  AttnConfig c = cfg(DType::kFloat32, 2, 200, 150, 4, 2, 64);
  c.alibi = true;
  c.p_dropout = 0.1f;
  const uint64_t seed = fresh_seed();
  FwdProblem a = testing::make_fwd_problem(c, seed);
  FwdProblem b = testing::make_fwd_problem(c, seed);
  FwdProblem one = testing::make_fwd_problem(c, seed);
  FA_ASSERT_OK(mha_fwd(a.params));
  FA_ASSERT_OK(mha_fwd(b.params));
  setenv("FLASHATTN_NUM_THREADS", "1", 1);
  EXPECT_EQ(cpu::num_threads(), 1);
  const Status s = mha_fwd(one.params);
  unsetenv("FLASHATTN_NUM_THREADS");
  FA_ASSERT_OK(s);
  EXPECT_EQ(a.o.bytes, b.o.bytes);
  EXPECT_EQ(a.o.bytes, one.o.bytes);
  EXPECT_EQ(0, std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(a.lse.data(), one.lse.data(), a.lse.size() * sizeof(float)));
}

TEST(CpuFwd, CpuEntryPointsDirectly) {
  // The backend's own entry point (params resolved by the caller) gives the API's result.
  AttnConfig c = cfg(DType::kFloat32, 1, 17, 23, 2, 2, 32);
  c.causal = true;
  const uint64_t seed = fresh_seed();
  FwdProblem a = testing::make_fwd_problem(c, seed);
  FwdProblem b = testing::make_fwd_problem(c, seed);
  FA_ASSERT_OK(mha_fwd(a.params));
  FwdParams p = b.params;
  p.softmax_scale = 1.f / std::sqrt(float(c.d));
  p.dv = c.d;
  p.window_size_right = 0;
  FA_ASSERT_OK(cpu::mha_fwd(p));
  EXPECT_EQ(a.o.bytes, b.o.bytes);
}

}  // namespace
}  // namespace flashattn
