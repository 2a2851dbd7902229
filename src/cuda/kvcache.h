// The GPU KV-cache inference path (flash_attn_with_kvcache): append new k/v into the cache in
// place (rotary on k), rotary on q, then the forward kernel over the cache (contiguous or paged,
// split-KV with combine). Params validated and resolved by src/api. docs/kvcache.md describes
// the schedule, the GQA decode packing and which index checks need device values.
#pragma once

#include "flashattn/flashattn.h"

namespace flashattn::cuda {

// Knobs for tests; the public entry point always runs with the defaults.
struct KVCacheRunOptions {
  // Decode with GQA (seqlen_q == 1, h > h_k, no ALiBi, no left window): view q (b, 1, h, d) as
  // (b, h / h_k, h_k, d) so one CTA handles every query head of a KV head and K/V are read once.
  // Off only to compare against the unpacked path.
  bool pack_gqa = true;
};

// Environment variable that turns off the host-visible index check (docs/kvcache.md). By
// default, outside CUDA graph capture, each call first checks the cache_seqlens / cache_leftpad /
// cache_batch_idx / block_table values on the device, waits for the answer and returns
// kInvalidArgument, touching nothing, when one is out of range. Set to "0", calls never wait:
// a sequence with a bad value is skipped on the device (o = 0, LSE = +inf), as under capture.
inline constexpr const char* kCheckIndicesEnv = "FLASHATTN_CHECK_DEVICE_INDICES";

Status run_mha_fwd_kvcache(const KVCacheParams& p, const KVCacheRunOptions& options = {});

}  // namespace flashattn::cuda
