// The CUDA side of the public API: device discovery, which memory a pointer lives in, and the
// entry points api.cpp calls for device memory (params already resolved and validated there).
// Forward goes to run_mha_fwd (fwd_dispatch.cu: the SM80 or the Hopper kernels, api/route.h),
// backward to run_mha_bwd (bwd_dispatch.cu), KV-cache inference to run_mha_fwd_kvcache
// (kvcache.cu), combine to the merge kernel. What no kernel covers returns kNotSupported naming
// it (never a silent fallback).
#include <cuda_runtime.h>

#include <atomic>

#include "cuda/bwd.h"
#include "cuda/combine.h"
#include "cuda/cuda_check.h"
#include "cuda/dispatch.h"
#include "cuda/fwd.h"
#include "cuda/kvcache.h"
#include "flashattn_build_config.h"

namespace flashattn::cuda {

int device_count() {
  // With no device the runtime reports an error here; that is a normal answer ("no GPU"), so
  // clear it rather than leave it for the caller's next runtime call. (Without any driver the
  // runtime keeps reporting its failed initialization from every call; nothing can clear that,
  // which is why nothing else here calls the runtime once the count is 0.) The count cannot
  // change during the process, so it is asked once.
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return n;
  }();
  return count;
}

namespace {
// An empty kernel compiled with the same -gencode list as every other kernel of the library: its
// binary version on a device is theirs.
__global__ void arch_probe_kernel() {}
}  // namespace

bool device_runs_sm90_kernels() {
  constexpr int kMaxDevices = 64;
  static std::atomic<signed char> cache[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (device < kMaxDevices) {
    const signed char known = cache[device].load(std::memory_order_relaxed);
    if (known != 0) return known > 0;
  }
  int major = 0;
  cudaFuncAttributes attr = {};
  const bool ok =
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
      major >= 9 && cudaFuncGetAttributes(&attr, arch_probe_kernel) == cudaSuccess &&
      attr.binaryVersion >= 90;
  if (device < kMaxDevices) cache[device].store(ok ? 1 : -1, std::memory_order_relaxed);
  return ok;
}

namespace {
std::atomic<int> smem_per_sm_override{0};
}  // namespace

void set_smem_per_sm_override(int bytes) { smem_per_sm_override.store(bytes); }

namespace {
// An attribute of the current device, read once per device (the runtime call costs about a
// microsecond, and the dispatch asks on every call); 0 when it cannot be read.
template <cudaDeviceAttr kAttr>
int cached_device_attribute() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  if (device < kMaxDevices) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int value = 0;
  if (cudaDeviceGetAttribute(&value, kAttr, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  if (device < kMaxDevices) cache[device].store(value, std::memory_order_relaxed);
  return value;
}
}  // namespace

int device_smem_per_sm() {
  const int forced = smem_per_sm_override.load(std::memory_order_relaxed);
  if (forced > 0) return forced;
  return cached_device_attribute<cudaDevAttrMaxSharedMemoryPerMultiprocessor>();
}

int device_sm_count() { return cached_device_attribute<cudaDevAttrMultiProcessorCount>(); }

Status pointer_backend(const void* ptr, Backend* out) {
  *out = Backend::kCpu;
  // No device: nothing can be device memory, and asking the runtime would only raise errors.
  if (device_count() == 0) return Status::ok_status();
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
  if (err != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it so it does not surface in an unrelated call
    return Status::invalid(std::string("cannot tell which memory the pointer is in (") +
                           cudaGetErrorString(err) + ")");
  }
  // Unregistered and pinned host memory both run on the CPU backend.
  if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged)
    *out = Backend::kCuda;
  return Status::ok_status();
}

Status mha_fwd(const FwdParams& p) { return run_mha_fwd(p); }

Status mha_bwd(const BwdParams& p) { return run_mha_bwd(p); }

Status mha_fwd_kvcache(const KVCacheParams& p) { return run_mha_fwd_kvcache(p); }

Status mha_combine(const CombineParams& p) { return run_mha_combine(p); }

std::vector<int> compiled_head_dims() { return FA_BUILD_HDIMS; }

std::vector<int> compiled_archs() { return FA_BUILD_CUDA_ARCHS; }

std::vector<std::string> compiled_dtypes() {
  std::vector<std::string> v;
  if (FA_BUILD_HAS_FP16) v.push_back("fp16");
  if (FA_BUILD_HAS_BF16) v.push_back("bf16");
  return v;
}

}  // namespace flashattn::cuda
