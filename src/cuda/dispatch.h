// Host-side entry into the CUDA kernels (implemented in src/cuda/*.cu; absent in CPU-only
// builds, where api.cpp never calls it). Params are validated and resolved by the caller.
#pragma once

#include <vector>

#include "flashattn/flashattn.h"

namespace flashattn::cuda {

int device_count();
// Whether the current device runs this library's kernels from an sm_90+ binary (compute
// capability >= 9.0 and kernels built for it): the condition for the sm_90-only code paths of
// the SM80-path kernels (thread-block clusters, programmatic dependent launch). Cached per
// device.
bool device_runs_sm90_kernels();
// kCuda for device/managed memory, kCpu for host memory; an error for an invalid pointer.
Status pointer_backend(const void* ptr, Backend* out);

Status mha_fwd(const FwdParams& p);
Status mha_bwd(const BwdParams& p);
Status mha_fwd_kvcache(const KVCacheParams& p);
Status mha_combine(const CombineParams& p);

// Head dims / archs / dtypes compiled into the forward kernels.
std::vector<int> compiled_head_dims();
std::vector<int> compiled_archs();
std::vector<std::string> compiled_dtypes();

}  // namespace flashattn::cuda
