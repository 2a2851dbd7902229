// STUB: replaced by the GPU work.
#include <cuda_runtime.h>
#include "cuda/dispatch.h"
#include "cuda/fwd.h"
#include "flashattn_build_config.h"
namespace flashattn::cuda {
int device_count() { int n = 0; if (cudaGetDeviceCount(&n) != cudaSuccess) { cudaGetLastError(); return 0; } return n; }
Status pointer_backend(const void* ptr, Backend* out) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, ptr) != cudaSuccess) { cudaGetLastError(); *out = Backend::kCpu; return Status::ok_status(); }
  *out = (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged) ? Backend::kCuda : Backend::kCpu;
  return Status::ok_status();
}
Status mha_fwd(const FwdParams& p) { return run_mha_fwd(p); }
Status mha_bwd(const BwdParams&) { return Status::not_supported("gpu bwd: not yet"); }
Status mha_fwd_kvcache(const KVCacheParams&) { return Status::not_supported("gpu kvcache: not yet"); }
Status mha_combine(const CombineParams&) { return Status::not_supported("gpu combine: not yet"); }
std::vector<int> compiled_head_dims() { return FA_BUILD_HDIMS; }
std::vector<int> compiled_archs() { return FA_BUILD_CUDA_ARCHS; }
std::vector<std::string> compiled_dtypes() { std::vector<std::string> v; if (FA_BUILD_HAS_FP16) v.push_back("fp16"); if (FA_BUILD_HAS_BF16) v.push_back("bf16"); return v; }
}  // namespace flashattn::cuda
