// The GPU KV-cache inference path (flash_attn_with_kvcache): append new k/v into the cache in
// place (rotary on k), rotary on q, then the forward kernel over the cache (contiguous or paged,
// split-KV with combine). Params validated and resolved by src/api.
#pragma once

#include "flashattn/flashattn.h"

namespace flashattn::cuda {

Status run_mha_fwd_kvcache(const KVCacheParams& p);

}  // namespace flashattn::cuda
