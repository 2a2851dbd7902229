// CUDA runtime errors as flashattn Status values.
//
// Every runtime call in the host layer goes through FA_CUDA_CHECK, and every kernel launch is
// followed by FA_CUDA_CHECK_LAUNCH, so a failure surfaces as Status::cuda_error carrying the
// failed expression, file:line and cudaGetErrorString instead of being lost (an unchecked launch
// error would otherwise be reported by whichever unrelated call happens to come next).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "flashattn/status.h"

namespace flashattn::cuda {

// Status for the result `err` of `what` at file:line; ok for cudaSuccess.
inline Status check_cuda(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return Status::ok_status();
  return Status::cuda_error(std::string(what) + " failed at " + file + ":" +
                            std::to_string(line) + ": " + cudaGetErrorName(err) + " (" +
                            cudaGetErrorString(err) + ")");
}

}  // namespace flashattn::cuda

// Return from the enclosing Status-returning function if `expr` (a cudaError_t) is not success.
#define FA_CUDA_CHECK(expr)                                                                     \
  do {                                                                                          \
    ::flashattn::Status fa_cuda_status_ =                                                       \
        ::flashattn::cuda::check_cuda((expr), #expr, __FILE__, __LINE__);                       \
    if (!fa_cuda_status_.ok()) return fa_cuda_status_;                                          \
  } while (0)

// After a <<<...>>> launch: a bad configuration (grid, shared memory, missing SASS for this GPU)
// is only visible through cudaGetLastError, which also clears it so it does not leak into the
// caller's next runtime call.
#define FA_CUDA_CHECK_LAUNCH(kernel_name)                                                       \
  do {                                                                                          \
    ::flashattn::Status fa_cuda_status_ = ::flashattn::cuda::check_cuda(                        \
        cudaGetLastError(), "launch of " kernel_name, __FILE__, __LINE__);                      \
    if (!fa_cuda_status_.ok()) return fa_cuda_status_;                                          \
  } while (0)
