// The small-shape check of the GPU backward against the CPU reference, shared by the backward
// tests of both kernel paths (test_bwd_sm80, test_bwd_sm90).
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
// exact (e.g. exact zeros). With attention sinks, dsinks gets the same rule against the exact
// dsinks of the o the kernels are given (dsinks_of_stored_o): both paths form D = dO . O from the
// stored o, whose rounding to the dtype moves dsinks (a sum of p_sink D over every row) by more
// than L shows, since L forms sum_j P_j dP_j instead; that part is the algorithm's, not the
// kernel's, and is printed, not bounded.
// Also: every logical gradient element finite (written), every padding element still NaN.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
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

// ------------------------------------------------------------------ low-precision reference --

// The backward of one problem computed like PyTorch's fp16/bf16 autograd (see the file comment),
// in the gathered [rows, heads, d] order of gather_grads.
inline Grads lowp_backward(const BwdProblem& bp) {
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
          k[size_t(j) * d + x] = bp.fwd.k.get(
              seq.k_offset(p.k_batch_stride, p.k_row_stride, p.k_head_stride, bb, j, kvh, vl) + x);
          v[size_t(j) * d + x] = bp.fwd.v.get(
              seq.k_offset(p.v_batch_stride, p.v_row_stride, p.v_head_stride, bb, j, kvh, vl) + x);
        }
      std::vector<double> dk_sum(size_t(sk) * d, 0.0), dv_sum(size_t(sk) * d, 0.0);
      for (int hh = kvh * ratio; hh < (kvh + 1) * ratio; ++hh) {
        const double slope =
            p.alibi_slopes ? p.alibi_slopes[bb * p.alibi_slopes_batch_stride + hh] : 0.0;
        const double sink =
            p.sinks != nullptr ? double(p.sinks[hh]) : -std::numeric_limits<double>::infinity();
        std::vector<double> dk_h(size_t(sk) * d, 0.0), dv_h(size_t(sk) * d, 0.0);
        std::vector<double> qs(size_t(sq) * d), dO(size_t(sq) * d);
        for (int i = 0; i < sq; ++i)
          for (int x = 0; x < d; ++x) {
            qs[size_t(i) * d + x] = rd(bp.fwd.q.get(seq.q_offset(p.q_batch_stride, p.q_row_stride,
                                                                 p.q_head_stride, bb, i, hh, vl) +
                                                    x) *
                                       p.softmax_scale);
            dO[size_t(i) * d + x] = bp.dout.get(
                seq.q_offset(p.do_batch_stride, p.do_row_stride, p.do_head_stride, bb, i, hh, vl) +
                x);
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
            g.dq[size_t(((qrow0 + i) * p.h + hh) * d + x)] =
                float(rd(rd(dqs[x]) * p.softmax_scale));
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

inline Status run_bwd(const BwdParams& p) {
  return p.cu_seqlens_q != nullptr ? mha_varlen_bwd(p) : mha_bwd(p);
}

inline int64_t count_nan(const Buffer& b) {
  int64_t n = 0;
  for (int64_t i = 0; i < b.numel; ++i) n += std::isnan(b.get(i));
  return n;
}

inline double max_abs_err(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i)
    m = std::max(m, double(std::fabs(double(a[i]) - double(b[i]))));
  return m;
}

// dsinks as the kernels define it, in double: -sum over rows of p_sink (dO . O) with o and the
// LSE as stored by the forward (p_sink = exp(sink - lse)).
inline std::vector<double> dsinks_of_stored_o(const BwdProblem& bp) {
  const AttnConfig& c = bp.fwd.cfg;
  const BwdParams& p = bp.params;
  const bool vl = c.varlen();
  const int rows = bp.fwd.rows_q(), h = c.h, d = c.d;
  const std::vector<float> o = gather_o(bp.fwd);
  const std::vector<float> dout =
      gather(bp.dout, Layout{p.do_batch_stride, p.do_row_stride, p.do_head_stride, bp.dout.numel},
             c.b, c.seqlen_q, h, d, vl, rows);
  std::vector<double> ds(size_t(h), 0.0);
  for (int r = 0; r < rows; ++r)
    for (int hh = 0; hh < h; ++hh) {
      const int64_t li = vl ? int64_t(hh) * rows + r
                            : (int64_t(r / c.seqlen_q) * h + hh) * c.seqlen_q + r % c.seqlen_q;
      const double lse = bp.fwd.lse[size_t(li)];
      if (!std::isfinite(lse)) continue;
      double dot = 0;
      for (int x = 0; x < d; ++x)
        dot += double(dout[(size_t(r) * h + hh) * d + x]) * o[(size_t(r) * h + hh) * d + x];
      ds[size_t(hh)] -= std::exp(double(bp.fwd.sinks[size_t(hh)]) - lse) * dot;
    }
  return ds;
}

// Forward on the CPU backend (o, lse), backward on the GPU; checks the gradients as described at
// the top of this file, and prints one "[<tag>] d=.. max_err_dq=.. bound=.." line. Returns the GPU
// gradients.
inline Grads check_bwd(const AttnConfig& c, const std::string& what, bool deterministic = false,
                       const char* tag = "bwd-sm80") {
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
  std::string line = std::string("[") + tag + "] d=" + std::to_string(c.d) + " " + what;
  for (int t = 0; t < 3; ++t) {
    EXPECT_EQ(count_nonfinite(*gs[t]), 0) << names[t] << ": element not written (NaN) or inf";
    // Padding (strided layouts) must still hold the poison.
    EXPECT_EQ(count_nan(*raw[t]), raw[t]->numel - int64_t(gs[t]->size()))
        << names[t] << ": padding written";
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
    // softmax gradient, lowp as PyTorch's autograd rounds it) against dsinks of the stored o.
    EXPECT_EQ(count_nonfinite(g.dsinks), 0) << "dsinks: element not written (NaN) or inf";
    const std::vector<double> stored = dsinks_of_stored_o(bp);
    double err = 0, o_rounding = 0;
    for (size_t hh = 0; hh < g.dsinks.size(); ++hh) {
      err = std::max(err, std::fabs(double(g.dsinks[hh]) - stored[hh]));
      o_rounding = std::max(o_rounding, std::fabs(stored[hh] - double(r.dsinks[hh])));
    }
    const double err_lowp = max_abs_err(l.dsinks, r.dsinks);
    const double bound = 3.0 * err_lowp + 2e-5 * std::max(1.0, max_abs(r.dsinks));
    EXPECT_LE(err, bound) << "dsinks: max_err=" << err << " (against the stored o's) lowp_err="
                          << err_lowp << "; the stored o's own rounding moved dsinks by "
                          << o_rounding;
    char buf[128];
    std::snprintf(buf, sizeof(buf), " max_err_dsinks=%.3g bound=%.3g o_rounding_dsinks=%.3g", err, bound, o_rounding);
    line += buf;
  }
  std::printf("%s cfg=%s\n", line.c_str(), c.str().c_str());
  std::fflush(stdout);
  return g;
}

}  // namespace flashattn::testing
