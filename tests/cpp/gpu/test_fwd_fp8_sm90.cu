// Tests of the Hopper FP8 (e4m3) forward (docs/fp8.md), skipped without a Hopper GPU and an
// FP8 build (build_info().fp8_head_dims).
//
// The kernel is checked against two CPU references on the same e4m3 inputs and descales:
//  - exact: attention in double on the dequantized inputs (x * descale), P not quantized;
//  - the emulation (ref::mha_fwd on the fp8 problem): P quantized as 256 exp(s - m) in e4m3.
// The kernel quantizes with the running maximum of its online softmax instead of the row's final
// one, so it does not give the emulation's bits; the rule (FlashAttention-3's for its FP8 test) is
//   max |o_kernel - o_exact| <= 2 max |o_emulation - o_exact| + floor,
// floor = 2 ulp of the output dtype at max |o_exact|, with the LSE (which carries no
// quantization) within 2^-10 (1 + |lse|) of the exact one (the 8-bit wgmma accumulates its products
// with fewer mantissa bits than fp32), NaN / inf positions equal, and every output element
// written (o and the LSE are poisoned with NaN). Every case asserts that the Hopper path ran.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "cpu/reference.h"
#include "cuda/dispatch.h"
#include "flashattn/flashattn.h"
#include "gpu/gpu_testing.h"
#include "testing/problem.h"

namespace flashattn::testing {
namespace {

constexpr DType kFp8 = DType::kFloat8E4M3;

bool fp8_compiled(int d) {
  const int hd = d <= 64 ? 64 : d <= 128 ? 128 : 256;
  for (int x : build_info().fp8_head_dims)
    if (x == hd) return true;
  return false;
}

std::vector<DType> out_dtypes() {
  std::vector<DType> out;
  for (DType t : {DType::kBFloat16, DType::kFloat16})
    for (const std::string& s : build_info().dtypes)
      if (s == dtype_name(t)) out.push_back(t);
  return out;
}

// Descale factors with at most 5 significant bits in [2^-3, 2^4): their products with e4m3
// values are exact in fp32, so the dequantized problem holds exactly the values the kernel means.
float random_descale(std::mt19937_64& rng) {
  std::uniform_int_distribution<int> e(-3, 3), m(0, 15);
  return std::ldexp(1.f + m(rng) / 16.f, e(rng));
}

// Per-head descales [b, h_k], stored batch-major (batch stride h_k, head stride 1).
struct Descales {
  std::vector<float> q, k, v;
  bool any() const { return !q.empty(); }
  float at(const std::vector<float>& t, int h_k, int bb, int hk) const {
    return t.empty() ? 1.f : t[size_t(bb) * h_k + hk];
  }
  static Descales random(int b, int h_k, std::mt19937_64& rng) {
    Descales d;
    for (auto* t : {&d.q, &d.k, &d.v}) {
      t->resize(size_t(b) * h_k);
      for (float& x : *t) x = random_descale(rng);
    }
    return d;
  }
  void attach(FwdParams* p, const float* q_ptr, const float* k_ptr, const float* v_ptr) const {
    if (!any()) return;
    p->q_descale = q_ptr;
    p->k_descale = k_ptr;
    p->v_descale = v_ptr;
    p->q_descale_batch_stride = p->k_descale_batch_stride = p->v_descale_batch_stride = p->h_k;
    p->q_descale_head_stride = p->k_descale_head_stride = p->v_descale_head_stride = 1;
  }
};

// The fp8 problem: e4m3 inputs (uniform in [-1, 1], rounded), o in `out` and the LSE NaN.
FwdProblem fp8_problem(const AttnConfig& c, uint64_t seed, DType out) {
  FwdProblem pr = make_fwd_problem(c, seed);
  pr.o = Buffer::make(out, pr.o.numel);
  pr.o.fill_nan();
  pr.bind();
  pr.params.out_dtype = out;
  return pr;
}

// The dense fp32 problem of the values the fp8 one stands for, o in fp32.
FwdProblem dequantized(const FwdProblem& pr, const Descales& ds) {
  FwdProblem f = pr;
  const AttnConfig& c = pr.cfg;
  const FwdParams& p = pr.params;
  f.q = pr.q.converted(DType::kFloat32);
  f.k = pr.k.converted(DType::kFloat32);
  f.v = pr.v.converted(DType::kFloat32);
  f.o = Buffer::make(DType::kFloat32, pr.o.numel);
  f.o.fill_nan();
  const int group = c.h / c.h_k;
  for (int bb = 0; bb < c.b; ++bb) {
    for (int r = 0; r < c.seqlen_q; ++r)
      for (int hq = 0; hq < c.h; ++hq) {
        const int64_t off = bb * p.q_batch_stride + r * p.q_row_stride + hq * p.q_head_stride;
        const float s = ds.at(ds.q, c.h_k, bb, hq / group);
        for (int x = 0; x < c.d; ++x) f.q.set(off + x, f.q.get(off + x) * s);
      }
    for (int t = 0; t < c.seqlen_k; ++t)
      for (int hk = 0; hk < c.h_k; ++hk) {
        const int64_t ok = bb * p.k_batch_stride + t * p.k_row_stride + hk * p.k_head_stride;
        const int64_t ov = bb * p.v_batch_stride + t * p.v_row_stride + hk * p.v_head_stride;
        for (int x = 0; x < c.d; ++x) {
          f.k.set(ok + x, f.k.get(ok + x) * ds.at(ds.k, c.h_k, bb, hk));
          f.v.set(ov + x, f.v.get(ov + x) * ds.at(ds.v, c.h_k, bb, hk));
        }
      }
  }
  f.bind();
  f.params.dtype = DType::kFloat32;
  f.params.out_dtype = DType::kUnset;
  return f;
}

double max_abs_err(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::isfinite(b[i])) m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

class FwdFp8Sm90 : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    if (build_info().fp8_head_dims.empty() || !cuda::device_runs_sm90_kernels())
      GTEST_SKIP() << "the FP8 forward needs a compute capability 9.0 GPU and an sm_90a build "
                      "with FA_FP8";
    if (gpu_path() == GpuPath::kSm80)
      GTEST_SKIP() << "the SM80 path is forced (FLASHATTN_GPU_PATH=sm80): it has no FP8 kernel "
                      "(RefusalsWriteNothing checks the refusal under the default route)";
  }

