// The CPU reference: the oracle for every test. Written to read like the math (paper notation,
// one loop per step), accumulating in double, with no tiling and no online softmax: it
// materializes each row of scores. Same params and semantics as the public API; outputs are
// rounded once to the params' dtype (use fp32 params built from upcast inputs to compare
// lower-precision kernels against it).
#pragma once

#include <cstdint>

#include "flashattn/flashattn.h"

namespace flashattn::ref {

struct Options {
  // Explicit dropout keep mask instead of the Philox stream: [b, h, seqlen_q, seqlen_k]
  // (1 = keep), dense rows (varlen: row index within the sequence, padded to seqlen_q/k).
  // Used only when p_dropout > 0 (it replaces the stream, not the keep probability's 1/(1-p)).
  const uint8_t* keep_mask = nullptr;

  // Restrict every row to the keys [key_begin, key_end) of its sequence (key_end < 0: no upper
  // limit), on top of the visibility mask. Mask alignment and ALiBi distances keep the whole
  // sequence's geometry, so this yields the partial result of one split-KV chunk (o over the
  // chunk's keys, lse of the chunk; rows with no key in the chunk: o = 0, lse = +inf). Such a
  // partial leaves the sinks out: a sink joins a row once, where the partials merge.
  int key_begin = 0;
  int key_end = -1;

  // Forward only: compute and write only the query rows [row_begin, row_end) of every sequence
  // (row_end < 0: to the end); other rows of o, lse, p_ptr and o_f64 are left untouched. Lets a
  // caller check sampled rows of a large problem at a fraction of the cost.
  int row_begin = 0;
  int row_end = -1;

  // If non-null, mha_fwd also stores o here in double precision, before the rounding to dtype,
  // logical dense [rows_q, h, dv] (rows_q = b * seqlen_q, or total_q for varlen): the finite
  // differences that check the backward need more digits than fp32.
  double* o_f64 = nullptr;
};

// Params are resolved here (detail::resolve, idempotent) and must be valid; host memory.
// The forward ignores num_splits (any split count gives the same exact result).
Status mha_fwd(const FwdParams& p, const Options& opt = {});
// Recomputes P, the LSE and O from q, k, v in double: the given o and softmax_lse are not read,
// so the gradients are those of the exact function, whatever rounding the forward did.
// dqkv_fp32 / dqkv_accumulate are honoured (the double gradient is rounded once, after the add).
// dsinks, when set, gets the sinks' gradient summed in double and rounded once.
Status mha_bwd(const BwdParams& p, const Options& opt = {});
// Appends knew/vnew into the cache in place (k rotated at its absolute cache positions, then
// rounded to dtype: the cache holds dtype values), then attends with q rotated in double (a
// local copy, never rounded). No dropout.
Status mha_fwd_kvcache(const KVCacheParams& p);
// Exact LSE merge; only lse = -inf marks an empty split (its partial output is never read).
Status mha_combine(const CombineParams& p);

}  // namespace flashattn::ref
