// GPU mha_combine: merge split-KV partial outputs by their log-sum-exp.
//
//   lse = logsumexp_s lse_s              (empty splits, lse_s = -inf, contribute nothing)
//   out = sum_s exp(lse_s - lse) out_s   (all splits empty: out = 0, lse = +inf)
//
// Schedule: one warp per output row (bidb, i, head); lanes stride over d so every load of
// out_partial and every store of out is a contiguous, coalesced run of the row. Each lane reads
// the row's split LSEs itself (num_splits <= 128 broadcast loads, cheaper than a shuffle
// exchange) and forms lse = max + log(sum exp(lse_s - max)): the same value as folding
// logaddexp over the splits, with one log instead of num_splits, so the rounding error does not
// grow with the split count. Weights and the empty-row result use the shared merge_weight /
// finalize_lse rules of src/common/lse_merge.h, as the CPU backend and reference do.
#include "cuda/combine.h"

#include <cuda_runtime.h>

#include "common/lse_merge.h"
#include "common/numeric.h"
#include "cuda/cuda_check.h"

namespace flashattn::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kThreads = kWarpsPerBlock * 32;

template <DType kOut>
__global__ void __launch_bounds__(kThreads) combine_kernel(CombineParams p) {
  const int64_t rows = int64_t(p.b) * p.seqlen_q * p.h;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  // row = (bidb * seqlen_q + i) * h + hh: the order of out_partial's rows.
  const int hh = int(row % p.h);
  const int i = int((row / p.h) % p.seqlen_q);
  const int bidb = int(row / (int64_t(p.h) * p.seqlen_q));

  const int64_t lse_split_stride = int64_t(p.b) * p.h * p.seqlen_q;
  const int64_t lse_idx = (int64_t(bidb) * p.h + hh) * p.seqlen_q + i;
  float max_lse = neg_inf<float>();
  for (int s = 0; s < p.num_splits; ++s)
    max_lse = fmaxf(max_lse, p.lse_partial[s * lse_split_stride + lse_idx]);
  float total = neg_inf<float>();  // every split empty: stays -inf (reported as +inf)
  if (max_lse != neg_inf<float>()) {
    float sum = 0.f;  // >= 1: the largest split contributes exp(0)
    for (int s = 0; s < p.num_splits; ++s)
      sum += __expf(p.lse_partial[s * lse_split_stride + lse_idx] - max_lse);
    total = max_lse + __logf(sum);
  }

  const int64_t out_split_stride = rows * p.d;
  const float* part = p.out_partial + row * p.d;
  const int64_t out_base = int64_t(bidb) * p.out_batch_stride + int64_t(i) * p.out_row_stride +
                           int64_t(hh) * p.out_head_stride;
  for (int x = lane; x < p.d; x += 32) {
    float acc = 0.f;
    for (int s = 0; s < p.num_splits; ++s) {
      const float lse_s = p.lse_partial[s * lse_split_stride + lse_idx];
      // An empty split's partial output is never read: it may hold anything, NaN included.
      if (lse_s == neg_inf<float>()) continue;
      acc += merge_weight(lse_s, total) * part[s * out_split_stride + x];
    }
    store_from_float(p.out, kOut, out_base + x, acc);
  }
  if (p.lse != nullptr && lane == 0) p.lse[lse_idx] = finalize_lse(total);
}

template <DType kOut>
Status launch(const CombineParams& p) {
  const int64_t rows = int64_t(p.b) * p.seqlen_q * p.h;
  if (rows == 0 || p.d == 0) return Status::ok_status();
  const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7fffffff) return Status::invalid("mha_combine: b * seqlen_q * h too large");
  combine_kernel<kOut><<<unsigned(blocks), kThreads, 0, static_cast<cudaStream_t>(p.stream)>>>(p);
  FA_CUDA_CHECK_LAUNCH("combine_kernel");
  return Status::ok_status();
}

}  // namespace

Status run_mha_combine(const CombineParams& p) {
  switch (p.dtype) {
    case DType::kFloat32: return launch<DType::kFloat32>(p);
    case DType::kFloat16: return launch<DType::kFloat16>(p);
    case DType::kBFloat16: return launch<DType::kBFloat16>(p);
  }
  return Status::invalid("mha_combine: unknown dtype");
}

}  // namespace flashattn::cuda
