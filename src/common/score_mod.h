// Score modifiers applied between q.k and the softmax, in the order docs/semantics.md fixes:
//   s = scale * qk;  s = softcap * tanh(s / softcap) if softcap > 0;  s -= slope * |i + off - j|.
// Templated on the accumulation type so the reference runs it in double and kernels in float.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"
#include "flashattn/params.h"

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
  // The score mods of query head hq of batch entry bidb, a sequence of seqlen_q queries and
  // seqlen_k keys: the one place params become a ScoreMod, for the CPU reference (double) and
  // the CPU backend's forward and backward (float). BwdParams is a FwdParams.
  static ScoreMod of(const FwdParams& p, int bidb, int hq, int seqlen_q, int seqlen_k) {
    ScoreMod mod;
    mod.scale = T(p.softmax_scale);
    mod.softcap = T(p.softcap);
    mod.alibi_slope = T(alibi_slope_of(p, bidb, hq));
    mod.offset = seqlen_k - seqlen_q;
    return mod;
  }
  // ALiBi slope of query head hq of batch entry bidb: slopes are [h] (batch stride 0) or [b, h];
  // 0 (the identity) without ALiBi.
  static float alibi_slope_of(const FwdParams& p, int bidb, int hq) {
    if (p.alibi_slopes == nullptr) return 0.f;
    return p.alibi_slopes[int64_t(bidb) * p.alibi_slopes_batch_stride + hq];
  }
  // d s / d (scale * qk): the softcap's tanh chain rule (1 - tanh^2), used by the backward.
  FA_HD T dscore(T qk) const {
    if (softcap <= T(0)) return T(1);
    T t = std::tanh(qk * scale / softcap);
    return T(1) - t * t;
  }
};

// How the GPU kernels carry scores (common/online_softmax.cuh): in "t units", the true score
// being s = t * unit. Without softcap t = q.k and unit = softmax_scale; with softcap
// t = tanh(q.k * softcap_prescale) and unit = softcap. unit_log2 = unit * log2(e) turns
// exp(s - m) into one FFMA and one exp2.
struct ScoreUnits {
  float unit = 1.f;
  float unit_log2 = 1.f;
  float softcap_prescale = 0.f;  // softmax_scale / softcap (softcap only)

  FA_HD static ScoreUnits of(float softmax_scale, float softcap) {
    ScoreUnits u;
    const bool has_softcap = softcap > 0.f;
    u.unit = has_softcap ? softcap : softmax_scale;
    u.unit_log2 = u.unit * 1.4426950408889634f;
    u.softcap_prescale = has_softcap ? softmax_scale / softcap : 0.f;
    return u;
  }
};

}  // namespace flashattn
