// Tests of the SM80-path GPU backward kernel (src/sm80/*bwd*, through the public mha_bwd /
// mha_varlen_bwd), skipped without a GPU.
//
// Each case: random inputs (testing::make_bwd_problem: dq/dk/dv poisoned with NaN), the forward
// on the CPU backend for o and the LSE (the backward's inputs), then the GPU backward.
// Oracle: the CPU reference backward (flashattn::ref::mha_bwd, double, exact gradients R) on fp32
// copies of the very inputs the GPU saw.
// Tolerance (flash_attn's 3x rule for gradients): for each of dq, dk, dv
//     max |G - R| <= 3 * max |L - R| + 2e-5 * max(1, max |R|)
// where L is the same backward computed "in the dtype" the way PyTorch's fp16/bf16 autograd does
// it (flash_attn's attention_ref with upcast=False): q * scale, the scores, softcap steps, P, dP,
// dS and every gemm output rounded to the dtype (sums inside a gemm in high precision), softmax
// and its backward in fp32 (lowp_backward below). The slack covers fp32 accumulation where L is
// exact (e.g. exact zeros). With attention sinks, dsinks gets the same rule.
// Also: every logical gradient element finite (written), every padding element still NaN, and
// unsupported requests return kNotSupported without writing.
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

// ------------------------------------------------------------------ low-precision reference --

