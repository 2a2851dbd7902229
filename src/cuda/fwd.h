// The GPU forward kernels' host entry (SM80-path FlashAttention-2 kernels; src/sm80/).
// Returns kNotSupported for requests no compiled kernel covers. Params validated and resolved.
#pragma once

#include "flashattn/flashattn.h"

namespace flashattn::cuda {

Status run_mha_fwd(const FwdParams& p);

}  // namespace flashattn::cuda
