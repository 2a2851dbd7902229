// Tests of the Hopper forward path (src/sm90/) and of the arch routing (api/route.h), skipped
// without a GPU that runs the library's sm_90a code. Every other GPU forward test also runs on
// this path when scripts/gpu-check runs it with the default route on a Hopper GPU; this file adds
// what is specific to it: which path runs which request, and a named edge table, each case
// asserting that the Hopper kernels (not the SM80 fallback) produced the checked result.
// Oracles, the 2x tolerance rule and the poisoning checks: fwd_checks_sm80.h.
#include <gtest/gtest.h>

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

// The Hopper head-dim kernel serving d (sm90/tile_size_sm90.h), and whether this build has it.
bool sm90_hdim_compiled(int d) {
  const int hd = d <= 64 ? 64 : d <= 96 ? 96 : d <= 128 ? 128 : d <= 192 ? 192 : 256;
  for (int x : build_info().head_dims)
    if ((x == 32 ? 64 : x) == hd) return true;
  return false;
}

class FwdSm90 : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    bool has_90 = false;
    for (int a : build_info().cuda_archs) has_90 |= a == 90;
    if (!has_90 || !cuda::device_runs_sm90_kernels())
      GTEST_SKIP() << "the Hopper path needs a compute capability 9.0 GPU and an sm_90a build";
    saved_ = gpu_path();
    set_gpu_path(GpuPath::kSm90);
  }
  void TearDown() override { set_gpu_path(saved_); }

  // check_small / check_large, then: the Hopper kernels ran it.
  void small(const char* group, const AttnConfig& c) {
    SCOPED_TRACE(group);
    check_small(group, c);
    EXPECT_EQ(last_gpu_path(), GpuPath::kSm90) << group << ": " << c.str();
  }
  void large(const char* group, const AttnConfig& c) {
    SCOPED_TRACE(group);
    check_large(group, c);
    EXPECT_EQ(last_gpu_path(), GpuPath::kSm90) << group << ": " << c.str();
  }

 private:
  GpuPath saved_ = GpuPath::kAuto;
};

// Which path a request runs on: the Hopper path where it covers the request, the SM80 path for
// the rest, and the SM80 path for everything when forced.
TEST_F(FwdSm90, RoutesEachRequestToThePathThatCoversIt) {
  for (DType t : compiled_dtypes()) {
    if (!sm90_hdim_compiled(128) || !hdim_compiled(128)) continue;
    auto path_of = [&](AttnConfig c, bool paged) {
      FwdProblem pr = make_fwd_problem(c, fresh_seed());
      if (paged) pr = to_paged(pr, 16, fresh_seed());
      DeviceFwdProblem dev(pr);
      const Status s = mha_fwd(dev.params);
      EXPECT_TRUE(s.ok()) << s.to_string();
      return last_gpu_path();
    };
    const AttnConfig c = base(t, 2, 100, 130, 4, 2, 128);
    set_gpu_path(GpuPath::kAuto);
    EXPECT_EQ(path_of(c, false), GpuPath::kSm90) << "plain, auto";
    AttnConfig drop = c;
    drop.p_dropout = 0.1f;
    EXPECT_EQ(path_of(drop, false), GpuPath::kSm90) << "dropout";
    EXPECT_EQ(path_of(c, true), GpuPath::kSm80) << "paged KV";
    AttnConfig split = c;
    split.num_splits = 3;
    EXPECT_EQ(path_of(split, false), GpuPath::kSm80) << "split-KV";
    AttnConfig sink = c;
    sink.sinks = true;
    EXPECT_EQ(path_of(sink, false), GpuPath::kSm90) << "sinks";
    EXPECT_EQ(path_of(sink, true), GpuPath::kSm80) << "sinks, paged KV";
    set_gpu_path(GpuPath::kSm80);
    EXPECT_EQ(path_of(c, false), GpuPath::kSm80) << "forced sm80";
    set_gpu_path(GpuPath::kSm90);
    EXPECT_EQ(path_of(c, false), GpuPath::kSm90) << "forced sm90";
  }
}

