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
// Shared memory per SM of the current device in bytes (cudaDevAttrMaxSharedMemoryPerMultiprocessor:
// 164 KB on an A100, 228 KB on an H100), cached per device; the kernels whose tile policy needs
// two CTAs per SM check it (tile_size_fwd_compact_sm80). set_smem_per_sm_override(bytes) makes it
// answer `bytes` instead (0: the device's own again), so that the GPU tests can run, on the GPU
// they have, the kernels a GPU with less shared memory gets.
int device_smem_per_sm();
void set_smem_per_sm_override(int bytes);
// Multiprocessors of the current device (the persistent grids' size), cached per device; 0 when
// it cannot be read.
int device_sm_count();
// kCuda for device/managed memory, kCpu for host memory; an error for an invalid pointer.
Status pointer_backend(const void* ptr, Backend* out);

Status mha_fwd(const FwdParams& p);
Status mha_bwd(const BwdParams& p);
Status mha_fwd_kvcache(const KVCacheParams& p);
Status mha_combine(const CombineParams& p);

// Head dims / archs / dtypes compiled into the forward kernels.
std::vector<int> compiled_head_dims();
std::vector<int> compiled_fp8_head_dims();  // Hopper FP8 forward (fwd_dispatch.cu)
std::vector<int> compiled_archs();
std::vector<std::string> compiled_dtypes();

}  // namespace flashattn::cuda
