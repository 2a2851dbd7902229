// GPU merge of split-KV partial results (the mha_combine entry point on device memory).
#pragma once

#include "flashattn/flashattn.h"

namespace flashattn::cuda {

// Params validated by the caller; all pointers device memory. Asynchronous on p.stream.
Status run_mha_combine(const CombineParams& p);

}  // namespace flashattn::cuda