  // One case: the rule of the file comment, and the Hopper path ran.
  void check(const std::string& what, const AttnConfig& c, DType out, bool descales) {
    if (!fp8_compiled(c.d)) return;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(what + " " + c.str() + " out=" + dtype_name(out) + " seed=" +
                 std::to_string(seed));
    std::mt19937_64 rng(seed);
    FwdProblem pr = fp8_problem(c, seed, out);
    const Descales ds = descales ? Descales::random(c.b, c.h_k, rng) : Descales{};

    // Exact: double on the dequantized inputs (o_f64, dense [b * s_q, h, d]).
    FwdProblem exact = dequantized(pr, ds);
    std::vector<double> o_exact(size_t(c.b) * c.seqlen_q * c.h * c.d);
    ref::Options opt;
    opt.o_f64 = o_exact.data();
    ASSERT_TRUE(ref::mha_fwd(exact.params, opt).ok());
    // The emulation.
    FwdProblem emu = pr;
    emu.bind();
    ds.attach(&emu.params, ds.q.data(), ds.k.data(), ds.v.data());
    ASSERT_TRUE(ref::mha_fwd(emu.params).ok());
    // The kernel.
    DeviceFwdProblem dev(pr);
    DeviceBuffer dq = DeviceBuffer::from(ds.q), dk = DeviceBuffer::from(ds.k),
                 dv = DeviceBuffer::from(ds.v);
    ds.attach(&dev.params, dq.as<float>(), dk.as<float>(), dv.as<float>());
    const Status s = mha_fwd(dev.params);
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_EQ(last_gpu_path(), GpuPath::kSm90);
    FwdProblem got = pr;
    got.bind();
    dev.copy_back(got);

    const std::vector<float> o_gpu = gather_o(got), o_emu = gather_o(emu);
    ASSERT_EQ(o_gpu.size(), o_exact.size());
    double o_max = 0;
    for (size_t i = 0; i < o_gpu.size(); ++i) {
      ASSERT_EQ(std::isfinite(o_gpu[i]), std::isfinite(o_exact[i]))
          << "o element " << i << ": " << o_gpu[i] << " (exact " << o_exact[i] << ")";
      if (std::isfinite(o_exact[i])) o_max = std::max(o_max, std::fabs(o_exact[i]));
    }
    const double ulp = out == DType::kFloat16 ? std::ldexp(1.0, -10) : std::ldexp(1.0, -7);
    const double err = max_abs_err(o_gpu, o_exact), err_emu = max_abs_err(o_emu, o_exact);
    const double bound = 2 * err_emu + 2 * ulp * std::max(o_max, 1e-3);
    EXPECT_LE(err, bound) << "o: max_err=" << err << " emulation_err=" << err_emu;
    double lse_err = 0;
    for (size_t i = 0; i < got.lse.size(); ++i) {
      const float e = exact.lse[i], g = got.lse[i];
      if (!std::isfinite(e)) {
        ASSERT_EQ(g, e) << "lse " << i;
        continue;
      }
      ASSERT_TRUE(std::isfinite(g)) << "lse " << i << " not written: " << g;
      lse_err = std::max(lse_err, std::fabs(double(g) - e));
      ASSERT_LE(std::fabs(double(g) - e), std::ldexp(1.0, -10) * (1 + std::fabs(e))) << "lse " << i;
    }
    std::printf("[fp8-sm90] max_abs_err=%.3g emulation_err=%.3g bound=%.3g lse_err=%.3g cfg=%s\n",
                err, err_emu, bound, lse_err, (what + " " + c.str()).c_str());
  }
};