// Attention sinks on the Hopper forward: one more term in each finished row's denominator
// (add_sink after finalize), so O within the 2x rule of the reference with the sinks and the LSE
// = logaddexp(LSE over keys, sink); rows with no visible key (causal s_q > s_k, a window left of
// every key) get O = 0 and LSE = the sink, from the mainloop's empty rows and from the tiles
// that load nothing; with dropout (its O scale comes before the sink's); varlen GQA; a large
// causal problem against the GPU fp32 reference.
TEST_F(FwdSm90, Sinks) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128, 256}) {
      if (!sm90_hdim_compiled(d) || !hdim_compiled(d)) continue;
      std::vector<std::pair<const char*, AttnConfig>> cases;
      AttnConfig c = base(t, 2, 97, 113, 4, 2, d);
      c.sinks = true;
      cases.push_back({"sinks gqa", c});
      AttnConfig cc = base(t, 1, 330, 70, 4, 2, d);  // whole query tiles see no key
      cc.sinks = true;
      cc.causal = true;
      cases.push_back({"sinks causal s_q > s_k", cc});
      AttnConfig w = base(t, 2, 200, 300, 2, 1, d);
      w.sinks = true;
      w.window_left = 20;
      w.window_right = 0;
      w.softcap = 8.f;
      cases.push_back({"sinks window softcap", w});
      AttnConfig v = base(t, 4, 0, 0, 6, 2, d);
      v.seqlens_q = {1, 77, 0, 260};
      v.seqlens_k = {50, 200, 9, 300};
      v.sinks = true;
      v.causal = true;
      cases.push_back({"sinks varlen gqa causal", v});
      if (d == 128) {
        AttnConfig dr = base(t, 2, 97, 113, 3, 3, d);
        dr.sinks = true;
        dr.p_dropout = 0.2f;
        cases.push_back({"sinks dropout", dr});
      }
      for (auto& [group, cfg] : cases) {
        SCOPED_TRACE(group);
        const uint64_t seed = fresh_seed();
        FwdProblem pr = make_fwd_problem(cfg, seed);
        if (cfg.p_dropout > 0.f) {
          pr.params.philox_seed = fresh_seed();
          pr.params.philox_offset = fresh_seed() % 100000;
        }
        check_small_problem(group, pr, seed);
        EXPECT_EQ(last_gpu_path(), GpuPath::kSm90) << group << ": " << cfg.str();
      }
    }
    if (sm90_hdim_compiled(128) && hdim_compiled(128)) {
      AttnConfig l = base(t, 2, 2048, 2048, 8, 2, 128);
      l.sinks = true;
      l.causal = true;
      const uint64_t seed = fresh_seed();
      check_large_problem("large sinks causal", make_fwd_problem(l, seed), seed);
      EXPECT_EQ(last_gpu_path(), GpuPath::kSm90);
    }
  }
}

TEST_F(FwdSm90, HeadDimsAndSeqlens) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 40, 96, 72, 128, 112, 192, 160, 256, 200}) {
      if (!sm90_hdim_compiled(d) || !hdim_compiled(d)) continue;
      for (auto [sq, sk] : {std::pair{1, 1}, {7, 7}, {113, 97}, {97, 113}, {1, 300}, {300, 1},
                            {129, 257}, {200, 1025}}) {
        small(("d=" + std::to_string(d)).c_str(), base(t, 2, sq, sk, 3, 3, d));
      }
    }
  }
}

