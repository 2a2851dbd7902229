// Helpers shared by the CPU backend's tests (test_cpu_backend*.cpp): run a problem through the
// public API (which dispatches host memory to the CPU backend) and through the CPU reference,
// and compare with the project's error rule. Header-only; each test binary includes it.
//
// Error rule (docs/design.md, Correctness). For fp16/bf16 the reference runs on fp32 copies of
// the SAME rounded inputs, so it gives the exact result R of the backend's inputs; the backend's
// output B (in dtype) must satisfy
//     max |B - R| <= kFactor * max |round_dtype(R) - R| + kSlack
// i.e. at most kFactor times the error of the best possible dtype result, plus a small stated
// slack for fp32 accumulation. fp32 outputs use the slack alone (scaled by the magnitude of R).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/numeric.h"
#include "cpu/backend.h"
#include "cpu/kernels.h"
#include "cpu/reference.h"
#include "flashattn/flashattn.h"
#include "testing/problem.h"

namespace flashattn::cputest {

using testing::AttnConfig;
using testing::Buffer;
using testing::BwdProblem;
using testing::FwdProblem;
using testing::KVCacheConfig;
using testing::KVCacheProblem;

#define FA_ASSERT_OK(expr)                                                \
  do {                                                                    \
    const ::flashattn::Status status_ = (expr);                           \
    ASSERT_TRUE(status_.ok()) << #expr << ": " << status_.to_string();    \
  } while (0)

constexpr float kInf = std::numeric_limits<float>::infinity();
// fp32 accumulation slack of the forward output (|o| <= 1 with inputs in [-1, 1]).
constexpr double kFwdSlack = 2e-5;
// Same for the LSE, relative to max(1, max |lse|) (a large softmax_scale makes |lse| large).
constexpr double kLseSlack = 2e-5;
// Gradients: relative to max(1, max |reference gradient|); fp32 sums over s_k and s_q terms.
constexpr double kBwdSlack = 1e-4;

inline uint64_t fresh_seed() {
  static std::mt19937_64 rng(std::random_device{}());
  return rng();
}

// Runs f once per micro-kernel table that runs on this CPU (portable, AVX2, AVX-512,
// AVX-512 BF16), selected through FLASHATTN_CPU_ISA as a user would. When the environment
// already sets FLASHATTN_CPU_ISA (ctest runs each backend binary once per table that way, so
// the tests outside for_each_isa cover every table too), only that table runs.
template <typename F>
void for_each_isa(F f) {
  const char* saved = std::getenv("FLASHATTN_CPU_ISA");
  const std::string keep = saved ? saved : "";
  const cpu::Kernels* tables[8];
  int n = cpu::available_kernels(tables, 8);
  if (saved != nullptr) {
    tables[0] = &cpu::active_kernels();
    n = 1;
  }
  for (int i = 0; i < n; ++i) {
    setenv("FLASHATTN_CPU_ISA", tables[i]->name, 1);
    SCOPED_TRACE(std::string("isa=") + cpu::isa());
    EXPECT_STREQ(cpu::isa(), tables[i]->name);
    f();
  }
  if (saved)
    setenv("FLASHATTN_CPU_ISA", keep.c_str(), 1);
  else
    unsetenv("FLASHATTN_CPU_ISA");
}

// The largest error of rounding each value of r to dtype t.
inline double rounding_error(const std::vector<float>& r, DType t) {
  double m = 0;
  for (float x : r)
    if (std::isfinite(x)) m = std::max(m, std::fabs(double(round_to_dtype(x, t)) - double(x)));
  return m;
}

// Checks B against R under the error rule; finiteness must match exactly (+inf LSE of empty
// rows, never a NaN).
inline void expect_close(const std::vector<float>& got, const std::vector<float>& want, DType t,
                         double factor, double slack, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const testing::DiffStats st = testing::diff(got, want);
  EXPECT_EQ(st.finiteness_mismatches, 0) << what << ": " << st.str();
  const double bound = t == DType::kFloat32 ? slack : factor * rounding_error(want, t) + slack;
  EXPECT_LE(st.max_abs, bound) << what << ": " << st.str() << " bound=" << bound;
  for (float x : got) {
    if (std::isnan(x)) {
      ADD_FAILURE() << what << ": NaN in the output (an element not written?)";
      break;
    }
  }
}

// Every element of buf that is NOT in `logical` must still hold the poison (NaN): the call wrote
// nothing outside its tensor's logical elements.
inline void expect_padding_untouched(const Buffer& buf, const std::vector<int64_t>& logical,
                                     const std::string& what) {
  std::vector<uint8_t> is_logical(size_t(buf.numel), 0);
  for (int64_t o : logical) is_logical[size_t(o)] = 1;
  for (int64_t i = 0; i < buf.numel; ++i)
    if (!is_logical[size_t(i)] && !std::isnan(buf.get(i))) {
      ADD_FAILURE() << what << ": padding element " << i << " was written";
      return;
    }
}

inline std::vector<int64_t> offsets(int64_t bs, int64_t rs, int64_t hs, int batch, int rows,
                                    int heads, int d) {
  std::vector<int64_t> out;
  for (int b = 0; b < batch; ++b)
    for (int r = 0; r < rows; ++r)
      for (int h = 0; h < heads; ++h)
        for (int x = 0; x < d; ++x) out.push_back(b * bs + r * rs + h * hs + x);
  return out;
}
inline std::vector<int64_t> o_offsets(const FwdProblem& pr) {
  const FwdParams& p = pr.params;
  const bool vl = pr.cfg.varlen();
  return offsets(p.o_batch_stride, p.o_row_stride, p.o_head_stride, vl ? 1 : pr.cfg.b,
                 vl ? pr.rows_q() : pr.cfg.seqlen_q, pr.cfg.h, pr.cfg.v_dim());
}
inline std::vector<float> read(const Buffer& b, const std::vector<int64_t>& offs) {
  std::vector<float> out;
  out.reserve(offs.size());
  for (int64_t o : offs) out.push_back(b.get(o));
  return out;
}

// The same problem with every floating-point input stored as fp32 (exact: a widening), and
// fp32 poisoned outputs: the reference's input for comparing a fp16/bf16 run.
inline FwdProblem as_fp32(const FwdProblem& pr) {
  FwdProblem r = pr;
  r.cfg.dtype = DType::kFloat32;
  r.params.dtype = DType::kFloat32;
  r.q = pr.q.converted(DType::kFloat32);
  r.k = pr.k.converted(DType::kFloat32);
  r.v = pr.v.converted(DType::kFloat32);
  r.o = pr.o.converted(DType::kFloat32);
  r.o.fill_nan();
  if (pr.cfg.return_probs) {
    r.p = pr.p.converted(DType::kFloat32);
    r.p.fill_nan();
  }
  std::fill(r.lse.begin(), r.lse.end(), std::numeric_limits<float>::quiet_NaN());
  r.bind();
  return r;
}

inline Status run_fwd(const FwdParams& p) {
  return p.cu_seqlens_q != nullptr ? mha_varlen_fwd(p) : mha_fwd(p);
}
inline Status run_bwd(const BwdParams& p) {
  return p.cu_seqlens_q != nullptr ? mha_varlen_bwd(p) : mha_bwd(p);
}

// Runs pr through the backend and an fp32 copy through the reference; compares o, lse (and
// p_ptr when the config asks for it). Returns the backend's problem (outputs filled).
inline void check_fwd(FwdProblem& pr, const std::string& what) {
  SCOPED_TRACE(what + " | " + pr.cfg.str());
  FwdProblem ref = as_fp32(pr);
  FA_ASSERT_OK(ref::mha_fwd(ref.params));
  FA_ASSERT_OK(run_fwd(pr.params));
  const std::vector<int64_t> oo = o_offsets(pr);
  // Each fp32 score q.k * scale carries up to 2^-24 |scale| sum |q_i k_i| <= 2^-24 |scale| d of
  // rounding (inputs in [-1, 1]), and a score error e moves o by at most 2 e (|v| <= 1): with the
  // usual scale that is nothing, with a large one (25: a near one-hot softmax) it is what the
  // fp32 forward itself cannot avoid.
  const int d = pr.cfg.d;
  const double scale = pr.cfg.softmax_scale != 0.f ? std::fabs(double(pr.cfg.softmax_scale))
                                                   : 1.0 / std::sqrt(double(d));
  const double score_slack = 4.0 * std::ldexp(1.0, -24) * scale * d;
  expect_close(read(pr.o, oo), read(ref.o, oo), pr.cfg.dtype, 2.0, kFwdSlack + score_slack, "o");
  double lse_mag = 1;
  for (float x : ref.lse)
    if (std::isfinite(x)) lse_mag = std::max(lse_mag, double(std::fabs(x)));
  expect_close(pr.lse, ref.lse, DType::kFloat32, 1.0, kLseSlack * lse_mag, "lse");
  expect_padding_untouched(pr.o, oo, "o");
  if (pr.cfg.return_probs) {
    std::vector<float> a(size_t(pr.p.numel)), b(size_t(pr.p.numel));
    for (int64_t i = 0; i < pr.p.numel; ++i) {
      a[size_t(i)] = pr.p.get(i);
      b[size_t(i)] = ref.p.get(i);
    }
    expect_close(a, b, pr.cfg.dtype, 2.0, kFwdSlack, "p");
    // The sign carries the dropout decision: it must agree wherever the probability is not 0.
    int64_t sign_mismatch = 0;
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i] != 0.f && b[i] != 0.f && std::signbit(a[i]) != std::signbit(b[i])) ++sign_mismatch;
    EXPECT_EQ(sign_mismatch, 0) << "p: dropout signs differ";
  }
}

