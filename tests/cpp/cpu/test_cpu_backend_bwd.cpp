// The CPU backend's backward (dq, dk, dv) against the CPU reference: head dims, s_q != s_k both
// ways, causal and windows, GQA/MQA (gradients summed over a group), varlen with empty
// sequences and seqused_k, dropout (the forward's Philox mask regenerated), softcap's chain
// rule, ALiBi, fp16/bf16 (3x rule), padded strides, every micro-kernel table; key chunks (dQ
// summed from partials); every gradient element written (exact zeros for keys no query sees) and
// bitwise determinism; fp32 and accumulated gradient outputs (dqkv_fp32, dqkv_accumulate).
#include <gtest/gtest.h>

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

TEST(CpuBwd, ShapesAndHeadDims) {
  struct Shape {
    int s_q, s_k, d;
  };
  const Shape shapes[] = {{1, 1, 32}, {7, 97, 64}, {97, 7, 40}, {113, 113, 128},
                          {1, 50, 256}, {30, 20, 72}, {9, 17, 5}};
  for_each_isa([&] {
    for (const Shape& s : shapes) check_bwd(cfg(DType::kFloat32, 2, s.s_q, s.s_k, 2, 2, s.d), fresh_seed());
  });
}

TEST(CpuBwd, CausalAndWindows) {
  for_each_isa([&] {
    for (auto [s_q, s_k] : {std::pair{7, 97}, std::pair{97, 7}, std::pair{113, 113}}) {
      AttnConfig c = cfg(DType::kFloat32, 1, s_q, s_k, 2, 2, 64);
      c.causal = true;
      check_bwd(c, fresh_seed(), "causal");
      c.causal = false;
      c.window_left = 10;
      c.window_right = 3;
      check_bwd(c, fresh_seed(), "window");
    }
  });
}

TEST(CpuBwd, GqaSumsOverTheGroup) {
  for_each_isa([&] {
    for (auto [h, h_k] : {std::pair{8, 2}, std::pair{6, 1}}) {
      AttnConfig c = cfg(DType::kFloat32, 2, 41, 29, h, h_k, 32);
      check_bwd(c, fresh_seed(), "gqa");
      c.causal = true;
      check_bwd(c, fresh_seed(), "gqa causal");
    }
  });
}

TEST(CpuBwd, VarlenGqaWithEmptySequencesAndSeqused) {
  AttnConfig c = cfg(DType::kFloat32, 4, 0, 0, 4, 2, 40);
  c.seqlens_q = {7, 0, 97, 12};
  c.seqlens_k = {97, 6, 7, 0};
  check_bwd(c, fresh_seed(), "varlen");
  c.causal = true;
  check_bwd(c, fresh_seed(), "varlen causal");
  AttnConfig u = cfg(DType::kFloat32, 3, 0, 0, 2, 1, 32);
  u.seqlens_q = {20, 13, 5};
  u.seqlens_k = {40, 13, 9};
  u.seqused_k = {17, 0, 9};
  check_bwd(u, fresh_seed(), "seqused");
}

TEST(CpuBwd, DropoutRegeneratesTheForwardMask) {
  for_each_isa([&] {
    AttnConfig c = cfg(DType::kFloat32, 2, 37, 53, 4, 2, 32);
    c.p_dropout = 0.25f;
    c.philox_seed = fresh_seed();
    c.philox_offset = 77;
    check_bwd(c, fresh_seed(), "dropout");
    c.causal = true;
    check_bwd(c, fresh_seed(), "dropout causal");
  });
}

TEST(CpuBwd, SoftcapAndAlibi) {
  for_each_isa([&] {
    AttnConfig c = cfg(DType::kFloat32, 2, 45, 60, 2, 2, 64);
    c.softcap = 0.8f;
    c.softmax_scale = 2.f;
    c.causal = true;
    check_bwd(c, fresh_seed(), "softcap causal");
    AttnConfig a = cfg(DType::kFloat32, 2, 60, 45, 4, 2, 32);
    a.alibi = true;
    a.alibi_per_batch = true;
    a.causal = true;
    check_bwd(a, fresh_seed(), "alibi causal");
  });
}

