// Host-side declarations of the SM80-path forward kernels, explicitly instantiated per (dtype,
// head dim) in generated translation units (cmake/kernels.cmake: one TU per kernel family).
// Includes no CUDA or CuTe header, so the runtime dispatch (src/cuda/fwd_dispatch.cu) stays cheap
// to compile.
#pragma once

#include "flashattn/params.h"
#include "flashattn/status.h"

namespace flashattn::sm80 {

// Each runs the forward for params p (resolved, validated, and checked by the dispatch to be
// within the kernel's coverage: kDtype matches, d <= kHeadDim, d % 8 == 0) on p.stream.

// Plain kernels: no dropout, contiguous K/V, no split, no KV-cache hooks. Picks the
// compile-time score mods (softcap, ALiBi) from p.
template <DType kDtype, int kHeadDim>
Status run_fwd_sm80(const FwdParams& p);

// Split-capable kernels: contiguous or paged K/V (p.block_table), the KV-cache hooks
// (kv_batch_idx, k_leftpad: contiguous K/V only, see cuda/fwd.h) and num_splits >= 1 (already
// chosen: heuristics::choose_num_splits in api/heuristics.h; p.num_splits == 0 marks the heuristic's count, which the
// cluster merge may lower); with num_splits > 1 the splits of a tile merge inside a
// thread-block cluster on sm_90 (contiguous K/V, all clusters resident at once), else the fp32
// partials go to stream-ordered scratch and the combine kernel writes o and the LSE. No dropout.
template <DType kDtype, int kHeadDim>
Status run_fwd_split_sm80(const FwdParams& p, const int* kv_batch_idx, const int* k_leftpad,
                          int num_splits);

// Dropout kernels (p.p_dropout > 0): contiguous K/V, no split, no softcap.
template <DType kDtype, int kHeadDim>
Status run_fwd_dropout_sm80(const FwdParams& p);

// p_ptr (return_attn_probs): [b, h, seqlen_q, seqlen_k] in p.dtype, P = exp(s - lse) for
// visible keys, negated where dropout drops, 0 elsewhere. Recomputes S from q and k with the
// LSE the forward wrote (lse: [b, h, seqlen_q], device). Dense only (contiguous or paged K/V).
Status run_fwd_probs_sm80(const FwdParams& p, const float* lse);

}  // namespace flashattn::sm80