inline void check_fwd(const AttnConfig& c, uint64_t seed, const std::string& what = "",
                      int page_size = 0) {
  FwdProblem pr = testing::make_fwd_problem(c, seed);
  if (page_size > 0) pr = testing::to_paged(pr, page_size, seed + 1);
  check_fwd(pr, what + " seed=" + std::to_string(seed) +
                    (page_size > 0 ? " page=" + std::to_string(page_size) : ""));
}

}  // namespace flashattn::cputest

namespace flashattn::cputest {

// Logical elements of a q-like (k-like) tensor with head dim hd (d, or dv for o, dout, v, dv).
inline std::vector<int64_t> q_like_offsets(const FwdProblem& pr, int64_t bs, int64_t rs,
                                           int64_t hs, int hd) {
  const bool vl = pr.cfg.varlen();
  return offsets(bs, rs, hs, vl ? 1 : pr.cfg.b, vl ? pr.rows_q() : pr.cfg.seqlen_q, pr.cfg.h,
                 hd);
}
inline std::vector<int64_t> k_like_offsets(const FwdProblem& pr, int64_t bs, int64_t rs,
                                           int64_t hs, int hd) {
  const bool vl = pr.cfg.varlen();
  return offsets(bs, rs, hs, vl ? 1 : pr.cfg.b, vl ? pr.cu_k.back() : pr.cfg.seqlen_k,
                 pr.cfg.h_k, hd);
}

// dsinks computed in double from a forward's stored outputs: -sum_(b, i) exp(sink_h - lse) *
// (dout_i . o_i), with the given LSE ([b, h, s_q] or [h, total_q]) and o, dout read from bp.
// With the exact LSE and the backend's dtype-rounded o it is "the same math on the dtype's o",
// the error the backward inherits from the forward's rounding.
inline std::vector<double> dsinks_from(const BwdProblem& bp, const std::vector<float>& lse) {
  const FwdProblem& f = bp.fwd;
  const BwdParams& p = bp.params;
  const bool vl = f.cfg.varlen();
  const int dv = f.cfg.v_dim();
  std::vector<double> out(size_t(f.cfg.h), 0.0);
  for (int b = 0; b < f.cfg.b; ++b) {
    const int rows = vl ? f.cu_q[b + 1] - f.cu_q[b] : f.cfg.seqlen_q;
    const int64_t row0 = vl ? f.cu_q[b] : 0;
    for (int h = 0; h < f.cfg.h; ++h)
      for (int i = 0; i < rows; ++i) {
        const int64_t r = row0 + i, bb = vl ? 0 : b;
        double dot = 0;
        for (int x = 0; x < dv; ++x)
          dot += double(bp.dout.get(bb * p.do_batch_stride + r * p.do_row_stride +
                                    h * p.do_head_stride + x)) *
                 f.o.get(bb * p.o_batch_stride + r * p.o_row_stride + h * p.o_head_stride + x);
        const float l = vl ? lse[size_t(h) * f.rows_q() + r]
                           : lse[(size_t(b) * f.cfg.h + h) * f.cfg.seqlen_q + i];
        out[size_t(h)] -= std::exp(double(f.sinks[size_t(h)]) - l) * dot;
      }
  }
  return out;
}

// Forward then backward through the backend; the reference backward on fp32 copies of the
// same inputs. Gradients: at most 3x the dtype's rounding error of the exact gradient plus
// kBwdSlack relative to the gradient's magnitude. Returns the backend's problem.
inline BwdProblem check_bwd(const AttnConfig& c, uint64_t seed, const std::string& what = "") {
  SCOPED_TRACE(what + " seed=" + std::to_string(seed) + " | " + c.str());
  BwdProblem bp = testing::make_bwd_problem(c, seed);
  EXPECT_TRUE(run_fwd(bp.fwd.params).ok());
  bp.bind();
  const Status s = run_bwd(bp.params);
  EXPECT_TRUE(s.ok()) << s.to_string();
  if (!s.ok()) return bp;

  BwdProblem rp = bp;
  rp.fwd = as_fp32(bp.fwd);
  rp.fwd.o = bp.fwd.o.converted(DType::kFloat32);
  rp.dout = bp.dout.converted(DType::kFloat32);
  for (Buffer* g : {&rp.dq, &rp.dk, &rp.dv}) {
    *g = g->converted(DType::kFloat32);
    g->fill_nan();
  }
  std::fill(rp.dsinks.begin(), rp.dsinks.end(), std::numeric_limits<float>::quiet_NaN());
  rp.bind();
  rp.params.dtype = DType::kFloat32;
  const Status rs = ref::mha_bwd(rp.params);
  EXPECT_TRUE(rs.ok()) << rs.to_string();
  if (!rs.ok()) return bp;

  const BwdParams& p = bp.params;
  const int d = c.d, dv = c.v_dim();
  const auto qo = q_like_offsets(bp.fwd, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride, d);
  const auto ko = k_like_offsets(bp.fwd, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, d);
  const auto vo =
      k_like_offsets(bp.fwd, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, dv);
  struct Grad {
    const char* name;
    const Buffer* got;
    const Buffer* want;
    const std::vector<int64_t>* offs;
  };
  for (const Grad& g : {Grad{"dq", &bp.dq, &rp.dq, &qo}, Grad{"dk", &bp.dk, &rp.dk, &ko},
                        Grad{"dv", &bp.dv, &rp.dv, &vo}}) {
    const std::vector<float> want = read(*g.want, *g.offs);
    expect_close(read(*g.got, *g.offs), want, c.dtype, 3.0,
                 kBwdSlack * std::max(1.0, testing::max_abs(want)), g.name);
    expect_padding_untouched(*g.got, *g.offs, g.name);
  }
  if (c.sinks) {
    // dsinks sums -P_sink D over every row, D = dout . o from the forward's dtype-rounded o (as
    // the algorithm has it). Bound: 3x the larger of that inherited error (the same sum on the
    // rounded o, in double, against the exact one) and the dtype rounding of the result, plus
    // the fp32 slack; the result itself is fp32.
    const std::vector<float>& want = rp.dsinks;
    FwdProblem exact = as_fp32(bp.fwd);
    const Status es = ref::mha_fwd(exact.params);
    EXPECT_TRUE(es.ok()) << es.to_string();
    if (!es.ok()) return bp;
    std::vector<float> lowp;
    for (double x : dsinks_from(bp, exact.lse)) lowp.push_back(float(x));
    double inherited = rounding_error(want, c.dtype);
    for (size_t h = 0; h < want.size(); ++h)
      inherited = std::max(inherited, std::fabs(double(lowp[h]) - want[h]));
    const double bound = 3.0 * inherited + kBwdSlack * std::max(1.0, testing::max_abs(want));
    EXPECT_EQ(bp.dsinks.size(), want.size());
    if (bp.dsinks.size() != want.size()) return bp;
    for (size_t h = 0; h < want.size(); ++h) {
      EXPECT_TRUE(std::isfinite(bp.dsinks[h])) << "dsinks[" << h << "] not written";
      EXPECT_LE(std::fabs(double(bp.dsinks[h]) - want[h]), bound)
          << "dsinks[" << h << "]: " << bp.dsinks[h] << " vs " << want[h];
    }
  }
  return bp;
}

}  // namespace flashattn::cputest