TEST(CpuBwd, HalfAndBFloat16) {
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    AttnConfig c = cfg(t, 2, 97, 113, 4, 2, 64);
    c.causal = true;
    check_bwd(c, fresh_seed(), "causal");
    AttnConfig v = cfg(t, 3, 0, 0, 2, 2, 80);
    v.seqlens_q = {1, 50, 30};
    v.seqlens_k = {33, 50, 7};
    v.p_dropout = 0.1f;
    check_bwd(v, fresh_seed(), "varlen dropout");
  }
}

// bf16 on every table: with AVX-512 BF16 all five block products run on bf16 operands (P and dS
// rounded to bf16), so the word layouts meet odd head dims, odd stacked-row and key counts,
// GQA, windows, softcap, dropout and varlen here.
TEST(CpuBwd, BFloat16ProductsAcrossFeatures) {
  for_each_isa([&] {
    for (int d : {5, 40, 128}) {
      AttnConfig c = cfg(DType::kBFloat16, 2, 37, 101, 6, 2, d);
      check_bwd(c, fresh_seed(), "d=" + std::to_string(d));
    }
    AttnConfig g = cfg(DType::kBFloat16, 1, 29, 211, 12, 2, 64);
    g.causal = true;
    check_bwd(g, fresh_seed(), "gqa 6:1 causal");
    AttnConfig w = cfg(DType::kBFloat16, 2, 113, 97, 2, 1, 64);
    w.window_left = 12;
    w.window_right = 3;
    w.softcap = 2.f;
    check_bwd(w, fresh_seed(), "window softcap");
    AttnConfig v = cfg(DType::kBFloat16, 3, 0, 0, 2, 2, 80);
    v.seqlens_q = {1, 99, 31};
    v.seqlens_k = {33, 97, 7};
    v.p_dropout = 0.1f;
    check_bwd(v, fresh_seed(), "varlen dropout");
  });
}

TEST(CpuBwd, PaddedStrides) {
  for (DType t : {DType::kFloat32, DType::kBFloat16}) {
    AttnConfig c = cfg(t, 2, 30, 43, 4, 2, 72);
    c.padded_strides = true;
    c.window_left = 5;
    check_bwd(c, fresh_seed(), "padded");
  }
}

TEST(CpuBwd, UnseenKeysGetExactZeroGradients) {
  // A (0, 0) window at s_q < s_k: row i sees only key i + s_k - s_q, keys [0, 50) none.
  AttnConfig c = cfg(DType::kFloat32, 1, 10, 60, 2, 1, 16);
  c.window_left = 0;
  c.window_right = 0;  // row i sees exactly key i + 50
  BwdProblem bp = check_bwd(c, fresh_seed(), "diagonal window");
  const BwdParams& p = bp.params;
  for (int j = 0; j < 50; ++j)
    for (int x = 0; x < c.d; ++x) {
      ASSERT_EQ(bp.dk.get(j * p.dk_row_stride + x), 0.f) << j;
      ASSERT_EQ(bp.dv.get(j * p.dv_row_stride + x), 0.f) << j;
    }
  // One key per row: P = 1, so dS = P (dP - D) vanishes up to the rounding of two fp32 sums
  // of the same products (dP = dO . v by the gemm, D = dO . o with o = v).
  for (int i = 0; i < c.seqlen_q; ++i)
    for (int h = 0; h < c.h; ++h)
      for (int x = 0; x < c.d; ++x)
        ASSERT_LE(std::fabs(bp.dq.get(i * p.dq_row_stride + h * p.dq_head_stride + x)), 1e-6f);
}

TEST(CpuBwd, LongerSequenceOnce) {
  AttnConfig c = cfg(DType::kBFloat16, 1, 300, 500, 2, 1, 64);
  c.causal = true;
  check_bwd(c, fresh_seed(), "s=300x500");
}