// The backward of one problem computed like PyTorch's fp16/bf16 autograd (see the file comment),
// in the gathered [rows, heads, d] order of gather_grads.
Grads lowp_backward(const BwdProblem& bp) {
  const BwdParams p = detail::resolve(bp.params);
  const AttnConfig& c = bp.fwd.cfg;
  const DType t = p.dtype;
  const bool vl = c.varlen();
  auto rd = [t](double x) { return double(round_to_dtype(float(x), t)); };
  const int d = p.d, ratio = p.h / p.h_k;
  // Dropout as attention_ref does it: the kept probabilities divided by (1 - p) and rounded, and
  // the gradient through that: dP = (dO . v) * Z / (1 - p), rounded.
  DropoutRng rng;
  rng.seed = p.philox_seed;
  rng.offset = p.philox_offset;
  rng.threshold = dropout_threshold(p.p_dropout);
  const bool dropout = p.p_dropout > 0.f;
  const double keep_scale = dropout ? 1.0 / (1.0 - double(p.p_dropout)) : 1.0;
  Grads g;
  g.dq.assign(size_t(bp.fwd.rows_q()) * p.h * d, 0.f);
  g.dk.assign(size_t(rows_k(bp.fwd)) * p.h_k * d, 0.f);
  g.dv.assign(g.dk.size(), 0.f);
  // Sinks as attention_ref appends them: one more softmax column (an fp32 logit) with no value,
  // so dP of that column is 0 and its softmax gradient P_sink (0 - D) is rounded per row, then
  // summed over the rows into the dtype (the expand's backward).
  std::vector<double> dsink_sum(size_t(p.h), 0.0);
  for (int bb = 0; bb < p.b; ++bb) {
    const SeqlenInfo seq = SeqlenInfo::make(p, bb);
    const int64_t qrow0 = vl ? bp.fwd.cu_q[bb] : int64_t(bb) * p.seqlen_q;
    const int64_t krow0 = vl ? bp.fwd.cu_k[bb] : int64_t(bb) * p.seqlen_k;
    const VisibilityMask mask = VisibilityMask::make(seq.seqlen_q, seq.seqlen_k, p.is_causal,
                                                     p.window_size_left, p.window_size_right);
    const int sq = seq.seqlen_q, sk = seq.seqlen_k;
    for (int kvh = 0; kvh < p.h_k; ++kvh) {
      std::vector<double> k(size_t(sk) * d), v(size_t(sk) * d);
      for (int j = 0; j < sk; ++j)
        for (int x = 0; x < d; ++x) {
          k[size_t(j) * d + x] = bp.fwd.k.get(seq.k_offset(p.k_batch_stride, p.k_row_stride, p.k_head_stride, bb, j, kvh, vl) + x);
          v[size_t(j) * d + x] = bp.fwd.v.get(seq.k_offset(p.v_batch_stride, p.v_row_stride, p.v_head_stride, bb, j, kvh, vl) + x);
        }
      std::vector<double> dk_sum(size_t(sk) * d, 0.0), dv_sum(size_t(sk) * d, 0.0);
      for (int hh = kvh * ratio; hh < (kvh + 1) * ratio; ++hh) {
        const double slope = p.alibi_slopes ? p.alibi_slopes[bb * p.alibi_slopes_batch_stride + hh] : 0.0;
        const double sink =
            p.sinks != nullptr ? double(p.sinks[hh]) : -std::numeric_limits<double>::infinity();
        std::vector<double> dk_h(size_t(sk) * d, 0.0), dv_h(size_t(sk) * d, 0.0);
        std::vector<double> qs(size_t(sq) * d), dO(size_t(sq) * d);
        for (int i = 0; i < sq; ++i)
          for (int x = 0; x < d; ++x) {
            qs[size_t(i) * d + x] = rd(bp.fwd.q.get(seq.q_offset(p.q_batch_stride, p.q_row_stride, p.q_head_stride, bb, i, hh, vl) + x) * p.softmax_scale);
            dO[size_t(i) * d + x] = bp.dout.get(seq.q_offset(p.do_batch_stride, p.do_row_stride, p.do_head_stride, bb, i, hh, vl) + x);
          }
        for (int i = 0; i < sq; ++i) {
          const int cb = mask.col_begin(i), ce = mask.col_end(i);
          if (ce <= cb) continue;  // empty row: zero gradients
          const int n = ce - cb;
          std::vector<double> s(n), th(n), P(n), dP(n);
          double m = -std::numeric_limits<double>::infinity();
          for (int jj = 0; jj < n; ++jj) {
            const int j = cb + jj;
            double dot = 0;
            for (int x = 0; x < d; ++x) dot += qs[size_t(i) * d + x] * k[size_t(j) * d + x];
            double val = rd(dot);
            if (p.softcap > 0) {
              th[jj] = rd(std::tanh(rd(val / p.softcap)));
              val = rd(th[jj] * p.softcap);
            }
            if (slope != 0) val = float(val - slope * std::abs(i + sk - sq - j));
            s[jj] = val;
            m = std::max(m, val);
          }
          m = std::max(m, sink);
          double l = std::exp(sink - m);
          for (double x : s) l += std::exp(x - m);
          for (int jj = 0; jj < n; ++jj) P[jj] = rd(std::exp(s[jj] - m) / l);
          const double p_sink = rd(std::exp(sink - m) / l);
          const uint64_t bh = uint64_t(bb) * p.h + hh;
          std::vector<double> Pd(n);  // the probabilities that multiply v: P Z / (1 - p)
          double dsum = 0;
          for (int jj = 0; jj < n; ++jj) {
            const bool keep = !dropout || rng.keep(bh, i, cb + jj);
            Pd[jj] = dropout ? (keep ? rd(P[jj] * keep_scale) : 0.0) : P[jj];
            double acc = 0;
            for (int x = 0; x < d; ++x) acc += dO[size_t(i) * d + x] * v[size_t(cb + jj) * d + x];
            dP[jj] = rd(acc);
            if (dropout) dP[jj] = keep ? rd(dP[jj] * keep_scale) : 0.0;
            dsum += float(dP[jj] * P[jj]);
          }
          dsum = float(dsum);
          dsink_sum[size_t(hh)] += rd(-p_sink * dsum);
          std::vector<double> dqs(d, 0.0);
          for (int jj = 0; jj < n; ++jj) {
            const int j = cb + jj;
            double ds = rd(P[jj] * (dP[jj] - dsum));
            if (p.softcap > 0) {  // s = cap * th, th = tanh(u), u = dot / cap
              const double dth = rd(ds * p.softcap);
              const double du = rd(dth * (1.0 - th[jj] * th[jj]));
              ds = rd(du / p.softcap);
            }
            for (int x = 0; x < d; ++x) {
              dqs[x] += ds * k[size_t(j) * d + x];
              dk_h[size_t(j) * d + x] += ds * qs[size_t(i) * d + x];
              dv_h[size_t(j) * d + x] += Pd[jj] * dO[size_t(i) * d + x];
            }
          }
          for (int x = 0; x < d; ++x)
            g.dq[size_t(((qrow0 + i) * p.h + hh) * d + x)] = float(rd(rd(dqs[x]) * p.softmax_scale));
        }
        for (size_t e = 0; e < dk_h.size(); ++e) {
          dk_sum[e] += rd(dk_h[e]);
          dv_sum[e] += rd(dv_h[e]);
        }
      }
      // dK is the gradient of k through qs . k (qs already carries the scale).
      for (int j = 0; j < sk; ++j)
        for (int x = 0; x < d; ++x) {
          const size_t o = size_t(((krow0 + j) * p.h_k + kvh) * d + x);
          g.dk[o] = float(rd(dk_sum[size_t(j) * d + x]));
          g.dv[o] = float(rd(dv_sum[size_t(j) * d + x]));
        }
    }
  }
  if (p.sinks != nullptr)
    for (int hh = 0; hh < p.h; ++hh) g.dsinks.push_back(float(rd(dsink_sum[size_t(hh)])));
  return g;
}

// ------------------------------------------------------------------------------ the checks --

