// Online softmax over the S tiles of one CTA (or one warpgroup), entirely in registers. Shared by
// every GPU arch: it sees an accumulator only through acc_layout_rowcol (common/accumulator.cuh),
// so the same code runs on the m16n8k16 (SM80) and wgmma (Hopper) fragments.
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
// O is rescaled by exp(m_old - m_new) after each tile, either always (rescale_o: straight-line
// FMULs that ptxas interleaves with the following P V MMAs) or only when some row of the warp got
// a new max (rescale_o_if: past the first few key blocks a block of n keys beats the running max
// of N earlier ones with probability ~ n / (N + n) per row, so most tiles skip d / 4 * kNRows
// FMULs). Which is faster depends on the CTA shape (tile_size_sm80.h).
#pragma once

#include <cute/tensor.hpp>

#include <cmath>

#include "common/accumulator.cuh"
#include "common/lse_merge.h"

namespace flashattn::gpu {

using namespace cute;

// kPLog2Scale: P is produced as 2^kPLog2Scale exp(s - m) (the FP8 kernels' 256 exp(s - m), which
// puts P's largest values at the top of e4m3's range; docs/fp8.md). l carries the same factor, so
// O / l is unchanged and only the LSE subtracts it. 0 everywhere else.
template <int kNRows, int kPLog2Scale = 0>
struct OnlineSoftmax {
  float row_max[kNRows];
  float row_sum[kNRows];
  float correction[kNRows];  // of the last update()
  float unit_log2;

  __forceinline__ __device__ explicit OnlineSoftmax(float unit_log2_) : unit_log2(unit_log2_) {
    CUTE_UNROLL
    for (int i = 0; i < kNRows; ++i) {
      row_max[i] = -INFINITY;
      row_sum[i] = 0.f;
    }
  }

  // Fold one S tile into the running state: turn acc_s into P = exp(s - m_new) in place, add
  // P's row sums to l, and leave in `correction` the factor exp(m_old - m_new) by which O must be
  // scaled (rescale_o*). Returns whether any row of the warp got a new max (warp-uniform): if
  // not, every correction is exactly 1 and the rescale may be skipped.
  // kCheckInf = false when every row of the tile has a visible key (its max is finite).
  template <bool kCheckInf, class TensorS>
  __forceinline__ __device__ bool update(TensorS& acc_s) {
    float m[kNRows];
    tile_max(acc_s, m);
    return update_with_max<kCheckInf>(acc_s, m);
  }

