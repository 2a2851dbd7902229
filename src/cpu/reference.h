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
  const uint8_t* keep_mask = nullptr;
};

// Params must be resolved (detail::resolve) and valid; host memory.
Status mha_fwd(const FwdParams& p, const Options& opt = {});
Status mha_bwd(const BwdParams& p, const Options& opt = {});
// Appends knew/vnew (with rotary) into the cache in place, then attends.
Status mha_fwd_kvcache(const KVCacheParams& p);
Status mha_combine(const CombineParams& p);

}  // namespace flashattn::ref
