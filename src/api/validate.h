// Host layer: argument validation. Every rule of docs/validation.md is checked here before any
// output is touched, and a failure names the argument and the rule, e.g.
//   "k_row_stride: 100 is not a multiple of 8 (16-byte aligned rows required on the GPU)".
// Value checks on index arrays (cu_seqlens, seqused_k, block_table, cache_seqlens, ...) need the
// values: they run here when the arrays are host memory (Backend::kCpu); for device memory they
// are the GPU path's job (mha_fwd_kvcache checks its values on the device before anything is
// written; the other entry points' kernels skip bad sequences), docs/validation.md lists which
// checks need device values and their cost.
#pragma once

#include <cmath>

#include "common/kvcache_index.h"
#include "flashattn/flashattn.h"

namespace flashattn::detail {

// Defaults applied before validation and dispatch: softmax_scale 0 -> 1/sqrt(d); dv 0 -> d;
// is_causal -> window_size_right = 0; out_dtype unset -> dtype (bf16 for fp8 inputs). Works on
// any params struct derived from FwdParams.
template <typename P>
P resolve(P p) {
  if (p.softmax_scale == 0.f && p.d > 0) p.softmax_scale = 1.f / std::sqrt(float(p.d));
  if (p.dv == 0) p.dv = p.d;
  if (p.out_dtype == DType::kUnset)
    p.out_dtype = p.dtype == DType::kFloat8E4M3 ? DType::kBFloat16 : p.dtype;
  if (p.is_causal) p.window_size_right = 0;
  return p;
}

// `varlen` is true for the varlen entry points (cu_seqlens required), false for dense ones.
Status validate_fwd(const FwdParams& p, Backend be, bool varlen);
Status validate_bwd(const BwdParams& p, Backend be, bool varlen);
Status validate_kvcache(const KVCacheParams& p, Backend be);
Status validate_combine(const CombineParams& p, Backend be);

// What mha_fwd_kvcache's per-sequence index rules (common/kvcache_index.h) compare against, for
// the resolved params `p`.
KVIndexLimits kvcache_index_limits(const KVCacheParams& p);

// The InvalidArgument status of a broken mha_fwd_kvcache index-value rule (common/kvcache_index.h)
// for the resolved params `p`: what validate_kvcache returns for host arrays and what the GPU
// path returns when its device-side check finds the violation, so both say the same.
Status kvcache_index_error(const KVCacheParams& p, const KVIndexViolation& v);

}  // namespace flashattn::detail