// The named edge table of the Hopper path.
TEST_F(FwdSm90, EdgeTable) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128, 256}) {
      if (!sm90_hdim_compiled(d) || !hdim_compiled(d)) continue;
      // s_q > s_k with a causal mask: the first s_q - s_k rows see no key (O = 0, LSE = +inf).
      AttnConfig c = base(t, 2, 300, 97, 2, 2, d);
      c.causal = true;
      small("s_q > s_k causal", c);
      // A window that leaves some rows without any key.
      AttnConfig w = base(t, 2, 150, 150, 2, 1, d);
      w.window_left = 0;
      w.window_right = 0;
      w.causal = false;
      small("window 0/0", w);
      AttnConfig e = base(t, 1, 200, 60, 2, 2, d);
      e.window_left = 3;
      e.window_right = -1;
      e.causal = true;
      small("all-masked rows", e);
      // GQA ratios that do not divide a 64-row warpgroup tile, and MQA.
      for (auto [h, hk] : {std::pair{6, 2}, {5, 1}, {12, 4}, {7, 7}}) {
        AttnConfig g = base(t, 2, 77, 190, h, hk, d);
        small("gqa", g);
        g.causal = true;
        small("gqa causal", g);
      }
      // Varlen with zero-length sequences on either side, lengths off every tile multiple, and
      // seqused_k (K / V rows past a sequence's keys hold the next sequence's data).
      AttnConfig v = base(t, 6, 0, 0, 4, 2, d);
      v.seqlens_q = {17, 0, 300, 1, 129, 0};
      v.seqlens_k = {33, 12, 250, 0, 129, 0};
      small("varlen zero lengths", v);
      v.causal = true;
      small("varlen causal", v);
      v.seqused_k = {20, 5, 131, 0, 64, 0};
      small("varlen seqused_k causal", v);
      v.causal = false;
      v.softcap = 4.f;
      v.alibi = true;
      small("varlen seqused_k softcap alibi", v);
      // Every sequence empty: max_seqlen_q = 0 (nothing to do) and keys of length 0.
      AttnConfig z = base(t, 3, 0, 0, 2, 2, d);
      z.seqlens_q = {0, 0, 0};
      z.seqlens_k = {5, 0, 9};
      {
        const uint64_t seed = fresh_seed();
        FwdProblem pr = make_fwd_problem(z, seed);
        DeviceFwdProblem dev(pr);
        EXPECT_TRUE(mha_varlen_fwd(dev.params).ok()) << "max_seqlen_q = 0";
      }
      // No key at all (dense seqlen_k = 0, K / V may be null): O = 0 and LSE = +inf everywhere.
      {
        FwdProblem pr = make_fwd_problem(base(t, 2, 70, 0, 2, 2, d), fresh_seed());
        DeviceFwdProblem dev(pr);
        const Status s0 = mha_fwd(dev.params);
        ASSERT_TRUE(s0.ok()) << s0.to_string();
        EXPECT_EQ(last_gpu_path(), GpuPath::kSm90) << "seqlen_k = 0";
        FwdProblem out = pr;
        dev.copy_back(out);
        for (float x : gather_o(out)) ASSERT_EQ(x, 0.f) << "seqlen_k = 0: O";
        for (float l : out.lse) ASSERT_EQ(l, kInf) << "seqlen_k = 0: LSE";
      }
      // Padded strides and the score mods.
      AttnConfig s = base(t, 2, 150, 201, 4, 2, d);
      s.padded_strides = true;
      s.softcap = 5.f;
      s.causal = true;
      small("padded softcap causal", s);
      s.alibi = true;
      s.alibi_per_batch = true;
      s.window_left = 40;
      small("padded softcap alibi[b,h] local", s);
      AttnConfig sc = base(t, 1, 77, 133, 2, 2, d);
      sc.softmax_scale = 0.3f;
      small("scale", sc);
    }
  }
}

// Dropout on the Hopper path (the head dims whose tile has dropout kernels: 96 / 128): the output
// within the 2x rule of the reference that draws the same Philox keep mask (a different mask
// moves O far past the bound), under the masks, GQA and varlen, with fresh seeds and offsets;
// large shapes against the GPU fp32 reference. The other head dims run dropout on the SM80 path.
TEST_F(FwdSm90, Dropout) {
  auto with_rng = [](const AttnConfig& c) {
    const uint64_t seed = fresh_seed();
    FwdProblem pr = make_fwd_problem(c, seed);
    pr.params.philox_seed = fresh_seed();
    pr.params.philox_offset = fresh_seed() % 100000;
    return std::pair{pr, seed};
  };
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 256}) {
      if (!sm90_hdim_compiled(d) || !hdim_compiled(d)) continue;
      AttnConfig c = base(t, 1, 70, 90, 2, 2, d);
      c.p_dropout = 0.2f;
      auto [pr, seed] = with_rng(c);
      check_small_problem("dropout on the SM80 path", pr, seed);
      EXPECT_EQ(last_gpu_path(), GpuPath::kSm80) << "d = " << d;
    }
    for (int d : {128, 96, 80}) {
      if (!sm90_hdim_compiled(d) || !hdim_compiled(d)) continue;
      std::vector<std::pair<const char*, AttnConfig>> cases;
      AttnConfig c = base(t, 2, 97, 113, 3, 3, d);
      c.p_dropout = 0.17f;
      cases.push_back({"dropout", c});
      AttnConfig cc = base(t, 1, 330, 170, 4, 2, d);  // causal + GQA, s_q > s_k: empty rows
      cc.p_dropout = 0.5f;
      cc.causal = true;
      cases.push_back({"dropout causal gqa", cc});
      AttnConfig a = base(t, 2, 33, 517, 2, 1, d);  // ALiBi + window, many key blocks
      a.p_dropout = 0.3f;
      a.alibi = true;
      a.window_left = 140;
      a.window_right = 7;
      cases.push_back({"dropout alibi window", a});
      AttnConfig v = base(t, 4, 0, 0, 6, 2, d);
      v.seqlens_q = {1, 77, 0, 260};
      v.seqlens_k = {50, 200, 9, 300};
      v.p_dropout = 0.25f;
      v.causal = true;
      cases.push_back({"dropout varlen gqa causal", v});
      for (auto& [group, cfg] : cases) {
        SCOPED_TRACE(group);
        auto [pr, seed] = with_rng(cfg);
        SCOPED_TRACE("philox_seed=" + std::to_string(pr.params.philox_seed));
        check_small_problem(group, pr, seed);
        EXPECT_EQ(last_gpu_path(), GpuPath::kSm90) << group << ": " << cfg.str();
      }
    }
    if (sm90_hdim_compiled(128) && hdim_compiled(128)) {
      AttnConfig l = base(t, 2, 2048, 2048, 8, 2, 128);
      l.p_dropout = 0.2f;
      l.causal = true;
      auto [pr, seed] = with_rng(l);
      check_large_problem("large dropout causal", pr, seed);
      EXPECT_EQ(last_gpu_path(), GpuPath::kSm90);
    }
  }
}

