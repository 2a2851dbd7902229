// The GPU backward kernels' host entry (SM80-path FlashAttention-2 backward; src/sm80/*bwd*).
// Returns kNotSupported for requests no compiled kernel covers. Params validated and resolved.
#pragma once

#include "flashattn/flashattn.h"

namespace flashattn::cuda {

Status run_mha_bwd(const BwdParams& p);

}  // namespace flashattn::cuda
