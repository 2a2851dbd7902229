// Tests of the SM80-path GPU forward kernel (src/sm80/, through the public mha_fwd /
// mha_varlen_fwd), skipped without a GPU: head dims, sequence lengths, masks, score mods, GQA,
// varlen, strides, LSE, large shapes, and what stays unsupported. The inference and training
// features (paged KV, split-KV, KV-cache hooks, dropout, p_ptr) are in test_fwd_features_sm80.cu.
// Oracles, the 2x tolerance rule and the poisoning checks: fwd_checks_sm80.h.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "cuda/dispatch.h"
#include "flashattn/flashattn.h"
#include "gpu/fwd_checks_sm80.h"
#include "gpu/gpu_testing.h"
#include "testing/problem.h"

namespace flashattn::testing {
namespace {

class FwdSm80 : public GpuTest {};

// ------------------------------------------------------------------------------- the tests --

TEST_F(FwdSm80, HeadDimsAndSeqlens) {
  for (DType t : compiled_dtypes()) {
    for (int d : {32, 64, 72, 96, 128, 192, 256}) {
      if (!hdim_compiled(d)) continue;
      for (auto [sq, sk] : {std::pair{1, 1}, {7, 7}, {113, 97}, {97, 113}, {1, 300}, {300, 1}}) {
        AttnConfig c = base(t, 2, sq, sk, 3, 3, d);
        check_small(("d=" + std::to_string(d)).c_str(), c);
      }
    }
  }
}

TEST_F(FwdSm80, CausalAndWindow) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128, 72}) {
      if (!hdim_compiled(d)) continue;
      for (auto [sq, sk] : {std::pair{113, 113}, {97, 300}, {300, 97}, {1, 129}, {129, 1}, {7, 256}}) {
        AttnConfig c = base(t, 2, sq, sk, 2, 2, d);
        c.causal = true;
        check_small("causal", c);
        AttnConfig w = base(t, 2, sq, sk, 2, 1, d);
        w.window_left = 37;
        w.window_right = 5;
        check_small("window", w);
        w.window_left = 0;
        w.window_right = -1;
        check_small("window", w);
        w.window_left = -1;
        w.window_right = 70;
        check_small("window", w);
        AttnConfig cw = c;
        cw.window_left = 64;
        check_small("causal+window", cw);
      }
    }
  }
}

TEST_F(FwdSm80, SoftcapAndAlibi) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128, 96, 256, 32, 192}) {
      if (!hdim_compiled(d)) continue;
      AttnConfig c = base(t, 2, 150, 201, 4, 2, d);
      c.softcap = 5.f;
      check_small("softcap", c);
      c.causal = true;
      check_small("softcap+causal", c);
      AttnConfig a = base(t, 2, 201, 150, 4, 4, d);
      a.alibi = true;
      check_small("alibi", a);
      a.causal = true;
      check_small("alibi+causal", a);
      a.alibi_per_batch = true;
      a.window_left = 50;
      check_small("alibi[b,h]+local", a);
      a.softcap = 3.f;
      check_small("alibi+softcap+causal", a);
      // Several query blocks and many fully visible key blocks each side of the diagonal: the
      // unmasked tiles derive ALiBi's (row, key) afresh every block (MainloopFwdSm80::score_mods).
      AttnConfig l = base(t, 2, 300, 517, 4, 2, d);
      l.alibi = true;
      check_small("alibi long", l);
      l.softcap = 5.f;
      check_small("alibi+softcap long", l);
      AttnConfig s = base(t, 1, 77, 133, 2, 2, d);
      s.softmax_scale = 0.3f;
      check_small("scale", s);
    }
  }
}