// Long key ranges with few (sequence, kv head) pairs split into key chunks whose dQ partials
// are summed at the end: every feature that touches dQ, on every table, and the same bits with
// one thread as with all.
TEST(CpuBwd, KeyChunksMatchReferenceAndAreDeterministic) {
  for_each_isa([&] {
    AttnConfig c = cfg(DType::kFloat32, 1, 150, 700, 4, 2, 64);
    c.causal = true;
    c.p_dropout = 0.1f;
    check_bwd(c, fresh_seed(), "chunks causal dropout");
    AttnConfig w = cfg(DType::kBFloat16, 1, 300, 650, 6, 1, 40);
    w.window_left = 100;
    w.window_right = 20;
    check_bwd(w, fresh_seed(), "chunks window gqa bf16");
    AttnConfig v = cfg(DType::kFloat32, 3, 0, 0, 2, 2, 32);
    v.seqlens_q = {90, 3, 400};
    v.seqlens_k = {700, 90, 400};
    v.seqused_k = {650, 90, 399};
    v.causal = true;
    check_bwd(v, fresh_seed(), "chunks varlen seqused");
  });
  AttnConfig c = cfg(DType::kBFloat16, 1, 200, 800, 4, 2, 64);
  c.causal = true;
  c.p_dropout = 0.2f;
  const uint64_t seed = fresh_seed();
  BwdProblem a = testing::make_bwd_problem(c, seed);
  FA_ASSERT_OK(mha_fwd(a.fwd.params));
  a.bind();
  BwdProblem one = a;
  one.bind();
  FA_ASSERT_OK(mha_bwd(a.params));
  setenv("FLASHATTN_NUM_THREADS", "1", 1);
  const Status s = mha_bwd(one.params);
  unsetenv("FLASHATTN_NUM_THREADS");
  FA_ASSERT_OK(s);
  EXPECT_EQ(a.dq.bytes, one.dq.bytes);
  EXPECT_EQ(a.dk.bytes, one.dk.bytes);
  EXPECT_EQ(a.dv.bytes, one.dv.bytes);
}

TEST(CpuBwd, BitwiseDeterministic) {
  AttnConfig c = cfg(DType::kFloat32, 2, 150, 120, 4, 2, 64);
  c.p_dropout = 0.2f;
  c.causal = true;
  const uint64_t seed = fresh_seed();
  BwdProblem a = testing::make_bwd_problem(c, seed);
  FA_ASSERT_OK(mha_fwd(a.fwd.params));
  a.bind();
  BwdProblem b = a;  // same forward outputs
  b.bind();
  BwdProblem one = a;
  one.bind();
  FA_ASSERT_OK(mha_bwd(a.params));
  FA_ASSERT_OK(mha_bwd(b.params));
  setenv("FLASHATTN_NUM_THREADS", "1", 1);
  const Status s = mha_bwd(one.params);
  unsetenv("FLASHATTN_NUM_THREADS");
  FA_ASSERT_OK(s);
  EXPECT_EQ(a.dq.bytes, b.dq.bytes);
  EXPECT_EQ(a.dk.bytes, b.dk.bytes);
  EXPECT_EQ(a.dv.bytes, b.dv.bytes);
  EXPECT_EQ(a.dq.bytes, one.dq.bytes);
  EXPECT_EQ(a.dk.bytes, one.dk.bytes);
  EXPECT_EQ(a.dv.bytes, one.dv.bytes);
}

