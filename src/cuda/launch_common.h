// Launch orchestration every GPU forward path shares, so an arch's launch file only builds its
// kernel arguments and picks its kernel:
//  - launch_kernel: the dynamic shared-memory limit, then a plain launch or a launch in
//    thread-block clusters of cluster_x CTAs along x, with the launch error checked;
//  - max_active_clusters: how many clusters of a kernel can be resident at once (cluster sizing
//    for the split-KV merge inside clusters), cached per kernel, device and size;
//  - run_split_with_combine: split-KV partials in stream-ordered scratch, the split kernel, the
//    combine kernel that merges them into O and the LSE, and the scratch freed.
// The numbers these decisions start from (split counts, grid sizes) come from api/heuristics.h.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

#include "cuda/cuda_check.h"
#include "flashattn/flashattn.h"

namespace flashattn::cuda {

inline Status launch_status(cudaError_t err, const char* name) {
  if (err == cudaSuccess) return Status::ok_status();
  return check_cuda(err, (std::string("launch of ") + name).c_str(), __FILE__, __LINE__);
}

// A launch of grid in clusters of (cluster_x, 1, 1) CTAs; *attr holds the cluster attribute the
// config points to.
inline cudaLaunchConfig_t cluster_launch_config(dim3 grid, int threads, int smem,
                                                cudaStream_t stream, int cluster_x,
                                                cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(unsigned(threads));
  config.dynamicSmemBytes = size_t(smem);
  config.stream = stream;
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = unsigned(cluster_x);
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  config.attrs = attr;
  config.numAttrs = 1;
  return config;
}

// Launches kernel<<<grid, threads, smem, stream>>>(args...) or, with cluster_x > 1, the same grid
// in clusters of (cluster_x, 1, 1) CTAs (cudaLaunchKernelEx). Raises the kernel's dynamic
// shared-memory limit first when it needs more than the default 48 KB: the attribute is per
// function and per device, so it is set on every launch (cheap) rather than cached in a flag that
// would be wrong after a device switch. name: the kernel's name in the error of a failed launch.
template <class... KernelArgs, class... Args>
Status launch_kernel(void (*kernel)(KernelArgs...), dim3 grid, int threads, int smem,
                     void* stream, int cluster_x, const char* name, Args&&... args) {
  if (smem > 48 * 1024) {
    FA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (cluster_x > 1) {
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t config = cluster_launch_config(grid, threads, smem, s, cluster_x, &attr);
    return launch_status(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...), name);
  }
  kernel<<<grid, unsigned(threads), size_t(smem), s>>>(std::forward<Args>(args)...);
  // A bad configuration (grid, shared memory, missing SASS for this GPU) is only visible through
  // cudaGetLastError, which also clears it so it does not leak into the caller's next call.
  return launch_status(cudaGetLastError(), name);
}

// How many clusters of `size` CTAs of `kernel` (threads per CTA, smem bytes of dynamic shared
// memory) can be resident at once (cudaOccupancyMaxActiveClusters; a cluster's CTAs must share
// one GPC, so this is below CTAs per SM / size: on the H100 132 clusters of 2, 79 of 3, 62 of 4,
// 30 of 8 for two 100 KB CTAs per SM). Tag names the kernel (function pointers of one signature
// do not), so the answer is cached per (Tag, device, size); 0 when the query fails or size is
// outside 1..kMaxSize.
inline constexpr int kMaxCachedDevices = 64;
template <class Tag, int kMaxSize, class... KernelArgs>
int max_active_clusters(void (*kernel)(KernelArgs...), int threads, int smem, int size) {
  static std::atomic<int> cache[kMaxCachedDevices][kMaxSize + 1] = {};
  int device = 0;
  if (size < 1 || size > kMaxSize || cudaGetDevice(&device) != cudaSuccess) return 0;
  if (device < kMaxCachedDevices) {
    const int known = cache[device][size].load(std::memory_order_relaxed);
    if (known != 0) return known - 1;
  }
  int clusters = 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) ==
      cudaSuccess) {
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t config =
        cluster_launch_config(dim3(unsigned(size)), threads, smem, nullptr, size, &attr);
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) clusters = 0;
  }
  cudaGetLastError();  // a failed query must not surface as a later launch's error
  if (device < kMaxCachedDevices) cache[device][size].store(clusters + 1, std::memory_order_relaxed);
  return clusters;
}

// Rows of the split-KV partials: every query row of the call (varlen: total_q, as one "batch";
// its LSE layout [h, total_q] is then the dense [1, h, total_q]).
inline int64_t split_partial_rows(const FwdParams& p) {
  return p.cu_seqlens_q != nullptr ? int64_t(p.total_q) : int64_t(p.b) * p.seqlen_q;
}

// fp32 partials of num_splits splits: o [splits, rows, h, d], lse [splits, rows, h].
struct SplitPartials {
  float* o = nullptr;
  float* lse = nullptr;
};

// Allocates the partials of p in stream-ordered scratch on p.stream.
Status alloc_split_partials(const FwdParams& p, int num_splits, SplitPartials* parts);
// After the split kernel (launched: its status): merges the partials into p.o_ptr and
// p.softmax_lse_ptr with the combine kernel when it succeeded, and frees the scratch either way
// (stream-ordered: after whatever was queued before). Returns the first error. The partials
// leave the attention sinks out; the combine adds p.sinks (when set) to the merged LSE once.
Status combine_split_partials(const FwdParams& p, int num_splits, const SplitPartials& parts,
                              Status launched);

// The split-KV forward with a separate combine: launch(parts) runs the split kernel writing
// into parts (a Status-returning callable).
template <class Launch>
Status run_split_with_combine(const FwdParams& p, int num_splits, Launch&& launch) {
  SplitPartials parts;
  Status s = alloc_split_partials(p, num_splits, &parts);
  if (!s.ok()) return s;
  return combine_split_partials(p, num_splits, parts, launch(parts));
}

}  // namespace flashattn::cuda
