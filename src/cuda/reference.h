// A naive GPU attention forward with fp32 accumulation: the smoke test of the CUDA plumbing and
// the fp32 oracle for shapes too large for the CPU reference (docs/design.md, Correctness).
//
// Same params and semantics as the public mha_fwd (dense, varlen, seqused_k, paged KV, GQA/MQA,
// free strides, causal/local window, softcap, ALiBi, attention sinks, dropout with the shared
// Philox mask, LSE, p_ptr); not a V head dim of its own (dv != d). Inputs may be fp16, bf16 or
// fp32. It uses the same src/common rules as the CPU reference, so differences between the two
// are accumulation rounding only.
#pragma once

#include "flashattn/flashattn.h"

namespace flashattn::cuda::ref {

// Params must be resolved (detail::resolve) and valid; every pointer device memory. Asynchronous
// on p.stream; errors of the launch itself are returned.
Status mha_fwd(const FwdParams& p);

}  // namespace flashattn::cuda::ref