// dqkv_fp32 and dqkv_accumulate (context parallelism sums per-KV-block gradients in fp32).
// Bitwise properties of one backward: the fp32 gradients rounded to dtype are the dtype run's
// gradients; accumulating adds them to what the buffers hold with one rounding (fp32 buffers:
// fl(old + g); dtype buffers: round(old + g)); padding is never written, and the key rows past
// seqused_k keep their old values when accumulating.
TEST(CpuBwd, Fp32AndAccumulatedGradients) {
  std::mt19937_64 rng(fresh_seed());
  for (DType t : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    for (bool varlen : {false, true}) {
      AttnConfig c = cfg(t, 3, 37, 53, 6, 2, 40);
      c.causal = true;
      c.padded_strides = true;
      if (varlen) {
        c.seqlens_q = {20, 0, 31};
        c.seqlens_k = {40, 9, 31};
        c.seqused_k = {17, 0, 31};
        c.dv = 24;  // V's own head dim, and sinks: neither changes the gradient outputs' rules
        c.sinks = true;
      }
      const uint64_t seed = fresh_seed();
      SCOPED_TRACE(c.str() + " seed=" + std::to_string(seed));
      BwdProblem plain = testing::make_bwd_problem(c, seed);
      FA_ASSERT_OK(run_fwd(plain.fwd.params));
      plain.bind();
      BwdProblem f32 = plain, acc32 = plain, acc = plain;
      for (BwdProblem* bp : {&f32, &acc32})
        for (Buffer* g : {&bp->dq, &bp->dk, &bp->dv}) *g = g->converted(DType::kFloat32);
      // Accumulation targets: random values in the logical elements, NaN in the padding.
      const BwdParams& lp = plain.params;
      const auto qo = q_like_offsets(plain.fwd, lp.dq_batch_stride, lp.dq_row_stride, lp.dq_head_stride, c.d);
      const auto ko = k_like_offsets(plain.fwd, lp.dk_batch_stride, lp.dk_row_stride, lp.dk_head_stride, c.d);
      const auto vo = k_like_offsets(plain.fwd, lp.dv_batch_stride, lp.dv_row_stride, lp.dv_head_stride, c.v_dim());
      std::uniform_real_distribution<float> u(-2.f, 2.f);
      for (BwdProblem* bp : {&acc32, &acc}) {
        for (auto [g, offs] : {std::pair{&bp->dq, &qo}, std::pair{&bp->dk, &ko}, std::pair{&bp->dv, &vo}})
          for (int64_t o : *offs) g->set(o, u(rng));
      }
      const BwdProblem acc32_before = acc32, acc_before = acc;
      for (BwdProblem* bp : {&plain, &f32, &acc32, &acc}) bp->bind();
      f32.params.dqkv_fp32 = true;
      acc32.params.dqkv_fp32 = true;
      acc32.params.dqkv_accumulate = true;
      acc.params.dqkv_accumulate = true;
      for (BwdProblem* bp : {&plain, &f32, &acc32, &acc}) FA_ASSERT_OK(run_bwd(bp->params));

      struct G {
        const char* name;
        Buffer BwdProblem::*buf;
        const std::vector<int64_t>* offs;
      };
      for (const G& g : {G{"dq", &BwdProblem::dq, &qo}, G{"dk", &BwdProblem::dk, &ko},
                         G{"dv", &BwdProblem::dv, &vo}}) {
        SCOPED_TRACE(g.name);
        for (int64_t o : *g.offs) {
          const float g32 = (f32.*g.buf).get(o);
          ASSERT_EQ(round_to_dtype(g32, t), (plain.*g.buf).get(o)) << o;
          ASSERT_EQ((acc32.*g.buf).get(o), (acc32_before.*g.buf).get(o) + g32) << o;
          ASSERT_EQ((acc.*g.buf).get(o), round_to_dtype((acc_before.*g.buf).get(o) + g32, t)) << o;
        }
        expect_padding_untouched(f32.*g.buf, *g.offs, "f32");
        expect_padding_untouched(acc32.*g.buf, *g.offs, "acc32");
        expect_padding_untouched(acc.*g.buf, *g.offs, "acc");
      }
      if (varlen) {
        // Sequence 0 uses 17 of its 40 keys: the plain call writes zeros there, accumulating
        // leaves the old values (bitwise, not merely + 0).
        for (int j = 17; j < 40; ++j) {
          for (int x = 0; x < c.d; ++x) {
            const int64_t o = j * lp.dk_row_stride + x;
            ASSERT_EQ(plain.dk.get(o), 0.f);
            ASSERT_EQ(acc32.dk.get(o), acc32_before.dk.get(o));
          }
          for (int x = 0; x < c.v_dim(); ++x) {
            const int64_t o = j * lp.dv_row_stride + x;
            ASSERT_EQ(plain.dv.get(o), 0.f);
            ASSERT_EQ(acc.dv.get(o), acc_before.dv.get(o));
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace flashattn