// Where two CTAs of the policy's tile do not fit in an SM's shared memory (an A100: 164 KB), d =
// 96 / 128 run the compact tile (tile_size_fwd_compact_sm80). Emulated here on whatever GPU runs
// the tests by overriding the shared memory the dispatch sees.
TEST_F(FwdSm80, CompactTileWhereSharedMemoryIsSmaller) {
  const ScopedSmemPerSm a100(164 * 1024);
  ASSERT_EQ(cuda::device_smem_per_sm(), 164 * 1024);
  for (DType t : compiled_dtypes()) {
    for (int d : {96, 128, 72}) {
      if (!hdim_compiled(d)) continue;
      for (auto [sq, sk] : {std::pair{1, 1}, {113, 97}, {97, 300}}) {
        check_small("compact", base(t, 2, sq, sk, 3, 3, d));
      }
      AttnConfig c = base(t, 2, 150, 201, 4, 2, d);
      c.causal = true;
      check_small("compact causal", c);
      c.softcap = 5.f;
      check_small("compact softcap+causal", c);
      AttnConfig a = base(t, 2, 201, 150, 4, 4, d);
      a.alibi = true;
      check_small("compact alibi", a);  // ALiBi has its own compact tile
      a.causal = true;
      check_small("compact alibi+causal", a);
      a.causal = false;
      a.window_left = 50;
      check_small("compact alibi+local", a);
      a.softcap = 3.f;
      check_small("compact alibi+softcap", a);
      // The compact tile re-derives its K / V addresses for every copy (fresh_kv_addr): varlen
      // offsets, GQA and padded strides all enter them.
      AttnConfig v = base(t, 3, 0, 0, 4, 2, d);
      v.seqlens_q = {17, 130, 1};
      v.seqlens_k = {300, 129, 70};
      v.padded_strides = true;
      check_small("compact varlen+gqa+padded", v);
      v.softcap = 5.f;
      check_small("compact varlen+gqa+padded+softcap", v);
    }
    // d = 256: the split-capable and dropout families take the compact 64 x 32 tile there
    // (tile_size_fwd_64x32_rows_sm80; the plain family keeps its own). Paged K/V: test_gpu_kvcache.
    if (!hdim_compiled(256)) continue;
    AttnConfig s = base(t, 2, 150, 333, 4, 2, 256);
    s.num_splits = 3;
    check_small("compact d=256 split", s);
    s.causal = true;
    s.alibi = true;
    check_small("compact d=256 split+causal+alibi", s);
    AttnConfig dr = base(t, 2, 97, 201, 4, 4, 256);
    dr.p_dropout = 0.2f;
    check_small("compact d=256 dropout", dr);
    dr.alibi = true;
    dr.causal = true;
    check_small("compact d=256 dropout+alibi+causal", dr);
  }
}

TEST_F(FwdSm80, GqaVarlenStrides) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128, 32, 256}) {
      if (!hdim_compiled(d)) continue;
      AttnConfig m = base(t, 3, 65, 190, 8, 1, d);  // MQA
      check_small("mqa", m);
      AttnConfig g = base(t, 2, 129, 129, 6, 2, d);  // GQA, padded strides
      g.padded_strides = true;
      g.causal = true;
      check_small("gqa+padded+causal", g);
      AttnConfig v = base(t, 5, 0, 0, 4, 2, d);
      v.seqlens_q = {17, 0, 300, 1, 129};
      v.seqlens_k = {33, 12, 250, 0, 129};
      check_small("varlen+gqa", v);
      v.causal = true;
      check_small("varlen+gqa+causal", v);
      v.seqused_k = {20, 5, 131, 0, 64};
      v.causal = false;
      v.window_left = 16;
      v.window_right = 16;
      check_small("varlen+seqused+window", v);
      v.padded_strides = true;
      v.alibi = true;
      check_small("varlen+padded+alibi", v);
    }
  }
}

TEST_F(FwdSm80, LseMayBeNull) {
  for (DType t : compiled_dtypes()) {
    if (!hdim_compiled(64)) continue;
    FwdProblem pr = make_fwd_problem(base(t, 1, 70, 70, 2, 2, 64), fresh_seed());
    DeviceFwdProblem dev(pr);
    dev.params.softmax_lse_ptr = nullptr;
    ASSERT_TRUE(mha_fwd(dev.params).ok());
    FwdProblem out = pr;
    dev.copy_back(out);
    for (float x : gather_o(out)) ASSERT_TRUE(std::isfinite(x));
    for (float x : out.lse) ASSERT_TRUE(std::isnan(x)) << "LSE written although the pointer was null";
  }
}

