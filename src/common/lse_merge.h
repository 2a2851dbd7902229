// Log-sum-exp arithmetic for online softmax and split-KV merging, with the empty-set convention:
// an empty set of keys has lse = -inf and contributes nothing; a fully empty row reports +inf
// (flash_attn's convention for "no visible key") and outputs zeros.
#pragma once

#include <cmath>
#include <limits>

#include "common/host_device.h"

namespace flashattn {

template <typename T>
FA_HD T neg_inf() { return -std::numeric_limits<T>::infinity(); }

// log(exp(a) + exp(b)) with -inf as the identity.
template <typename T>
FA_HD T logaddexp(T a, T b) {
  if (a == neg_inf<T>()) return b;
  if (b == neg_inf<T>()) return a;
  T m = a > b ? a : b;
  return m + std::log(std::exp(a - m) + std::exp(b - m));
}

// Weight of a split with partial lse `part` in the merged result with total lse `total`.
template <typename T>
FA_HD T merge_weight(T part, T total) {
  if (part == neg_inf<T>() || total == neg_inf<T>()) return T(0);
  return std::exp(part - total);
}

// The LSE a caller reports for a row whose accumulated lse is `lse` (+inf for empty rows).
template <typename T>
FA_HD T finalize_lse(T lse) {
  return lse == neg_inf<T>() ? std::numeric_limits<T>::infinity() : lse;
}

}  // namespace flashattn
