// Placeholder until the KV-cache path lands (see kvcache.h): device calls say so, never a
// silent fallback.
#include "cuda/kvcache.h"

namespace flashattn::cuda {

Status run_mha_fwd_kvcache(const KVCacheParams&) {
  return Status::not_supported(
      "mha_fwd_kvcache on the GPU is not implemented yet; host pointers run on the CPU backend");
}

}  // namespace flashattn::cuda