// A few tiny problems that cover every barrier of the kernel (several tiles per CTA, masked and
// unmasked blocks, the V tail zeroing, O staged in shared memory): scripts/gpu-check runs this
// test under compute-sanitizer memcheck, racecheck and synccheck (GPU_CHECK_SANITIZE=1).
TEST_F(FwdSm90, SanitizerSmall) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128}) {
      if (!sm90_hdim_compiled(d) || !hdim_compiled(d)) continue;
      AttnConfig c = base(t, 1, 300, 257, 2, 1, d);
      c.causal = true;
      small("sanitize causal", c);
      AttnConfig v = base(t, 3, 0, 0, 2, 2, d);
      v.seqlens_q = {130, 0, 65};
      v.seqlens_k = {70, 9, 200};
      v.seqused_k = {50, 9, 130};
      small("sanitize varlen seqused_k", v);
      if (d == 128) {
        AttnConfig dr = base(t, 1, 200, 300, 2, 2, d);
        dr.p_dropout = 0.3f;
        dr.causal = true;
        small("sanitize dropout causal", dr);
      }
    }
  }
}

// More tiles than SMs, so every CTA of the persistent grid runs several tiles (the producer runs
// ahead into the next tile while the consumers store O), causal tiles in the longest-first order
// with heads grouped in L2 sections, and long key runs with masked and unmasked blocks.
TEST_F(FwdSm90, LargeAgainstGpuReference) {
  for (DType t : compiled_dtypes()) {
    struct L { int b, s_q, s_k, h, hk, d; bool causal; };
    for (L l : {L{4, 1023, 1025, 16, 4, 128, false}, L{4, 1025, 1023, 16, 16, 128, true},
                L{2, 4096, 4096, 8, 2, 64, true}, L{1, 4096, 4096, 4, 4, 256, false},
                L{1, 8192, 8192, 4, 1, 128, true}, L{1, 2048, 16384, 2, 2, 96, false},
                L{2, 3000, 3000, 6, 3, 192, true}, L{1, 16384, 16384, 2, 2, 128, false}}) {
      if (!sm90_hdim_compiled(l.d) || !hdim_compiled(l.d)) continue;
      AttnConfig c = base(t, l.b, l.s_q, l.s_k, l.h, l.hk, l.d);
      c.causal = l.causal;
      large(("large d=" + std::to_string(l.d) + (l.causal ? " causal" : "")).c_str(), c);
    }
    if (sm90_hdim_compiled(128) && hdim_compiled(128)) {
      AttnConfig w = base(t, 1, 4096, 4096, 4, 2, 128);
      w.window_left = 1000;
      w.window_right = 100;
      w.alibi = true;
      large("large window+alibi", w);
      AttnConfig v = base(t, 3, 0, 0, 8, 2, 128);
      v.seqlens_q = {3000, 1, 1500};
      v.seqlens_k = {3000, 2500, 1};
      v.causal = true;
      large("large varlen causal", v);
      AttnConfig sc = base(t, 2, 2048, 2048, 8, 8, 128);
      sc.softcap = 30.f;
      sc.causal = true;
      large("large softcap causal", sc);
    }
  }
}

}  // namespace
}  // namespace flashattn::testing
