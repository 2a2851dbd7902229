// The GPU forward kernels' host entry (SM80-path FlashAttention-2 kernels; src/sm80/).
// Returns kNotSupported for requests no compiled kernel covers. Params validated and resolved.
#pragma once

#include "flashattn/flashattn.h"

namespace flashattn::cuda {

// What the KV-cache path (mha_fwd_kvcache) needs from the forward kernel beyond FwdParams.
// Device pointers, [b] int32 each, may be null. Dense (non-varlen) only.
//   kv_batch_idx  K/V batch row read by query batch i (flash_attn's cache_batch_idx); null = i.
//                 Contiguous K/V only.
//   k_leftpad     first visible key row of batch i (cache_leftpad); keys [k_leftpad[i],
//                 seqused_k[i]) are visible, key index j counts from k_leftpad[i], so the
//                 sequence's s_k (mask alignment, ALiBi) is seqused_k[i] - k_leftpad[i].
//                 Requires seqused_k. Contiguous K/V only.
//   split_family  run the split-capable kernels even without splits, paging or hooks (the
//                 KV-cache path: decode's tile, and contiguous results bitwise equal to paged).
struct FwdCacheArgs {
  const int* kv_batch_idx = nullptr;
  const int* k_leftpad = nullptr;
  bool split_family = false;
};

Status run_mha_fwd(const FwdParams& p, const FwdCacheArgs& cache = {});

}  // namespace flashattn::cuda