// Head dims of the three kernels and between them (zero-filled columns), both output dtypes,
// with and without descales, lengths off the 128-row / 128-key blocks both ways.
TEST_F(FwdFp8Sm90, HeadDimsLengthsAndDescales) {
  for (DType out : out_dtypes())
    for (int d : {64, 96, 128, 256})
      for (bool descales : {false, true}) {
        check("plain", base(kFp8, 2, 200, 300, 4, 4, d), out, descales);
        check("short", base(kFp8, 1, 1, 33, 2, 2, d), out, descales);
        check("s_q > s_k", base(kFp8, 1, 257, 129, 2, 1, d), out, descales);
      }
}

// Masks, score modifiers, GQA / MQA, sinks, seqused_k: what the 16-bit Hopper forward runs, on
// 8-bit inputs.
TEST_F(FwdFp8Sm90, MasksScoreModsGqaSinks) {
  for (DType out : out_dtypes()) {
    for (int d : {64, 128, 256}) {
      AttnConfig c = base(kFp8, 2, 190, 250, 6, 2, d);
      c.causal = true;
      check("causal gqa", c, out, true);
      AttnConfig cq = base(kFp8, 1, 300, 70, 4, 1, d);  // causal, s_q > s_k: rows and tiles see no key
      cq.causal = true;
      check("causal mqa s_q > s_k", cq, out, true);
      AttnConfig w = base(kFp8, 2, 160, 400, 4, 2, d);
      w.window_left = 50;
      w.window_right = 10;
      check("window", w, out, true);
      AttnConfig sc = base(kFp8, 2, 100, 230, 4, 2, d);
      sc.softcap = 5.f;
      sc.alibi = true;
      check("softcap alibi", sc, out, true);
      AttnConfig al = base(kFp8, 2, 100, 230, 4, 4, d);
      al.alibi = true;
      al.alibi_per_batch = true;
      al.causal = true;
      check("alibi [b, h] causal", al, out, true);
      AttnConfig sk = base(kFp8, 2, 150, 150, 4, 2, d);
      sk.sinks = true;
      sk.causal = true;
      check("sinks causal", sk, out, true);
      AttnConfig sc2 = base(kFp8, 1, 64, 64, 2, 2, d);
      sc2.softmax_scale = 0.7f;
      check("custom scale", sc2, out, false);
    }
  }
}

