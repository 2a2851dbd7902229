// Checks shared by the SM80 forward GPU tests (test_fwd_sm80.cu, test_fwd_features_sm80.cu,
// test_gpu_sinks_dv.cu): what was compiled, the low-precision attention of flash_attn's 2x rule,
// the small (CPU reference, every row) and large (GPU fp32 reference, sampled rows) checks, and
// the probabilities returned through p_ptr (check_dropout_probs).
//
// Oracles:
//  - small shapes: the CPU reference (flashattn::ref::mha_fwd, double accumulation) on fp32
//    copies of the very inputs the GPU saw;
//  - large shapes: the naive fp32 GPU reference (flashattn::cuda::ref::mha_fwd) on fp32 copies.
// Tolerance (flash_attn's rule): max|out - ref| <= 2 * max|out_lowp - ref| + 1e-5, where out_lowp
// is the same attention computed "in the input dtype" the way PyTorch's fp16/bf16 path does it
// (flash_attn's attention_ref with upcast=False): q * scale rounded to the dtype, scores rounded,
// softcap steps rounded, ALiBi bias added in fp32, softmax in fp32 then probabilities rounded,
// dropout as a zeroed P times v / (1 - p) rounded, output rounded. That low-precision attention is
// computed here on the host (lowp_row). The LSE gets the same rule with a 1e-3 floor (the lowp LSE
// comes from rounded scores). Attention sinks join the fp32 softmax as one more term.
// Every output is poisoned with NaN before the call; every logical element must come back finite
// (written) and every padding element still NaN (nothing written outside the tensor's view).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "api/validate.h"
#include "common/mask.h"
#include "common/numeric.h"
#include "common/paged_kv.h"
#include "common/philox.h"
#include "common/seqlen.h"
#include "cpu/reference.h"
#include "cuda/reference.h"
#include "flashattn/flashattn.h"
#include "gpu/gpu_testing.h"
#include "testing/problem.h"

