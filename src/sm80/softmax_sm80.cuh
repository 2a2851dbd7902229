// Online softmax over the S tiles of one CTA, entirely in registers.
//
// Scores arrive in "t units": the true score is s = t * unit (no softcap: t = q.k and
// unit = softmax_scale; softcap: t = tanh(q.k * scale / cap) and unit = cap; ALiBi is added in t
// units by the score mod). Keeping t un-scaled lets exp(s - m) be one FFMA + one EX2 per element:
//   p = exp2(t * unit_log2 - m_t * unit_log2),   unit_log2 = unit * log2(e),
// and the running max m_t is taken over t directly, which is valid because unit > 0 (the host
// rejects a negative scale without softcap).
//
// Per query row the thread keeps m (running max of t) and a PARTIAL l (sum of p over the columns
// this thread owns); the four lanes of a quad share a row, so m is quad-reduced every tile (it
// must agree across the row) but l only once, in finalize().
// Masked scores are -inf. A row whose max is still -inf (nothing visible yet) uses 0 as the
// subtraction baseline, so p = exp2(-inf) = 0 and no NaN (-inf - -inf) appears.
#pragma once

#include <cute/tensor.hpp>

#include <cmath>

#include "sm80/utils_sm80.cuh"

namespace flashattn::sm80 {

using namespace cute;

template <int kNRows>
struct OnlineSoftmaxSm80 {
  float row_max[kNRows];
  float row_sum[kNRows];
  float unit_log2;

  __forceinline__ __device__ explicit OnlineSoftmaxSm80(float unit_log2_) : unit_log2(unit_log2_) {
    CUTE_UNROLL
    for (int i = 0; i < kNRows; ++i) {
      row_max[i] = -INFINITY;
      row_sum[i] = 0.f;
    }
  }

  // Fold one S tile into the running state: rescale O by exp(m_old - m_new), turn acc_s into
  // P = exp(s - m_new) in place, and add P's row sums to l.
  template <class TensorS, class TensorO>
  __forceinline__ __device__ void update(TensorS& acc_s, TensorO& acc_o) {
    Tensor s = make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout()));  // (rows, keys)
    Tensor o = make_tensor(acc_o.data(), acc_layout_rowcol(acc_o.layout()));  // (rows, d)
    static_assert(decltype(size<0>(s))::value == kNRows);
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      float m = row_max[mi];
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(s); ++ni) m = fmaxf(m, s(mi, ni));
      m = quad_allreduce_max(m);
      const float m_scaled = m == -INFINITY ? 0.f : m * unit_log2;
      // m_old = -inf gives exp2(-inf) = 0: O and l are still 0, so nothing is lost.
      const float correction = exp2f(row_max[mi] * unit_log2 - m_scaled);
      row_max[mi] = m;
      float sum = 0.f;
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(s); ++ni) {
        const float p = exp2f(s(mi, ni) * unit_log2 - m_scaled);
        s(mi, ni) = p;
        sum += p;
      }
      row_sum[mi] = row_sum[mi] * correction + sum;
      CUTE_UNROLL
      for (int di = 0; di < size<1>(o); ++di) o(mi, di) *= correction;
    }
  }

  // O /= l and the natural-log LSE per row (s units): lse = m_t * unit + ln(l). Rows that saw no
  // visible key (l == 0) get O = 0 and lse = +inf (DESIGN.md section 1).
  template <class TensorO>
  __forceinline__ __device__ void finalize(TensorO& acc_o, float unit, float (&lse)[kNRows]) {
    Tensor o = make_tensor(acc_o.data(), acc_layout_rowcol(acc_o.layout()));
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      const float l = quad_allreduce_sum(row_sum[mi]);
      const bool empty = !(l > 0.f);
      const float inv = empty ? 0.f : 1.f / l;
      lse[mi] = empty ? INFINITY : row_max[mi] * unit + logf(l);
      CUTE_UNROLL
      for (int di = 0; di < size<1>(o); ++di) o(mi, di) *= inv;
    }
  }
};

}  // namespace flashattn::sm80
