// GPU merge of split-KV partial results (the mha_combine entry point on device memory).
#pragma once

#include "flashattn/flashattn.h"

namespace flashattn::cuda {

// Params validated by the caller; all pointers device memory. Asynchronous on p.stream.
// after_split_kernel: the launch directly follows the split-KV forward on the same stream; on
// sm_90 it then uses programmatic dependent launch (the combine's CTAs are scheduled while the
// split kernel's last CTAs run and wait in griddepcontrol.wait for its results), which hides
// the launch gap between the two kernels of a decode step.
// sinks: null, or fp32 [p.h] device memory, the attention sinks of the forward whose partials
// these are (the partials leave the sink out; it joins the merged LSE once, with no output).
Status run_mha_combine(const CombineParams& p, bool after_split_kernel = false,
                       const float* sinks = nullptr);

}  // namespace flashattn::cuda