  // The two halves of update(), for warps that share rows (row pairs, sm80/mainloop_fwd_sm80.cuh):
  // tile_max gives each row's max over the running max and this thread's quad's columns of the
  // tile; the pair combines its two maxima (fmaxf, so both warps get the same bits) and
  // update_with_max goes on with the combined max m (>= the running max).
  template <class TensorS>
  __forceinline__ __device__ void tile_max(TensorS const& acc_s, float (&m)[kNRows]) const {
    Tensor s = make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout()));  // (rows, keys)
    static_assert(decltype(size<0>(s))::value == kNRows);
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      m[mi] = row_max[mi];
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(s); ++ni) m[mi] = fmaxf(m[mi], s(mi, ni));
      m[mi] = quad_allreduce_max(m[mi]);
    }
  }
  template <bool kCheckInf, class TensorS>
  __forceinline__ __device__ bool update_with_max(TensorS& acc_s, float const (&m)[kNRows]) {
    Tensor s = make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout()));  // (rows, keys)
    bool any_changed = false;
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      const bool changed = m[mi] != row_max[mi];
      any_changed |= changed;
      const float m_scaled = (kCheckInf && m[mi] == -INFINITY) ? 0.f : m[mi] * unit_log2;
      // m_old = -inf gives exp2(-inf) = 0: O and l are still 0, so nothing is lost.
      correction[mi] = changed ? exp2f(row_max[mi] * unit_log2 - m_scaled) : 1.f;
      row_max[mi] = m[mi];
      float m_p = m_scaled;
      if constexpr (kPLog2Scale != 0) m_p -= float(kPLog2Scale);
      float sum = 0.f;
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(s); ++ni) {
        const float p = exp2f(s(mi, ni) * unit_log2 - m_p);
        s(mi, ni) = p;
        sum += p;
      }
      row_sum[mi] = row_sum[mi] * correction[mi] + sum;
    }
    return __any_sync(0xffffffffu, any_changed);
  }

  // O *= correction, unconditionally: straight-line code that ptxas interleaves with the HMMAs
  // of the P V gemm that follows (each acc_o chunk is scaled just before its first MMA).
  template <class TensorO>
  __forceinline__ __device__ void rescale_o(TensorO& acc_o) const {
    Tensor o = make_tensor(acc_o.data(), acc_layout_rowcol(acc_o.layout()));  // (rows, d)
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      CUTE_UNROLL
      for (int di = 0; di < size<1>(o); ++di) o(mi, di) *= correction[mi];
    }
  }

  // O *= correction, skipped when `rescale` (warp-uniform) is false. Written as a loop whose trip
  // count (0 or 1) ptxas cannot see: a plain `if` gets if-converted into d / 4 * kNRows
  // predicated FMULs that take issue slots on every tile whether or not they run.
  template <class TensorO>
  __forceinline__ __device__ void rescale_o_if(bool rescale, TensorO& acc_o) const {
    Tensor o = make_tensor(acc_o.data(), acc_layout_rowcol(acc_o.layout()));  // (rows, d)
    int trips = rescale ? 1 : 0;
    asm volatile("" : "+r"(trips));  // opaque to both compilers
#pragma unroll 1
    for (; trips > 0; --trips) {
      CUTE_UNROLL
      for (int mi = 0; mi < kNRows; ++mi) {
        CUTE_UNROLL
        for (int di = 0; di < size<1>(o); ++di) o(mi, di) *= correction[mi];
      }
    }
  }

  // O /= l and the natural-log LSE per row (s units): lse = m_t * unit + ln(l). Rows that saw no
  // visible key (l == 0) get O = 0 and lse = +inf (docs/semantics.md). o_scale multiplies O
  // on top (dropout's 1 / (1 - p), folded into the one division by l).
  template <class TensorO>
  __forceinline__ __device__ void finalize(TensorO& acc_o, float unit, float (&lse)[kNRows]) {
    finalize_scaled</*kScaled=*/false>(acc_o, unit, lse, 1.f);
  }
  template <bool kScaled, class TensorO>
  __forceinline__ __device__ void finalize_scaled(TensorO& acc_o, float unit, float (&lse)[kNRows],
                                                  float o_scale) {
    Tensor o = make_tensor(acc_o.data(), acc_layout_rowcol(acc_o.layout()));
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      const float l = quad_allreduce_sum(row_sum[mi]);
      const bool empty = !(l > 0.f);
      const float inv = empty ? 0.f : (kScaled ? o_scale / l : 1.f / l);
      float lse_mi = row_max[mi] * unit + logf(l);
      if constexpr (kPLog2Scale != 0) lse_mi -= float(kPLog2Scale) * 0.6931471805599453f;
      lse[mi] = empty ? INFINITY : lse_mi;
      CUTE_UNROLL
      for (int di = 0; di < size<1>(o); ++di) o(mi, di) *= inv;
    }
  }
};

// Attention sinks (docs/semantics.md): the sink logit `sink` (s units, natural log) joins a
// finished row's softmax denominator as one more term with no value. Given the row's LSE over
// its keys (finalize(): +inf for a row that saw no key; the split merge's -inf means the same),
// returns the LSE with the sink, lse' = logaddexp(lse, sink), and sets *o_scale to the factor
// that turns O normalized over the keys into O normalized over keys and sink, exp(lse - lse').
// That factor is <= 1, so no step can overflow however large the sink is next to the scores. A
// row with no key gets lse' = sink and o_scale = 0 (its O is already 0). A sink of -inf returns
// lse unchanged and o_scale = 1 (an exact multiplication), so it gives the bits of no sink.
// Split-KV partials leave the sink out: it joins once, where the partials merge.
__forceinline__ __device__ float lse_with_sink(float lse, float sink, float* o_scale) {
  if (sink == -INFINITY) {
    *o_scale = 1.f;
    return lse;
  }
  if (lse == INFINITY || lse == -INFINITY) {
    *o_scale = 0.f;
    return sink;
  }
  const float merged = logaddexp(lse, sink);
  *o_scale = expf(lse - merged);
  return merged;
}

// lse_with_sink on every row of an accumulator whose rows were finalize()d: O scaled in place,
// lse[mi] replaced by the sink-inclusive LSE. Every lane of a quad holds the same lse[mi], so the
// lanes agree on the factor of their shared row.
template <class TensorO, int kNRows>
__forceinline__ __device__ void add_sink(TensorO& acc_o, float sink, float (&lse)[kNRows]) {
  Tensor o = make_tensor(acc_o.data(), acc_layout_rowcol(acc_o.layout()));  // (rows, d)
  static_assert(decltype(size<0>(o))::value == kNRows);
  CUTE_UNROLL
  for (int mi = 0; mi < kNRows; ++mi) {
    float o_scale;
    lse[mi] = lse_with_sink(lse[mi], sink, &o_scale);
    CUTE_UNROLL
    for (int di = 0; di < size<1>(o); ++di) o(mi, di) *= o_scale;
  }
}

}  // namespace flashattn::gpu
