// The CPU backend: the FlashAttention-2 algorithm itself on the CPU (tiles of query rows against
// K/V blocks, online softmax, LSE), fp32 accumulation, both cores and the vector units. Inputs
// are validated and resolved (detail::resolve) by the caller; host memory only.
#pragma once

#include "flashattn/flashattn.h"

namespace flashattn::cpu {

Status mha_fwd(const FwdParams& p);        // dense and varlen (cu_seqlens), paged or not
Status mha_bwd(const BwdParams& p);        // dense and varlen
Status mha_fwd_kvcache(const KVCacheParams& p);
Status mha_combine(const CombineParams& p);

// Threads used by the backend (default: hardware concurrency; FLASHATTN_NUM_THREADS overrides).
int num_threads();
// The micro-kernel table in use (src/cpu/kernels.h): "portable", "avx2", "avx512" or
// "avx512-bf16".
const char* isa();

}  // namespace flashattn::cpu