Status run_bwd(const BwdParams& p) { return p.cu_seqlens_q != nullptr ? mha_varlen_bwd(p) : mha_bwd(p); }

int64_t count_nan(const Buffer& b) {
  int64_t n = 0;
  for (int64_t i = 0; i < b.numel; ++i) n += std::isnan(b.get(i));
  return n;
}

double max_abs_err(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(double(a[i]) - double(b[i]))));
  return m;
}

// Forward on the CPU backend (o, lse), backward on the GPU; checks the gradients as described in
// the file comment. Returns the GPU gradients.
Grads check_bwd(const AttnConfig& c, const std::string& what, bool deterministic = false) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(what + " seed=" + std::to_string(seed) + " | " + c.str());
  BwdProblem bp = make_bwd_problem(c, seed);
  const Status fs = c.varlen() ? mha_varlen_fwd(bp.fwd.params) : mha_fwd(bp.fwd.params);
  EXPECT_TRUE(fs.ok()) << fs.to_string();
  bp.bind();
  bp.params.deterministic = deterministic;

  BwdProblem got = bp;
  got.bind();
  {
    DeviceBwdProblem dev(bp);
    const Status s = run_bwd(dev.params);
    EXPECT_TRUE(s.ok()) << s.to_string();
    if (!s.ok()) return {};
    dev.copy_back(got);
  }

  BwdProblem rp = bp;
  rp.fwd = as_fp32(bp.fwd);
  rp.dout = bp.dout.converted(DType::kFloat32);
  for (Buffer* gb : {&rp.dq, &rp.dk, &rp.dv}) {
    *gb = gb->converted(DType::kFloat32);
    gb->fill_nan();
  }
  std::fill(rp.dsinks.begin(), rp.dsinks.end(), std::numeric_limits<float>::quiet_NaN());
  rp.bind();
  rp.params.dtype = DType::kFloat32;
  const Status rs = ref::mha_bwd(rp.params);
  EXPECT_TRUE(rs.ok()) << rs.to_string();

  const Grads g = gather_grads(got), r = gather_grads(rp), l = lowp_backward(bp);
  const char* names[3] = {"dq", "dk", "dv"};
  const std::vector<float>* gs[3] = {&g.dq, &g.dk, &g.dv};
  const std::vector<float>* rs_[3] = {&r.dq, &r.dk, &r.dv};
  const std::vector<float>* ls[3] = {&l.dq, &l.dk, &l.dv};
  const Buffer* raw[3] = {&got.dq, &got.dk, &got.dv};
  std::string line = "[bwd-sm80] d=" + std::to_string(c.d) + " " + what;
  for (int t = 0; t < 3; ++t) {
    EXPECT_EQ(count_nonfinite(*gs[t]), 0) << names[t] << ": element not written (NaN) or inf";
    // Padding (strided layouts) must still hold the poison.
    EXPECT_EQ(count_nan(*raw[t]), raw[t]->numel - int64_t(gs[t]->size())) << names[t] << ": padding written";
    const double err = max_abs_err(*gs[t], *rs_[t]);
    const double err_lowp = max_abs_err(*ls[t], *rs_[t]);
    const double bound = 3.0 * err_lowp + 2e-5 * std::max(1.0, max_abs(*rs_[t]));
    EXPECT_LE(err, bound) << names[t] << ": max_err=" << err << " lowp_err=" << err_lowp;
    char buf[128];
    std::snprintf(buf, sizeof(buf), " max_err_%s=%.3g bound=%.3g", names[t], err, bound);
    line += buf;
  }
  if (c.sinks) {
    // dsinks: every head written, and the same 3x rule (the sum over rows of the sink's
    // softmax gradient, lowp as PyTorch's autograd rounds it).
    EXPECT_EQ(count_nonfinite(g.dsinks), 0) << "dsinks: element not written (NaN) or inf";
    const double err = max_abs_err(g.dsinks, r.dsinks);
    const double err_lowp = max_abs_err(l.dsinks, r.dsinks);
    const double bound = 3.0 * err_lowp + 2e-5 * std::max(1.0, max_abs(r.dsinks));
    EXPECT_LE(err, bound) << "dsinks: max_err=" << err << " lowp_err=" << err_lowp;
    char buf[128];
    std::snprintf(buf, sizeof(buf), " max_err_dsinks=%.3g bound=%.3g", err, bound);
    line += buf;
  }
  std::printf("%s cfg=%s\n", line.c_str(), c.str().c_str());
  std::fflush(stdout);
  return g;
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
      check_bwd(cfg(t, 2, s.s_q, s.s_k, 2, 2, s.d), std::string(dtype_name(t)) + " dense");
      ++ran;
    }
  }
  if (ran == 0) GTEST_SKIP() << "no head dim of this test is compiled in this build";
}

