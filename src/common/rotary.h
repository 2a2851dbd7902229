// Rotary position embedding (RoPE) on one head vector, in place. The table rows hold
// cos/sin(pos * theta_k) for k < rotary_dim / 2; dims >= rotary_dim are untouched.
//   interleaved (GPT-J):     pairs (2k, 2k+1)
//   halves (GPT-NeoX):       pairs (k, k + rotary_dim/2)
// x' = x0 cos - x1 sin,  y' = x0 sin + x1 cos.
#pragma once

#include "common/host_device.h"

namespace flashattn {

template <typename T, typename CosSinLoad>
FA_HD void apply_rotary(T* x, int rotary_dim, bool interleaved, CosSinLoad cos_sin) {
  const int half = rotary_dim / 2;
  for (int k = 0; k < half; ++k) {
    T c, s;
    cos_sin(k, &c, &s);
    const int a = interleaved ? 2 * k : k;
    const int b = interleaved ? 2 * k + 1 : k + half;
    T x0 = x[a], x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
  }
}

}  // namespace flashattn
