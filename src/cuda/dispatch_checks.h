// Checks shared by the forward and backward runtime dispatch (fwd_dispatch.cu, bwd_dispatch.cu):
// the device-side preconditions every SM80-path kernel relies on, and the "not compiled" message.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "cuda/cuda_check.h"
#include "flashattn/flashattn.h"
#include "flashattn_build_config.h"

namespace flashattn::cuda {

// cp.async and the vectorized epilogues move 16-byte vectors: every row start must be 16-byte
// aligned. The validator checks this too; a violation would fault, so it is re-checked here
// (a few integer ops).
inline Status check_alignment(const char* name, const void* ptr, int64_t batch_stride,
                              int64_t row_stride, int64_t head_stride, int elem_bytes = 2) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0)
    return Status::invalid(std::string(name) + ": must be 16-byte aligned for the GPU kernels");
  const int64_t per16 = 16 / elem_bytes;
  if (batch_stride % per16 != 0 || row_stride % per16 != 0 || head_stride % per16 != 0)
    return Status::invalid(std::string(name) + ": batch/row/head strides must be multiples of " +
                           std::to_string(per16) + " elements (16 bytes) for the GPU kernels");
  return Status::ok_status();
}

// The SM80-path kernels use mma.sync m16n8k16 with bf16 and cp.async: compute capability 8.0+.
inline Status check_compute_capability(const char* kernels) {
  int device = 0, major = 0;
  FA_CUDA_CHECK(cudaGetDevice(&device));
  FA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 8)
    return Status::not_supported(std::string("the GPU ") + kernels +
                                 " kernels need compute capability >= 8.0 (this device is " +
                                 std::to_string(major) + ".x)");
  return Status::ok_status();
}

// "(FA_HDIMS=64,128, FA_DTYPES=bf16)": what this build compiled, for NotSupported messages.
inline std::string compiled_config_string() {
  std::string s;
  for (int hd : std::initializer_list<int> FA_BUILD_HDIMS) s += (s.empty() ? "" : ",") + std::to_string(hd);
  return "(FA_HDIMS=" + s + ", FA_DTYPES=" +
         (FA_BUILD_HAS_FP16 ? (FA_BUILD_HAS_BF16 ? "fp16,bf16" : "fp16") : "bf16") + ")";
}

}  // namespace flashattn::cuda