TEST_F(BwdSm80, CausalAndWindows) {
  const DType t = any_dtype();
  const int d = any_hdim(128);
  for (auto [s_q, s_k] : {std::pair{97, 113}, std::pair{113, 97}, std::pair{200, 330}, std::pair{330, 200}}) {
    AttnConfig c = cfg(t, 2, s_q, s_k, 2, 2, d);
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
  AttnConfig c = cfg(t, 2, 150, 130, 2, 2, d);
  c.softcap = 0.8f;
  c.softmax_scale = 2.f;
  c.causal = true;
  check_bwd(c, "softcap causal");
  AttnConfig a = cfg(t, 2, 130, 150, 4, 2, d);
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
    AttnConfig c = cfg(t, 2, 41, 170, h, h_k, d);
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
  AttnConfig c = cfg(t, 4, 0, 0, 4, 2, d);
  c.seqlens_q = {7, 0, 97, 140};
  c.seqlens_k = {150, 6, 7, 0};
  c.seqlen_q = 140;
  c.seqlen_k = 150;
  check_bwd(c, "varlen");
  c.causal = true;
  check_bwd(c, "varlen causal");
  AttnConfig u = cfg(t, 3, 0, 0, 2, 1, d);
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
    AttnConfig c = cfg(t, 2, 70, 93, 4, 2, any_hdim(64));
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
  AttnConfig c = cfg(t, 2, 113, 97, 2, 2, any_hdim(64));
  c.p_dropout = 0.17f;
  c.philox_seed = fresh_seed();
  c.philox_offset = fresh_seed() % 1000;
  check_bwd(c, "dropout");
  c.causal = true;
  c.seqlen_q = 97;
  c.seqlen_k = 200;
  check_bwd(c, "dropout causal");
  AttnConfig g = cfg(t, 2, 150, 131, 6, 2, any_hdim(128));
  g.p_dropout = 0.3f;
  g.philox_seed = fresh_seed();
  g.alibi = true;
  check_bwd(g, "dropout gqa alibi");
  g.causal = true;
  g.window_left = 40;
  check_bwd(g, "dropout gqa alibi causal window");
  AttnConfig v = cfg(t, 3, 0, 0, 4, 1, any_hdim(64));
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
      AttnConfig c = cfg(t, 1, s_q, s_k, 2, 1, d);
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
    AttnConfig c = cfg(t, 2, 150, 600, 4, 2, any_hdim(128));
    c.causal = causal;
    cases.push_back(c);
  }
  AttnConfig v = cfg(t, 3, 0, 0, 4, 1, any_hdim(64));
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
      AttnConfig c = cfg(t, 2, 97, 113, 4, 2, d);
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
  AttnConfig w = cfg(t, 2, 130, 70, 6, 1, d);
  w.sinks = true;
  w.window_left = 10;
  w.window_right = 0;
  check_bwd(w, "sinks window mqa");
  AttnConfig sc = cfg(t, 2, 150, 130, 2, 2, d);
  sc.sinks = true;
  sc.softcap = 0.8f;
  sc.softmax_scale = 2.f;
  sc.causal = true;
  check_bwd(sc, "sinks softcap causal");
  AttnConfig a = cfg(t, 2, 130, 150, 4, 2, d);
  a.sinks = true;
  a.alibi = true;
  a.alibi_per_batch = true;
  a.padded_strides = true;
  check_bwd(a, "sinks alibi padded");
  AttnConfig dr = cfg(t, 2, 113, 97, 4, 2, d);
  dr.sinks = true;
  dr.p_dropout = 0.17f;
  dr.philox_seed = fresh_seed();
  dr.philox_offset = fresh_seed() % 1000;
  dr.causal = true;
  check_bwd(dr, "sinks dropout causal");
  AttnConfig v = cfg(t, 4, 0, 0, 4, 2, any_hdim(64));
  v.sinks = true;
  v.seqlens_q = {7, 0, 97, 140};
  v.seqlens_k = {150, 6, 7, 0};
  v.seqlen_q = 140;
  v.seqlen_k = 150;
  v.causal = true;
  check_bwd(v, "sinks varlen causal");
  AttnConfig u = cfg(t, 3, 0, 0, 2, 1, any_hdim(64));
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
  AttnConfig c = cfg(t, 2, 700, 600, 4, 2, any_hdim(128));  // rows 0..99 see no key
  c.sinks = true;
  c.causal = true;
  cases.push_back(c);
  AttnConfig v = cfg(t, 3, 0, 0, 4, 1, any_hdim(64));
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
  AttnConfig c = cfg(any_dtype(), 2, 17, 33, 4, 2, any_hdim(64));
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
  AttnConfig c = cfg(any_dtype(), 2, 17, 33, 4, 2, any_hdim(64));
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
