// Helpers shared by the tests of the CPU reference (test_reference*.cpp): element access to the
// logical [batch, rows, heads, d] tensors of a test problem, the brute-force DESIGN visibility
// rule, and LSE/output readers. Header-only; each test binary includes it.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "cpu/reference.h"
#include "testing/problem.h"

namespace flashattn::reftest {

using testing::Buffer;

#define ASSERT_OK(expr)                                              \
  do {                                                               \
    const ::flashattn::Status status_ = (expr);                      \
    ASSERT_TRUE(status_.ok()) << #expr << ": " << status_.to_string(); \
  } while (0)

constexpr float kInfF = std::numeric_limits<float>::infinity();

// Fresh random inputs on every run; tests print the seed (SCOPED_TRACE) so a failure can be
// replayed: FA_TEST_SEED=<seed> makes every call return that seed (run the one failing test with
// --gtest_filter; checks that draw their inputs from (config, seed) then rebuild the same ones).
inline uint64_t fresh_seed() {
  if (const char* forced = std::getenv("FA_TEST_SEED")) return std::strtoull(forced, nullptr, 10);
  static std::mt19937_64 rng(std::random_device{}());
  return rng();
}
inline std::string seed_str(uint64_t seed) { return "seed=" + std::to_string(seed); }

// A logical [batch, rows, heads, d] view of a strided buffer (varlen: batch 0, global rows).
struct View {
  Buffer* buf = nullptr;
  int64_t batch_stride = 0, row_stride = 0, head_stride = 0;

  int64_t offset(int b, int r, int h, int x) const {
    return b * batch_stride + r * row_stride + h * head_stride + x;
  }
  float get(int b, int r, int h, int x) const { return buf->get(offset(b, r, h, x)); }
  void set(int b, int r, int h, int x, float v) const { buf->set(offset(b, r, h, x), v); }
};

inline View q_view(testing::FwdProblem& pr) {
  const FwdParams& p = pr.params;
  return {&pr.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride};
}
inline View k_view(testing::FwdProblem& pr) {
  const FwdParams& p = pr.params;
  return {&pr.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride};
}
inline View v_view(testing::FwdProblem& pr) {
  const FwdParams& p = pr.params;
  return {&pr.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride};
}
inline View o_view(testing::FwdProblem& pr) {
  const FwdParams& p = pr.params;
  return {&pr.o, p.o_batch_stride, p.o_row_stride, p.o_head_stride};
}

// Dense LSE [b, h, s_q].
inline float lse_at(const testing::FwdProblem& pr, int b, int h, int i) {
  return pr.lse[(size_t(b) * pr.cfg.h + h) * pr.cfg.seqlen_q + i];
}

// The visibility rule of docs/semantics.md, written independently of common/mask.h.
inline bool design_visible(int i, int j, int s_q, int s_k, bool causal, int left, int right) {
  if (causal) right = 0;
  if (i < 0 || i >= s_q || j < 0 || j >= s_k) return false;
  const long long off = (long long)i + s_k - s_q;
  if (left >= 0 && j < off - left) return false;
  if (right >= 0 && j > off + right) return false;
  return true;
}
inline bool design_visible(const testing::AttnConfig& c, int i, int j, int s_q, int s_k) {
  return design_visible(i, j, s_q, s_k, c.causal, c.window_left, c.window_right);
}

// Offsets of every logical element of a [batch, rows, heads, d] strided tensor, in the order
// testing::gather uses (so index n of a gathered vector is element offsets[n]).
inline std::vector<int64_t> logical_offsets(int64_t batch_stride, int64_t row_stride,
                                            int64_t head_stride, int batch, int rows, int heads,
                                            int d) {
  std::vector<int64_t> out;
  for (int b = 0; b < batch; ++b)
    for (int r = 0; r < rows; ++r)
      for (int h = 0; h < heads; ++h)
        for (int x = 0; x < d; ++x) out.push_back(b * batch_stride + r * row_stride + h * head_stride + x);
  return out;
}

// Logical elements of the q, k, v and o tensors of a (dense or varlen) problem (the gradients
// share their strides: dq q's, dk k's, dv v's, dout o's).
inline std::vector<int64_t> q_offsets(const testing::FwdProblem& pr) {
  const FwdParams& p = pr.params;
  const bool vl = pr.cfg.varlen();
  return logical_offsets(p.q_batch_stride, p.q_row_stride, p.q_head_stride, vl ? 1 : pr.cfg.b,
                         vl ? pr.rows_q() : pr.cfg.seqlen_q, pr.cfg.h, pr.cfg.d);
}
inline std::vector<int64_t> k_offsets(const testing::FwdProblem& pr) {
  const FwdParams& p = pr.params;
  const bool vl = pr.cfg.varlen();
  return logical_offsets(p.k_batch_stride, p.k_row_stride, p.k_head_stride, vl ? 1 : pr.cfg.b,
                         vl ? pr.cu_k.back() : pr.cfg.seqlen_k, pr.cfg.h_k, pr.cfg.d);
}
inline std::vector<int64_t> v_offsets(const testing::FwdProblem& pr) {
  const FwdParams& p = pr.params;
  const bool vl = pr.cfg.varlen();
  return logical_offsets(p.v_batch_stride, p.v_row_stride, p.v_head_stride, vl ? 1 : pr.cfg.b,
                         vl ? pr.cu_k.back() : pr.cfg.seqlen_k, pr.cfg.h_k, pr.cfg.v_dim());
}
inline std::vector<int64_t> o_offsets(const testing::FwdProblem& pr) {
  const FwdParams& p = pr.params;
  const bool vl = pr.cfg.varlen();
  return logical_offsets(p.o_batch_stride, p.o_row_stride, p.o_head_stride, vl ? 1 : pr.cfg.b,
                         vl ? pr.rows_q() : pr.cfg.seqlen_q, pr.cfg.h, pr.cfg.v_dim());
}

inline std::vector<float> read(const Buffer& b, const std::vector<int64_t>& offsets) {
  std::vector<float> out;
  out.reserve(offsets.size());
  for (int64_t o : offsets) out.push_back(b.get(o));
  return out;
}

// Snap every logical input element to a multiple of 2^-12: then adding a multiple of 2^-12 of
// magnitude < 1 is exact in fp32, so perturbations and shifts in the tests are exact.
inline void snap_to_grid(Buffer& b, const std::vector<int64_t>& offsets) {
  for (int64_t o : offsets) b.set(o, std::round(b.get(o) * 4096.f) / 4096.f);
}

}  // namespace flashattn::reftest
