// Score mods (softcap, ALiBi) and the visibility mask applied to an S = Q K^T register fragment,
// for every GPU arch (the fragment is seen through acc_layout_rowcol, common/accumulator.cuh).
//
// Each element's (query row, key column) comes from an identity tensor partitioned exactly like
// the accumulator (thr_mma.partition_C), so the rules are the shared ones of src/common: the
// VisibilityMask of mask.h decides visibility and the order of ScoreMod (score_mod.h) is kept:
// scale, softcap, ALiBi, then the mask. Values stay in t units (see common/online_softmax.cuh):
//   softcap:  t = tanh(q.k * scale / cap)            (unit = cap)
//   ALiBi:    t -= slope / unit * |i + s_k - s_q - j|
// kMasked = false is the hot path for tiles that VisibilityMask::tile_fully_visible proves fully
// visible: no compare, no select.
#pragma once

#include <cute/tensor.hpp>

#include <cmath>

#include "common/accumulator.cuh"
#include "common/mask.h"

namespace flashattn::gpu {

using namespace cute;

template <bool kHasSoftcap, bool kHasAlibi>
struct ScoreModTile {
  float softcap_prescale = 0.f;  // scale / cap (softcap only)
  float alibi_coef = 0.f;        // -slope / unit (ALiBi only)
  int offset = 0;                // s_k - s_q of this sequence (ALiBi distance)

  // acc_s: (MMA, MMA_M, MMA_N) scores of the tile whose top-left element is (m0, n0);
  // coord: identity tensor of the tile partitioned like acc_s.
  template <bool kMasked, class TensorS, class TensorC>
  __forceinline__ __device__ void apply(TensorS& acc_s, TensorC const& coord, int m0, int n0,
                                        VisibilityMask const& mask) const {
    Tensor s = make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout()));  // (rows, keys)
    Tensor c = make_tensor(coord.data(), acc_layout_rowcol(coord.layout()));
    // Coordinates are this thread's first element plus compile-time offsets. Everything per
    // element is written against those offsets (immediates), with the runtime part folded into
    // one value per row: otherwise the compiler hoists one register per element out of the loop.
    const int row0 = m0 + get<0>(c(0, 0));
    const int col0 = n0 + get<1>(c(0, 0));
    CUTE_UNROLL
    for (int mi = 0; mi < size<0>(s); ++mi) {
      const int row = row0 + (get<0>(c(mi, 0)) - get<0>(c(0, 0)));
      int lo = 0, hi = 0;  // visible iff lo <= (col - col0) < hi
      if constexpr (kMasked) {
        lo = mask.col_begin(row) - col0;
        hi = mask.col_end(row) - col0;
      }
      // ALiBi distance at col0, in fp32: exact while |i + s_k - s_q - j| < 2^24.
      const float dist0 = float(row + offset - col0);
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(s); ++ni) {
        const int dc = get<1>(c(mi, ni)) - get<1>(c(0, 0));  // compile-time
        float t = s(mi, ni);
        if constexpr (kHasSoftcap) t = tanhf(t * softcap_prescale);
        if constexpr (kHasAlibi) t += alibi_coef * fabsf(dist0 - float(dc));
        if constexpr (kMasked) {
          if (dc < lo || dc >= hi) t = -INFINITY;
        }
        s(mi, ni) = t;
      }
    }
  }
};

}  // namespace flashattn::gpu