// Many tiles per CTA and many key blocks: the persistent scheduler and the pipelines over long
// sequences, against the same references (the CPU reference in double takes a few seconds).
TEST_F(FwdFp8Sm90, LongerSequences) {
  for (DType out : out_dtypes()) {
    AttnConfig c = base(kFp8, 2, 1024, 1536, 8, 2, 128);
    check("1k x 1.5k gqa", c, out, true);
    c.causal = true;
    check("1k x 1.5k gqa causal", c, out, true);
  }
}

// What the FP8 kernel does not take is refused with NotSupported naming it, and nothing is
// written: varlen, paged KV, per-block descales, and the SM80 path when forced (it has no FP8
// kernel). A head dim that is not a multiple of 16 breaks the GPU's 16-byte row rule for 8-bit
// rows, an InvalidArgument from validation.
TEST_F(FwdFp8Sm90, RefusalsWriteNothing) {
  if (!fp8_compiled(128) || out_dtypes().empty()) return;
  const DType out = out_dtypes()[0];
  auto expect_refused = [&](const std::string& what, FwdProblem pr, const std::string& needle,
                            bool varlen, StatusCode code = StatusCode::kNotSupported) {
    SCOPED_TRACE(what);
    pr.params.out_dtype = out;
    DeviceFwdProblem dev(pr);
    const Status s = varlen ? mha_varlen_fwd(dev.params) : mha_fwd(dev.params);
    EXPECT_EQ(s.code(), code) << s.to_string();
    EXPECT_NE(s.to_string().find(needle), std::string::npos) << s.to_string();
    FwdProblem got = pr;
    got.bind();
    dev.copy_back(got);
    for (float x : gather_o(got)) ASSERT_TRUE(std::isnan(x)) << "o written";
  };
  AttnConfig v = base(kFp8, 2, 0, 0, 2, 2, 128);
  v.seqlens_q = {30, 50};
  v.seqlens_k = {40, 60};
  v.seqlen_q = 50;
  v.seqlen_k = 60;
  expect_refused("varlen", fp8_problem(v, fresh_seed(), out), "varlen", true);
  expect_refused("paged", to_paged(fp8_problem(base(kFp8, 2, 40, 64, 2, 2, 128), fresh_seed(), out), 16,
                                   fresh_seed()),
                 "paged", false);
  {
    FwdProblem pr = fp8_problem(base(kFp8, 1, 40, 64, 2, 2, 128), fresh_seed(), out);
    std::vector<float> blocks(2 * 1 * 2, 1.f);
    DeviceFwdProblem dev(pr);
    DeviceBuffer db = DeviceBuffer::from(blocks);
    dev.params.descale_block_m = 64;
    dev.params.q_block_descale = db.as<float>();
    dev.params.q_block_descale_head_stride = 1;
    dev.params.q_block_descale_batch_stride = 2;
    const Status s = mha_fwd(dev.params);
    EXPECT_EQ(s.code(), StatusCode::kNotSupported) << s.to_string();
    EXPECT_NE(s.to_string().find("per-block"), std::string::npos) << s.to_string();
  }
  expect_refused("d % 16", fp8_problem(base(kFp8, 1, 40, 64, 2, 2, 72), fresh_seed(), out), "16-byte",
                 false, StatusCode::kInvalidArgument);
  {
    const GpuPath saved = gpu_path();
    set_gpu_path(GpuPath::kSm80);
    expect_refused("sm80 forced", fp8_problem(base(kFp8, 1, 40, 64, 2, 2, 128), fresh_seed(), out),
                   "SM80", false);
    set_gpu_path(saved);
  }
}

}  // namespace
}  // namespace flashattn::testing
