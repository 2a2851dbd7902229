// GPU mha_combine: merge split-KV partial outputs by their log-sum-exp.
//
//   lse = logsumexp_s lse_s              (empty splits, lse_s = -inf, contribute nothing)
//   out = sum_s exp(lse_s - lse) out_s   (all splits empty: out = 0, lse = +inf)
// The split-KV forward with attention sinks passes them (not part of the public CombineParams):
// sinks[h] joins lse as one more term with no output (docs/algorithm.md, section 7).
//
// Schedule: one warp per output row (bidb, i, head). The split LSEs are spread over the lanes
// (lane l reads splits l, l + 32, ...) and reduced with shuffles: lse = max + log(sum exp(lse_s -
// max)), the same value as folding logaddexp over the splits with one log instead of num_splits,
// so the rounding error does not grow with the split count. Lanes own 4 consecutive columns per
// 128 (one float4 of out_partial per split: every warp load is 512 contiguous bytes) and read
// up to kBatch splits' partials before using any, so the loads of a row are in flight together.
// Decode calls this once per token with a few hundred rows: the kernel is a handful of dependent
// memory round trips; one lane per column, the LSEs re-read per column and the splits read one
// after another took 6.2 us where this takes ~3 (H100, 256 rows, 4 splits).
// Weights and the empty-row result use the shared merge_weight / finalize_lse rules of
// src/common/lse_merge.h, as the CPU backend and reference do.
#include "cuda/combine.h"

#include <cuda_runtime.h>

#include <cstdint>

#include "common/lse_merge.h"
#include "common/numeric.h"
#include "cuda/cuda_check.h"
#include "cuda/dispatch.h"

namespace flashattn::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kThreads = kWarpsPerBlock * 32;
constexpr int kBatch = 8;  // splits whose partials a lane loads before accumulating them

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// kVec: columns per lane and load (4 = float4, when d % 4 == 0 and out_partial is 16-byte
// aligned; 1 otherwise).
template <DType kOut, int kVec>
__global__ void __launch_bounds__(kThreads) combine_kernel(CombineParams p, const float* sinks) {
  const int64_t rows = int64_t(p.b) * p.seqlen_q * p.h;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Launched as a programmatic dependent of the split kernel: wait until it has completed and
  // its partials are visible. (A no-op for an ordinary launch.)
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  if (row >= rows) return;  // warp-uniform: every shuffle below has all 32 lanes
  // row = (bidb * seqlen_q + i) * h + hh: the order of out_partial's rows.
  const int hh = int(row % p.h);
  const int i = int((row / p.h) % p.seqlen_q);
  const int bidb = int(row / (int64_t(p.h) * p.seqlen_q));

  const int64_t lse_split_stride = int64_t(p.b) * p.h * p.seqlen_q;
  const int64_t lse_idx = (int64_t(bidb) * p.h + hh) * p.seqlen_q + i;
  const float* lse_row = p.lse_partial + lse_idx;
  float max_lse = neg_inf<float>();
  for (int s = lane; s < p.num_splits; s += 32)
    max_lse = fmaxf(max_lse, lse_row[s * lse_split_stride]);
  max_lse = warp_max(max_lse);
  float total = neg_inf<float>();  // every split empty: stays -inf (reported as +inf)
  if (max_lse != neg_inf<float>()) {
    float sum = 0.f;  // >= 1 after the reduction: the largest split contributes exp(0)
    for (int s = lane; s < p.num_splits; s += 32)
      sum += __expf(lse_row[s * lse_split_stride] - max_lse);
    total = max_lse + __logf(warp_sum(sum));
  }
  // The sink (split-KV of a forward with sinks; the partials leave it out) joins once, as one
  // more term with no output: it only raises the total, lowering every split's weight. -inf (no
  // sink) is logaddexp's identity; a row whose splits are all empty gets lse = sink and o = 0.
  if (sinks != nullptr) total = logaddexp(total, sinks[hh]);

  const int64_t out_split_stride = rows * p.d;
  const float* part = p.out_partial + row * p.d;
  const int64_t out_base = int64_t(bidb) * p.out_batch_stride + int64_t(i) * p.out_row_stride +
                           int64_t(hh) * p.out_head_stride;
  for (int x = lane * kVec; x < p.d; x += 32 * kVec) {
    float acc[kVec] = {};
    for (int s0 = 0; s0 < p.num_splits; s0 += kBatch) {
      float v[kBatch][kVec] = {};
      float w[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int s = s0 + j;
        w[j] = 0.f;
        if (s < p.num_splits) {
          // An empty split (lse = -inf, weight 0) is never read: its partial may hold anything,
          // NaN included.
          w[j] = merge_weight(lse_row[s * lse_split_stride], total);
          if (w[j] != 0.f) {
            const float* src = part + s * out_split_stride + x;
            if constexpr (kVec == 4) {
              const float4 f = *reinterpret_cast<const float4*>(src);
              v[j][0] = f.x, v[j][1] = f.y, v[j][2] = f.z, v[j][3] = f.w;
            } else {
              v[j][0] = *src;
            }
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        if (w[j] != 0.f) {
#pragma unroll
          for (int c = 0; c < kVec; ++c) acc[c] += w[j] * v[j][c];
        }
      }
    }
#pragma unroll
    for (int c = 0; c < kVec; ++c) store_from_float(p.out, kOut, out_base + x + c, acc[c]);
  }
  if (p.lse != nullptr && lane == 0) p.lse[lse_idx] = finalize_lse(total);
}

template <DType kOut>
Status launch(const CombineParams& p, bool after_split_kernel, const float* sinks) {
  const int64_t rows = int64_t(p.b) * p.seqlen_q * p.h;
  if (rows == 0 || p.d == 0) return Status::ok_status();
  const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7fffffff) return Status::invalid("mha_combine: b * seqlen_q * h too large");
  const bool vec = p.d % 4 == 0 && reinterpret_cast<uintptr_t>(p.out_partial) % 16 == 0;
  auto* kernel = vec ? &combine_kernel<kOut, 4> : &combine_kernel<kOut, 1>;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(blocks));
  config.blockDim = dim3(kThreads);
  config.stream = static_cast<cudaStream_t>(p.stream);
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  if (after_split_kernel && device_runs_sm90_kernels()) {
    config.attrs = &attr;
    config.numAttrs = 1;
  }
  FA_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, p, sinks));
  return Status::ok_status();
}

}  // namespace

Status run_mha_combine(const CombineParams& p, bool after_split_kernel, const float* sinks) {
  switch (p.dtype) {
    case DType::kFloat32: return launch<DType::kFloat32>(p, after_split_kernel, sinks);
    case DType::kFloat16: return launch<DType::kFloat16>(p, after_split_kernel, sinks);
    case DType::kBFloat16: return launch<DType::kBFloat16>(p, after_split_kernel, sinks);
  }
  return Status::invalid("mha_combine: unknown dtype");
}

}  // namespace flashattn::cuda
