// Score modifiers applied between q.k and the softmax, in the order docs/semantics.md fixes:
//   s = scale * qk;  s = softcap * tanh(s / softcap) if softcap > 0;  s -= slope * |i + off - j|.
// Templated on the accumulation type so the reference runs it in double and kernels in float.
#pragma once

#include <cmath>

#include "common/host_device.h"

namespace flashattn {

template <typename T>
struct ScoreMod {
  T scale = T(1);
  T softcap = T(0);      // 0: off
  T alibi_slope = T(0);  // 0: off (a zero slope is the identity anyway)
  int offset = 0;        // seqlen_k - seqlen_q of this sequence

  FA_HD T apply(T qk, int i, int j) const {
    T s = qk * scale;
    if (softcap > T(0)) s = softcap * std::tanh(s / softcap);
    if (alibi_slope != T(0)) {
      int dist = i + offset - j;
      s -= alibi_slope * T(dist < 0 ? -dist : dist);
    }
    return s;
  }
  // d s / d (scale * qk): the softcap's tanh chain rule (1 - tanh^2), used by the backward.
  FA_HD T dscore(T qk) const {
    if (softcap <= T(0)) return T(1);
    T t = std::tanh(qk * scale / softcap);
    return T(1) - t * t;
  }
};

}  // namespace flashattn