namespace flashattn::testing {

inline constexpr double kInf = std::numeric_limits<double>::infinity();

inline bool hdim_compiled(int d) {
  const int rounded = d <= 32 ? 32 : d <= 64 ? 64 : d <= 96 ? 96 : d <= 128 ? 128 : d <= 192 ? 192 : 256;
  for (int hd : build_info().head_dims)
    if (hd == rounded) return true;
  return false;
}

inline bool dtype_compiled(DType t) {
  for (const std::string& s : build_info().dtypes)
    if (s == dtype_name(t)) return true;
  return false;
}

inline std::vector<DType> compiled_dtypes() {
  std::vector<DType> v;
  for (DType t : {DType::kBFloat16, DType::kFloat16})
    if (dtype_compiled(t)) v.push_back(t);
  return v;
}

// ------------------------------------------------------------------ low-precision reference --

// Attention of one (sequence bb, query row i, query head hh) computed like PyTorch's fp16/bf16
// path (see the file comment). Writes d outputs (rounded to the dtype) and the row's LSE.
inline void lowp_row(const FwdProblem& pr, int bb, int i, int hh, float* out, double* lse_out) {
  const FwdParams p = detail::resolve(pr.params);
  const DType t = p.dtype;
  const bool varlen = p.cu_seqlens_q != nullptr;
  const SeqlenInfo seq = SeqlenInfo::make(p, bb);
  const VisibilityMask mask = VisibilityMask::make(seq.seqlen_q, seq.seqlen_k, p.is_causal,
                                                   p.window_size_left, p.window_size_right);
  const int kvh = hh / (p.h / p.h_k);
  const PagedKV paged{p.block_table, p.block_table_batch_stride, p.page_block_size};
  auto key_offset = [&](int j, int64_t bs, int64_t rs, int64_t hs) {
    return p.block_table != nullptr ? paged.offset(bb, j, kvh, bs, rs, hs)
                                    : seq.k_offset(bs, rs, hs, bb, j, kvh, varlen);
  };
  DropoutRng rng;
  rng.seed = p.philox_seed;
  rng.offset = p.philox_offset;
  rng.threshold = dropout_threshold(p.p_dropout);
  const bool dropout = p.p_dropout > 0.f;
  const uint64_t bh = uint64_t(bb) * p.h + hh;
  const int64_t qo = seq.q_offset(p.q_batch_stride, p.q_row_stride, p.q_head_stride, bb, i, hh, varlen);
  std::vector<double> qs(p.d);
  for (int x = 0; x < p.d; ++x) qs[x] = round_to_dtype(pr.q.get(qo + x) * p.softmax_scale, t);
  const double slope = p.alibi_slopes ? p.alibi_slopes[bb * p.alibi_slopes_batch_stride + hh] : 0.0;
  const int cb = mask.col_begin(i), ce = mask.col_end(i);
  std::vector<double> s;
  double m = -kInf;
  for (int j = cb; j < ce; ++j) {
    const int64_t ko = key_offset(j, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
    double dot = 0;
    for (int x = 0; x < p.d; ++x) dot += qs[x] * pr.k.get(ko + x);
    double v = round_to_dtype(float(dot), t);
    if (p.softcap > 0) {
      v = round_to_dtype(float(v / p.softcap), t);
      v = round_to_dtype(float(std::tanh(v)), t);
      v = round_to_dtype(float(v * p.softcap), t);
    }
    if (slope != 0) v = float(v - slope * std::abs(i + seq.seqlen_k - seq.seqlen_q - j));
    s.push_back(v);
    m = std::max(m, v);
  }
  std::vector<double> acc(p.d, 0.0);
  // Attention sinks: one more softmax term (the fp32 logit as given) with no value; a row with
  // no key then has lse = sink.
  const double sink = p.sinks != nullptr ? double(p.sinks[hh]) : -kInf;
  if (s.empty()) {
    for (int x = 0; x < p.d; ++x) out[x] = 0.f;
    *lse_out = sink == -kInf ? kInf : sink;
    return;
  }
  m = std::max(m, sink);
  double l = std::exp(sink - m);
  for (double v : s) l += std::exp(v - m);
  // Dropout as flash_attn's attention_ref: rounded P with the dropped entries zeroed, times
  // v * 1 / (1 - p) rounded to the dtype.
  const double keep_scale = dropout ? 1.0 / (1.0 - double(p.p_dropout)) : 1.0;
  for (int j = cb; j < ce; ++j) {
    if (dropout && !rng.keep(bh, i, j)) continue;
    const double pj = round_to_dtype(float(std::exp(s[j - cb] - m) / l), t);
    const int64_t vo = key_offset(j, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
    for (int x = 0; x < p.d; ++x) {
      const double v = pr.v.get(vo + x);
      acc[x] += pj * (dropout ? round_to_dtype(float(v * keep_scale), t) : v);
    }
  }
  for (int x = 0; x < p.d; ++x) out[x] = round_to_dtype(float(acc[x]), t);
  *lse_out = m + std::log(l);
}

// Row r of the logical [rows, h, d] output / the LSE index, for (bb, i, hh).
struct RowIndex {
  int64_t o_row;   // row in gather_o's [rows, h, d]
  int64_t lse;     // index into FwdProblem::lse
};
inline RowIndex row_index(const FwdProblem& pr, int bb, int i, int hh) {
  const FwdParams& p = pr.params;
  if (p.cu_seqlens_q != nullptr) {
    const int64_t r = pr.cu_q[bb] + i;
    return {r, int64_t(hh) * pr.cu_q.back() + r};
  }
  return {int64_t(bb) * p.seqlen_q + i, (int64_t(bb) * p.h + hh) * p.seqlen_q + i};
}

inline int seqlen_q_of(const FwdProblem& pr, int bb) {
  return pr.params.cu_seqlens_q ? pr.cu_q[bb + 1] - pr.cu_q[bb] : pr.params.seqlen_q;
}

// ------------------------------------------------------------------------------ the checks --

struct RunResult {
  Status status;
  std::vector<float> o;    // gathered [rows, h, d]
  std::vector<float> lse;
  Buffer o_raw;            // the whole o buffer (padding included)
};

// The result of a call that ran on dev (a device copy of pr) and returned s.
inline RunResult collect(const FwdProblem& pr, DeviceFwdProblem& dev, Status s) {
  RunResult r;
  r.status = s;
  FwdProblem out = pr;
  dev.copy_back(out);
  r.o = gather_o(out);
  r.lse = out.lse;
  r.o_raw = out.o;
  return r;
}

inline RunResult run_gpu(const FwdProblem& pr) {
  DeviceFwdProblem dev(pr);
  return collect(pr, dev, pr.cfg.varlen() ? mha_varlen_fwd(dev.params) : mha_fwd(dev.params));
}

// Elements of the o buffer that belong to the logical tensor.
inline int64_t logical_o_elements(const FwdProblem& pr) { return int64_t(pr.rows_q()) * pr.cfg.h * pr.cfg.d; }

struct Errors {
  double out = 0, out_lowp = 0, lse = 0, lse_lowp = 0;
};

// Max errors of `got` and of the low-precision attention against the fp32 oracle, over the given
// (sequence, row, head) rows; lse infinities must match exactly.
inline Errors measure(const FwdProblem& pr, const RunResult& got, const std::vector<float>& ref_o,
               const std::vector<float>& ref_lse, const std::vector<std::array<int, 3>>& rows,
               bool all_rows_for_out) {
  Errors e;
  const int h = pr.cfg.h, d = pr.cfg.d;
  std::vector<float> lo(d);
  for (const auto& t : rows) {
    const RowIndex ri = row_index(pr, t[0], t[1], t[2]);
    double lse_lowp;
    lowp_row(pr, t[0], t[1], t[2], lo.data(), &lse_lowp);
    const int64_t base = (ri.o_row * h + t[2]) * d;
    for (int x = 0; x < d; ++x) {
      e.out_lowp = std::max(e.out_lowp, double(std::fabs(lo[x] - ref_o[base + x])));
      if (!all_rows_for_out) e.out = std::max(e.out, double(std::fabs(got.o[base + x] - ref_o[base + x])));
    }
    const double rl = ref_lse[ri.lse];
    if (std::isinf(rl)) {
      EXPECT_TRUE(std::isinf(lse_lowp)) << "lowp reference disagrees on an empty row";
    } else {
      e.lse_lowp = std::max(e.lse_lowp, std::fabs(lse_lowp - rl));
    }
  }
  if (all_rows_for_out) {
    for (size_t x = 0; x < got.o.size(); ++x)
      e.out = std::max(e.out, double(std::fabs(got.o[x] - ref_o[x])));
  }
  for (size_t x = 0; x < got.lse.size(); ++x) {
    const double g = got.lse[x], w = ref_lse[x];
    if (std::isinf(w) || std::isinf(g)) {
      EXPECT_EQ(g, w) << "LSE infinity mismatch at " << x;
      continue;
    }
    e.lse = std::max(e.lse, std::fabs(g - w));
  }
  return e;
}

inline std::vector<std::array<int, 3>> all_rows(const FwdProblem& pr) {
  std::vector<std::array<int, 3>> v;
  for (int bb = 0; bb < pr.cfg.b; ++bb)
    for (int i = 0; i < seqlen_q_of(pr, bb); ++i)
      for (int hh = 0; hh < pr.cfg.h; ++hh) v.push_back({bb, i, hh});
  return v;
}

// Rows of every sequence's first and last query block plus random ones (large shapes), every head.
// The first 32 rows are all included: with causal/window masks and s_q > s_k they are the rows
// with the fewest visible keys, where outputs are largest and rounding errors peak (a bound drawn
// only from rows averaging thousands of keys would understate what correct bf16 math gives there).
inline std::vector<std::array<int, 3>> sample_rows(const FwdProblem& pr, uint64_t seed, int n_random) {
  std::mt19937_64 rng(seed);
  std::vector<std::array<int, 3>> v;
  for (int bb = 0; bb < pr.cfg.b; ++bb) {
    const int sq = seqlen_q_of(pr, bb);
    if (sq == 0) continue;
    std::vector<int> rows;
    for (int i = 0; i < std::min(sq, 32); ++i) rows.push_back(i);
    for (int i : {127, 128, sq / 2, sq - 129, sq - 2, sq - 1})
      if (i >= 32 && i < sq) rows.push_back(i);
    for (int k = 0; k < n_random; ++k) rows.push_back(int(rng() % sq));
    for (int i : rows)
      for (int hh = 0; hh < pr.cfg.h; ++hh) v.push_back({bb, i, hh});
  }
  return v;
}

inline void check_written(const FwdProblem& pr, const RunResult& r) {
  int64_t nonfinite = 0;
  for (float x : r.o) nonfinite += std::isfinite(x) ? 0 : 1;
  EXPECT_EQ(nonfinite, 0) << "output elements not written (still NaN) or non-finite";
  int64_t nan_total = 0;
  for (int64_t x = 0; x < r.o_raw.numel; ++x) nan_total += std::isnan(r.o_raw.get(x)) ? 1 : 0;
  EXPECT_EQ(nan_total, r.o_raw.numel - logical_o_elements(pr))
      << "elements outside the output view were written";
  int64_t lse_nan = 0;
  for (float x : r.lse) lse_nan += std::isnan(x) ? 1 : 0;
  EXPECT_EQ(lse_nan, 0) << "LSE entries not written";
}

inline void check_bounds(const char* group, const AttnConfig& cfg, const Errors& e) {
  const double bound = 2 * e.out_lowp + 1e-5;
  const double lse_bound = 2 * e.lse_lowp + 1e-3;
  std::printf("[fwd-sm80] %s max_err=%.3g bound=%.3g lse_err=%.3g lse_bound=%.3g cfg=%s\n", group,
              e.out, bound, e.lse, lse_bound, cfg.str().c_str());
  std::fflush(stdout);
  EXPECT_LE(e.out, bound) << cfg.str();
  EXPECT_LE(e.lse, lse_bound) << cfg.str();
  // Sanity of the oracle pair: the low-precision attention must itself be close to the fp32 one
  // (if the two references disagreed on the semantics, the bound above would be meaningless).
  const double lowp_sane = cfg.dtype == DType::kBFloat16 ? 0.05 : 0.01;
  EXPECT_LE(e.out_lowp, lowp_sane) << "low-precision reference far from the fp32 oracle: " << cfg.str();
}

// Small problem: CPU reference over every row; also checks repeatability (bitwise). Returns the
// GPU result for further comparisons.
inline RunResult check_small_problem(const char* group, const FwdProblem& pr, uint64_t seed) {
  const AttnConfig& cfg = pr.cfg;
  SCOPED_TRACE(cfg.str() + " seed=" + std::to_string(seed));
  const RunResult got = run_gpu(pr);
  EXPECT_TRUE(got.status.ok()) << got.status.to_string();
  if (!got.status.ok()) return got;
  check_written(pr, got);

  FwdProblem ref = as_fp32(pr);
  const Status rs = ref::mha_fwd(ref.params);
  EXPECT_TRUE(rs.ok()) << "CPU reference: " << rs.to_string();
  if (!rs.ok()) return got;
  const Errors e = measure(pr, got, gather_o(ref), ref.lse, all_rows(pr), true);
  check_bounds(group, cfg, e);

  const RunResult again = run_gpu(pr);
  EXPECT_TRUE(again.status.ok());
  EXPECT_EQ(0, std::memcmp(got.o_raw.data(), again.o_raw.data(), got.o_raw.bytes.size()))
      << "two runs differ (output)";
  EXPECT_EQ(0, std::memcmp(got.lse.data(), again.lse.data(), got.lse.size() * sizeof(float)))
      << "two runs differ (LSE)";
  return got;
}

inline RunResult check_small(const char* group, const AttnConfig& cfg) {
  const uint64_t seed = fresh_seed();
  return check_small_problem(group, make_fwd_problem(cfg, seed), seed);
}

// Large problem: the 2x rule on sampled rows (kernel and low-precision attention measured on the
// same rows against the GPU fp32 reference), and every element of the output against the fp32
// reference within 2x the low-precision error of the sampled rows that include the worst-case
// (fewest-keys) rows.
inline RunResult check_large_problem(const char* group, const FwdProblem& pr, uint64_t seed) {
  const AttnConfig& cfg = pr.cfg;
  SCOPED_TRACE(cfg.str() + " seed=" + std::to_string(seed));
  const RunResult got = run_gpu(pr);
  EXPECT_TRUE(got.status.ok()) << got.status.to_string();
  if (!got.status.ok()) return got;
  check_written(pr, got);

  FwdProblem ref = as_fp32(pr);
  DeviceFwdProblem dref(ref);
  const Status rs = cuda::ref::mha_fwd(detail::resolve(dref.params));
  EXPECT_TRUE(rs.ok()) << "GPU reference: " << rs.to_string();
  if (!rs.ok()) return got;
  dref.copy_back(ref);
  const std::vector<float> ref_o = gather_o(ref);
  const std::vector<std::array<int, 3>> rows = sample_rows(pr, seed, 48);
  const Errors sampled = measure(pr, got, ref_o, ref.lse, rows, false);
  check_bounds(group, cfg, sampled);
  double every_row = 0;
  for (size_t x = 0; x < got.o.size(); ++x)
    every_row = std::max(every_row, double(std::fabs(got.o[x] - ref_o[x])));
  EXPECT_LE(every_row, 2 * sampled.out_lowp + 1e-5) << "all rows: " << cfg.str();
  return got;
}

inline RunResult check_large(const char* group, const AttnConfig& cfg) {
  const uint64_t seed = fresh_seed();
  return check_large_problem(group, make_fwd_problem(cfg, seed), seed);
}

// Dropout with p_ptr: outputs within the 2x rule of the reference that draws the same mask, and
// the probabilities (negated where dropped) against the reference's: the sign pattern exactly,
// the values within two roundings of the dtype.
inline void check_dropout_probs(const char* group, const AttnConfig& cfg) {
  const uint64_t seed = fresh_seed();
  FwdProblem pr = make_fwd_problem(cfg, seed);
  pr.params.philox_seed = fresh_seed();
  pr.params.philox_offset = fresh_seed() % 100000;
  SCOPED_TRACE(cfg.str() + " seed=" + std::to_string(seed) + " philox_seed=" +
               std::to_string(pr.params.philox_seed));
  check_small_problem(group, pr, seed);
  if (!cfg.return_probs) return;

  DeviceFwdProblem dev(pr);
  ASSERT_TRUE(mha_fwd(dev.params).ok());
  FwdProblem out = pr;
  dev.copy_back(out);
  FwdProblem ref = as_fp32(pr);
  ASSERT_TRUE(ref::mha_fwd(ref.params).ok());
  const double u = unit_roundoff(cfg.dtype);
  int64_t sign_mismatch = 0, bad = 0, dropped = 0, visible = 0, nonfinite = 0;
  double worst = 0;
  for (int64_t i = 0; i < out.p.numel; ++i) {
    const float g = out.p.get(i), w = ref.p.get(i);
    if (!std::isfinite(g)) {
      ++nonfinite;
      continue;
    }
    if (std::signbit(g) != std::signbit(w)) ++sign_mismatch;
    if (w != 0.f) ++visible;
    if (std::signbit(w)) ++dropped;
    const double err = std::fabs(double(g) - double(w));
    worst = std::max(worst, err);
    if (err > 2 * u * std::fabs(double(w)) + 1e-6) ++bad;
  }
  std::printf("[fwd-features] %s probs max_err=%.3g dropped=%lld of %lld cfg=%s\n", group, worst,
              static_cast<long long>(dropped), static_cast<long long>(visible), cfg.str().c_str());
  std::fflush(stdout);
  EXPECT_EQ(nonfinite, 0) << "p_ptr elements not written";
  EXPECT_EQ(sign_mismatch, 0) << "keep pattern differs from the reference's";
  EXPECT_EQ(bad, 0) << "probabilities off the reference (max |diff| " << worst << ")";
  if (cfg.p_dropout > 0 && visible > 2000) {
    const double rate = double(dropped) / double(visible);
    const double sigma = std::sqrt(cfg.p_dropout * (1 - cfg.p_dropout) / double(visible));
    EXPECT_NEAR(rate, cfg.p_dropout, 6 * sigma) << "dropped fraction";
  }
}

}  // namespace flashattn::testing
