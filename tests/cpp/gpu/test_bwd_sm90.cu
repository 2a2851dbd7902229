// Tests of the Hopper backward (src/sm90/*bwd*) and of its routing (api/route.h
// bwd_sm90_uncovered), skipped without a GPU that runs the library's sm_90a code. Every other GPU
// backward test also runs on this path when scripts/gpu-check runs it with the default route on a
// Hopper GPU; this file adds what is specific to it: which path runs which request, and a named
// edge table, each case asserting that the Hopper kernels (not the SM80 fallback) produced the
// checked gradients. Oracle, the 3x tolerance rule and the poisoning checks: gpu/bwd_cpu_checks.h.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "cuda/dispatch.h"
#include "flashattn/flashattn.h"
#include "gpu/bwd_checks_sm80.h"
#include "gpu/bwd_cpu_checks.h"
#include "gpu/gpu_testing.h"
#include "testing/problem.h"

namespace flashattn::testing {
namespace {

// The Hopper backward kernel serving d (sm90/tile_size_bwd_sm90.h: 64, 128; 0 = none).
int bwd90_hdim(int d) { return d <= 64 ? 64 : d <= 128 ? 128 : 0; }

bool bwd90_compiled(int d) {
  for (int x : build_info().head_dims)
    if (bwd90_hdim(d) != 0 && bwd90_hdim(x) == bwd90_hdim(d)) return true;
  return false;
}

std::vector<DType> dtypes() {
  std::vector<DType> out;
  for (DType t : {DType::kBFloat16, DType::kFloat16})
    for (const std::string& s : build_info().dtypes)
      if (s == dtype_name(t)) out.push_back(t);
  return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class BwdSm90 : public GpuTest {
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

  // check_bwd against the CPU reference, then: the Hopper kernels ran it.
  void small(const std::string& what, const AttnConfig& c) {
    SCOPED_TRACE(what);
    check_bwd(c, what, /*deterministic=*/false, "bwd-sm90");
    EXPECT_EQ(last_gpu_path(), GpuPath::kSm90) << what << ": " << c.str();
  }

 private:
  GpuPath saved_ = GpuPath::kAuto;
};

// Which path a backward runs on: the Hopper path where it covers the request, the SM80 path for
// the rest, and the SM80 path for everything when forced.
TEST_F(BwdSm90, RoutesEachRequestToThePathThatCoversIt) {
  for (DType t : dtypes()) {
    if (!bwd90_compiled(128)) continue;
    auto path_of = [&](const AttnConfig& c, bool deterministic) {
      BwdProblem bp = make_bwd_problem(c, fresh_seed());
      EXPECT_TRUE((c.varlen() ? mha_varlen_fwd(bp.fwd.params) : mha_fwd(bp.fwd.params)).ok());
      bp.bind();
      bp.params.deterministic = deterministic;
      DeviceBwdProblem dev(bp);
      const Status s = run_bwd(dev.params);
      EXPECT_TRUE(s.ok()) << s.to_string();
      return last_gpu_path();
    };
    const AttnConfig c = base(t, 2, 100, 130, 4, 2, 128);
    set_gpu_path(GpuPath::kAuto);
    EXPECT_EQ(path_of(c, false), GpuPath::kSm90) << "plain, auto";
    EXPECT_EQ(path_of(c, true), GpuPath::kSm80) << "deterministic";
    AttnConfig drop = c;
    drop.p_dropout = 0.1f;
    EXPECT_EQ(path_of(drop, false), GpuPath::kSm80) << "dropout";
    AttnConfig cap = c;
    cap.softcap = 5.f;
    EXPECT_EQ(path_of(cap, false), GpuPath::kSm80) << "softcap";
    AttnConfig alibi = c;
    alibi.alibi = true;
    EXPECT_EQ(path_of(alibi, false), GpuPath::kSm80) << "ALiBi";
    AttnConfig v = base(t, 2, 0, 0, 4, 2, 128);
    v.seqlens_q = {30, 70};
    v.seqlens_k = {50, 20};
    v.seqlen_q = 70;
    v.seqlen_k = 50;
    EXPECT_EQ(path_of(v, false), GpuPath::kSm80) << "varlen";
    AttnConfig sink = c;  // sinks and dsinks: the shared dsinks kernel follows the preprocess
    sink.sinks = true;
    EXPECT_EQ(path_of(sink, false), GpuPath::kSm90) << "sinks";
    AttnConfig sink_alibi = sink;
    sink_alibi.alibi = true;
    EXPECT_EQ(path_of(sink_alibi, false), GpuPath::kSm80) << "sinks with ALiBi";
    set_gpu_path(GpuPath::kSm80);
    EXPECT_EQ(path_of(c, false), GpuPath::kSm80) << "forced sm80";
    set_gpu_path(GpuPath::kSm90);
    EXPECT_EQ(path_of(c, false), GpuPath::kSm90) << "forced sm90";
    EXPECT_EQ(path_of(sink, false), GpuPath::kSm90) << "sinks, forced sm90";
  }
}

// Attention sinks on the Hopper backward: the mainloop is the one without sinks (the forward's
// LSE includes the sink, so P = exp(S - LSE) is already normalized over keys and sink) and dsinks
// comes from the shared kernel over the preprocess's D, whose rows are padded to whole query
// blocks here. Gradients, dsinks included, by the 3x rule; rows with no visible key (causal with
// s_q > s_k) have o = 0 and LSE = the sink, so nothing flows through them. (dsinks's bitwise
// repeatability: BwdSm80.SinksGradientIsBitwiseRepeatableAndOverwritten, whose dense case runs
// here under the default route.)
TEST_F(BwdSm90, Sinks) {
  for (DType t : dtypes()) {
    for (int d : {64, 128}) {
      if (!bwd90_compiled(d)) continue;
      AttnConfig c = base(t, 2, 97, 113, 4, 2, d);
      c.sinks = true;
      small("sinks gqa", c);
      c.causal = true;
      c.seqlen_q = 200;
      c.seqlen_k = 70;
      small("sinks causal s_q > s_k", c);
    }
  }
}

// Head dims served by the 64 and 128 kernels (smaller ones zero-filled by TMA), with lengths off
// every tile multiple on both sides.
TEST_F(BwdSm90, HeadDimsAndSeqlens) {
  for (DType t : dtypes()) {
    for (int d : {64, 40, 128, 96, 72}) {
      if (!bwd90_compiled(d)) continue;
      for (auto [sq, sk] : {std::pair{1, 1},
                            {7, 7},
                            {113, 97},
                            {97, 113},
                            {1, 300},
                            {300, 1},
                            {129, 257},
                            {200, 1025}}) {
        small(std::string(dtype_name(t)) + " d=" + std::to_string(d), base(t, 2, sq, sk, 3, 3, d));
      }
    }
  }
}

// The named edge table of the Hopper backward.
TEST_F(BwdSm90, EdgeTable) {
  for (DType t : dtypes()) {
    for (int d : {64, 128}) {
      if (!bwd90_compiled(d)) continue;
      const std::string dn = " d=" + std::to_string(d);
      // s_q > s_k with a causal mask: the first s_q - s_k rows see no key (their dQ is 0), and
      // s_q < s_k: the first key blocks are seen by every row.
      for (auto [sq, sk] : {std::pair{300, 97}, {97, 300}, {256, 256}, {1, 130}, {130, 1}}) {
        AttnConfig c = base(t, 2, sq, sk, 2, 2, d);
        c.causal = true;
        small("causal " + std::to_string(sq) + "x" + std::to_string(sk) + dn, c);
      }
      // Windows, one leaving rows without any key and key blocks no row sees (dK = dV = 0).
      AttnConfig w = base(t, 2, 150, 300, 2, 1, d);
      w.window_left = 0;
      w.window_right = 0;
      small("window 0/0" + dn, w);
      w.window_left = 37;
      w.window_right = 5;
      small("window 37/5" + dn, w);
      AttnConfig e = base(t, 1, 200, 60, 2, 2, d);
      e.window_left = 3;
      e.causal = true;
      small("all-masked rows" + dn, e);
      // GQA ratios that do not divide anything, and MQA.
      for (auto [h, hk] : {std::pair{6, 2}, {5, 1}, {12, 4}, {7, 7}}) {
        AttnConfig g = base(t, 2, 77, 190, h, hk, d);
        small("gqa " + std::to_string(h) + "/" + std::to_string(hk) + dn, g);
        g.causal = true;
        small("gqa causal " + std::to_string(h) + "/" + std::to_string(hk) + dn, g);
      }
      // Tiny lengths on both sides.
      for (int sq : {1, 2, 5, 17})
        for (int sk : {1, 2, 5, 17}) small("tiny" + dn, base(t, 1, sq, sk, 2, 1, d));
      // Zero lengths: no key (dQ = 0) and no query (dK = dV = 0).
      small("seqlen_k = 0" + dn, base(t, 2, 70, 0, 2, 2, d));
      small("seqlen_q = 0" + dn, base(t, 2, 0, 70, 4, 2, d));
      // Padded strides, a custom scale, and more query blocks than pipeline stages many times
      // over (every stage and both dS buffers reused), several key blocks per head.
      AttnConfig s = base(t, 2, 150, 201, 4, 2, d);
      s.padded_strides = true;
      s.causal = true;
      small("padded causal" + dn, s);
      AttnConfig sc = base(t, 1, 77, 133, 2, 2, d);
      sc.softmax_scale = 0.3f;
      small("scale" + dn, sc);
      AttnConfig l = base(t, 1, 1000, 700, 2, 1, d);
      small("long" + dn, l);
      l.causal = true;
      small("long causal" + dn, l);
    }
  }
}

// dK and dV involve no atomics on this path (one CTA owns a key block; the GQA group sum runs in
// head order), so they are bitwise the same run after run; dQ sums the key blocks' partials in the
// order the atomics land (deterministic requests route to the SM80 path, tested above).
TEST_F(BwdSm90, DkDvBitwiseRepeatable) {
  for (DType t : dtypes()) {
    for (int d : {64, 128}) {
      if (!bwd90_compiled(d)) continue;
      for (bool causal : {false, true}) {
        AttnConfig c = base(t, 2, 300, 600, 4, 2, d);
        c.causal = causal;
        SCOPED_TRACE(c.str());
        BwdProblem bp = make_bwd_problem(c, fresh_seed());
        ASSERT_TRUE(mha_fwd(bp.fwd.params).ok());
        bp.bind();
        DeviceBwdProblem dev(bp);
        Grads first;
        for (int r = 0; r < 10; ++r) {
          BwdProblem got = bp;
          got.bind();
          dev.dq = DeviceBuffer::from(bp.dq);  // poisoned again: every run rewrites everything
          dev.dk = DeviceBuffer::from(bp.dk);
          dev.dv = DeviceBuffer::from(bp.dv);
          dev.params.dq_ptr = dev.dq.get();
          dev.params.dk_ptr = dev.dk.get();
          dev.params.dv_ptr = dev.dv.get();
          const Status s = run_bwd(dev.params);
          ASSERT_TRUE(s.ok()) << s.to_string();
          ASSERT_EQ(last_gpu_path(), GpuPath::kSm90);
          dev.copy_back(got);
          Grads g = gather_grads(got);
          EXPECT_EQ(count_nonfinite(g.dq) + count_nonfinite(g.dk) + count_nonfinite(g.dv), 0);
          if (r == 0) {
            first = std::move(g);
            continue;
          }
          ASSERT_TRUE(same_bits(g.dk, first.dk)) << "dk differs in run " << r;
          ASSERT_TRUE(same_bits(g.dv, first.dv)) << "dv differs in run " << r;
        }
      }
    }
  }
}

// Tiny problems that cover every barrier of the kernel (several query blocks per CTA, masked and
// unmasked tiles, both dS buffers, CTAs with no query block, the GQA sum): scripts/gpu-check runs
// this test under compute-sanitizer memcheck, racecheck and synccheck (GPU_CHECK_SANITIZE=1).
TEST_F(BwdSm90, SanitizerSmall) {
  for (DType t : dtypes()) {
    for (int d : {64, 128}) {
      if (!bwd90_compiled(d)) continue;
      AttnConfig c = base(t, 1, 300, 257, 2, 1, d);
      c.causal = true;
      small("sanitize causal gqa", c);
      small("sanitize plain", base(t, 1, 130, 200, 2, 2, d));
    }
  }
}

}  // namespace
}  // namespace flashattn::testing
