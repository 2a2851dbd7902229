// Gradient of the attention sinks, shared by the SM80 and the Hopper backward. It runs after the
// backward's preprocess has written D = rowsum(dO * O):
//   dsinks[h] = -sum over the query rows of every sequence of exp(sinks[h] - lse) * D
// (docs/algorithm.md, section 7; lse includes the sink, so exp(sinks[h] - lse) is the sink's
// probability). One CTA per head; thread t takes rows t, t + kDsinksThreads, ... and the CTA
// adds the threads' sums in a fixed tree, so the result does not depend on scheduling (the
// backward promises bitwise repeatable gradients; float atomics would not be). The sums are in
// double, as the CPU backend's: a head sums up to b * s_q terms of either sign. Each term's
// exp is fp32 (exp(double) is a call that spills here), which is as accurate as its inputs.
// The cost is two fp32 reads per (row, head), next to the main kernel's O(s_q s_k d) negligible.
// A row with no visible key has O = 0, so D = 0 and it adds nothing (lse = the sink there, a
// finite factor); without a sink for the head (-inf) every term is exp(-inf) * D = 0.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "flashattn/params.h"
#include "cuda/cuda_check.h"

namespace flashattn::gpu {

constexpr int kDsinksThreads = 256;

// Where D lives: the LSE's layout for the rows (dense [b, h, s_q], varlen [h, total_q]), except
// that a dense backward may pad each (sequence, head) run of D to dsum_run_rows >= s_q rows (the
// Hopper backward pads to whole query blocks).
struct DsinksArgs {
  BwdParams p;
  const float* dsum = nullptr;
  int64_t dsum_run_rows = 0;
};

// A template (on its block size) so that every translation unit including this header shares one
// definition (a plain __global__ function here would be defined once per head-dim TU).
template <int kThreads>
__global__ void __launch_bounds__(kThreads) flash_bwd_dsinks_kernel(DsinksArgs const args) {
  static_assert(kThreads == kDsinksThreads, "the fixed summation order is defined for this size");
  __shared__ double partial[kThreads];
  const BwdParams& p = args.p;
  const int head = int(blockIdx.x);
  const float sink = p.sinks[head];
  const bool varlen = p.cu_seqlens_q != nullptr;
  const int64_t runs = varlen ? 1 : p.b;
  const int64_t run_rows = varlen ? int64_t(p.cu_seqlens_q[p.b] - p.cu_seqlens_q[0]) : p.seqlen_q;
  double acc = 0.0;
  for (int64_t run = 0; run < runs; ++run) {
    const int64_t lse_base = varlen ? int64_t(head) * p.total_q + p.cu_seqlens_q[0]
                                    : (run * p.h + head) * p.seqlen_q;
    const int64_t dsum_base = varlen ? lse_base : (run * p.h + head) * args.dsum_run_rows;
    for (int64_t r = threadIdx.x; r < run_rows; r += kDsinksThreads)
      acc -= double(expf(sink - p.softmax_lse_ptr[lse_base + r])) * double(args.dsum[dsum_base + r]);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = kDsinksThreads / 2; stride > 0; stride /= 2) {
    if (int(threadIdx.x) < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) p.dsinks[head] = float(partial[0]);
}

// Writes p.dsinks (when asked for) on p.stream: overwritten, never added to (docs/semantics.md);
// with no query row the sum is 0. `rows_q` is b * s_q (dense) or total_q (varlen).
inline Status launch_dsinks(const BwdParams& p, const float* dsum, int64_t dsum_run_rows,
                            int64_t rows_q) {
  if (p.dsinks == nullptr || p.h == 0) return Status::ok_status();
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  if (rows_q > 0) {
    DsinksArgs args;
    args.p = p;
    args.dsum = dsum;
    args.dsum_run_rows = dsum_run_rows;
    flash_bwd_dsinks_kernel<kDsinksThreads><<<unsigned(p.h), kDsinksThreads, 0, stream>>>(args);
    FA_CUDA_CHECK_LAUNCH("flash_bwd_dsinks_kernel");
  } else {
    FA_CUDA_CHECK(cudaMemsetAsync(p.dsinks, 0, sizeof(float) * size_t(p.h), stream));
  }
  return Status::ok_status();
}

}  // namespace flashattn::gpu