TEST_F(FwdSm80, LargeAgainstGpuReference) {
  for (DType t : compiled_dtypes()) {
    struct L { int b, s_q, s_k, h, hk, d; bool causal; };
    for (L l : {L{2, 1023, 1025, 4, 2, 128, false}, L{2, 1025, 1023, 4, 4, 128, true},
                L{1, 4096, 4096, 4, 2, 64, true}, L{1, 4096, 4096, 2, 2, 256, false},
                L{1, 8192, 8192, 2, 1, 128, true}, L{1, 2048, 16384, 2, 2, 96, false},
                L{1, 16384, 16384, 1, 1, 128, false}}) {
      if (!hdim_compiled(l.d)) continue;
      AttnConfig c = base(t, l.b, l.s_q, l.s_k, l.h, l.hk, l.d);
      c.causal = l.causal;
      check_large(("large d=" + std::to_string(l.d) + (l.causal ? " causal" : "")).c_str(), c);
    }
    // A sliding window over many key blocks: masked blocks on both edges around a long unmasked
    // run, so the main loop switches masked -> unmasked -> masked with K/V stages alternating.
    for (int d : {64, 256}) {
      if (!hdim_compiled(d)) continue;
      AttnConfig w = base(t, 1, 1500, 2101, 2, 1, d);
      w.causal = true;
      w.window_left = 333;
      check_large(("large causal+window d=" + std::to_string(d)).c_str(), w);
    }
    if (hdim_compiled(128)) {
      AttnConfig w = base(t, 1, 4096, 4096, 2, 2, 128);
      w.window_left = 1000;
      w.window_right = 100;
      w.alibi = true;
      check_large("large window+alibi", w);
      AttnConfig v = base(t, 3, 0, 0, 4, 2, 128);
      v.seqlens_q = {3000, 1, 1500};
      v.seqlens_k = {3000, 2500, 1};
      v.causal = true;
      check_large("large varlen causal", v);
    }
  }
}

TEST_F(FwdSm80, UnsupportedReturnsNotSupported) {
  // The head dims and dtypes this build did not compile, and the one feature combination with no
  // kernel.
  const DType t = compiled_dtypes().empty() ? DType::kBFloat16 : compiled_dtypes().front();
  const int d = hdim_compiled(64) ? 64 : build_info().head_dims.empty() ? 64 : build_info().head_dims.front();
  auto expect_ns = [&](AttnConfig c, const char* what, auto tweak) {
    FwdProblem pr = make_fwd_problem(c, fresh_seed());
    DeviceFwdProblem dev(pr);
    tweak(dev.params);
    const Status s = mha_fwd(dev.params);
    EXPECT_EQ(s.code(), StatusCode::kNotSupported) << what << ": " << s.to_string();
    FwdProblem out = pr;
    dev.copy_back(out);
    for (float x : gather_o(out)) ASSERT_TRUE(std::isnan(x)) << what << ": output touched";
  };
  AttnConfig c = base(t, 1, 33, 33, 2, 2, d);
  // Dropout with paged K/V has no kernel (training does not page; the paged kernels have no
  // Philox code).
  {
    AttnConfig drop = c;
    drop.p_dropout = 0.1f;
    FwdProblem paged = to_paged(make_fwd_problem(drop, fresh_seed()), 16, fresh_seed());
    DeviceFwdProblem dev(paged);
    EXPECT_EQ(mha_fwd(dev.params).code(), StatusCode::kNotSupported) << "dropout + paged KV";
    FwdProblem out = paged;
    dev.copy_back(out);
    for (float x : gather_o(out)) ASSERT_TRUE(std::isnan(x)) << "dropout + paged: output touched";
  }
  for (int hd : {32, 64, 96, 128, 192, 256}) {
    if (hdim_compiled(hd)) continue;
    expect_ns(base(t, 1, 33, 33, 2, 2, hd), "head dim not compiled", [](FwdParams&) {});
  }
  for (DType other : {DType::kBFloat16, DType::kFloat16}) {
    if (dtype_compiled(other)) continue;
    expect_ns(base(other, 1, 33, 33, 2, 2, d), "dtype not compiled", [](FwdParams&) {});
  }
}

}  // namespace
}  // namespace flashattn::testing
