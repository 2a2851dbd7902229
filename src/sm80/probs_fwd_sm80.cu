// p_ptr for the SM80-path forward (flash_attn's return_attn_probs, a testing path): the softmax
// probabilities P_ij = exp(s_ij - lse_i) of every (row, key), negated where dropout drops the key,
// 0 where the key is not visible, written [b, h, seqlen_q, seqlen_k] in the params' dtype.
//
// A separate, simple kernel rather than a store inside the forward: it recomputes S from q and k
// with the LSE the forward already wrote, through the same shared rules (ScoreMod, VisibilityMask,
// DropoutRng, PagedKV, SeqlenInfo), so the fast kernel carries no p_ptr code and its registers
// stay untouched. The cost (one dot product of length d per element, K rows re-read per query
// row) is irrelevant at the sizes anyone materializes a [b, h, s_q, s_k] tensor for.
// Schedule: one CTA per (query row, head, sequence); the query row is staged in shared memory as
// fp32, threads stride over the keys, so each store of a row of P is coalesced.
#include <cuda_runtime.h>

#include <cmath>

#include "common/mask.h"
#include "common/numeric.h"
#include "common/paged_kv.h"
#include "common/philox.h"
#include "common/score_mod.h"
#include "common/seqlen.h"
#include "cuda/cuda_check.h"
#include "sm80/fwd_sm80.h"

namespace flashattn::sm80 {
namespace {

constexpr int kProbsThreads = 128;
constexpr int kMaxHeadDim = 256;

__global__ void __launch_bounds__(kProbsThreads)
    probs_fwd_kernel(const FwdParams p, const float* lse, const DropoutRng rng, bool dropout) {
  __shared__ float q_row[kMaxHeadDim];
  const int i = int(blockIdx.x);
  const int bidh = int(blockIdx.y);
  const int bidb = int(blockIdx.z);
  const SeqlenInfo seq = SeqlenInfo::make(p, bidb);
  const int hk = bidh / (p.h / p.h_k);
  const int64_t q_off = seq.q_offset(p.q_batch_stride, p.q_row_stride, p.q_head_stride, bidb, i,
                                     bidh, false);
  for (int x = int(threadIdx.x); x < p.d; x += kProbsThreads)
    q_row[x] = load_as_float(p.q_ptr, p.dtype, q_off + x);
  __syncthreads();

  const float lse_i = lse[(int64_t(bidb) * p.h + bidh) * p.seqlen_q + i];
  const VisibilityMask mask = VisibilityMask::make(seq.seqlen_q, seq.seqlen_k, p.is_causal,
                                                   p.window_size_left, p.window_size_right);
  ScoreMod<float> mod;
  mod.scale = p.softmax_scale;
  mod.softcap = p.softcap;
  mod.alibi_slope =
      p.alibi_slopes != nullptr ? p.alibi_slopes[int64_t(bidb) * p.alibi_slopes_batch_stride + bidh] : 0.f;
  mod.offset = seq.seqlen_k - seq.seqlen_q;
  const PagedKV paged{p.block_table, p.block_table_batch_stride, p.page_block_size};
  const uint64_t bh = uint64_t(bidb) * p.h + bidh;
  const int64_t out_row = ((int64_t(bidb) * p.h + bidh) * p.seqlen_q + i) * p.seqlen_k;

  for (int j = int(threadIdx.x); j < p.seqlen_k; j += kProbsThreads) {
    float prob = 0.f;
    // lse_i = +inf: the row sees no key (and every P_ij is 0).
    if (mask.visible(i, j) && lse_i != INFINITY) {
      const int64_t k_off = p.block_table != nullptr
          ? paged.offset(bidb, j, hk, p.k_batch_stride, p.k_row_stride, p.k_head_stride)
          : seq.k_offset(p.k_batch_stride, p.k_row_stride, p.k_head_stride, bidb, j, hk, false);
      float dot = 0.f;
      for (int x = 0; x < p.d; ++x) dot += q_row[x] * load_as_float(p.k_ptr, p.dtype, k_off + x);
      prob = expf(mod.apply(dot, i, j) - lse_i);
      if (dropout && !rng.keep(bh, i, j)) prob = -prob;
    }
    store_from_float(p.p_ptr, p.dtype, out_row + j, prob);
  }
}

}  // namespace

Status run_fwd_probs_sm80(const FwdParams& p, const float* lse) {
  if (p.b == 0 || p.h == 0 || p.seqlen_q == 0 || p.seqlen_k == 0) return Status::ok_status();
  if (p.d > kMaxHeadDim) return Status::not_supported("p_ptr: head dim above 256");
  DropoutRng rng;
  const bool dropout = p.p_dropout > 0.f;
  if (dropout) {
    rng.seed = p.philox_seed;
    rng.offset = p.philox_offset;
    rng.threshold = dropout_threshold(p.p_dropout);
  }
  const dim3 grid(unsigned(p.seqlen_q), unsigned(p.h), unsigned(p.b));
  probs_fwd_kernel<<<grid, kProbsThreads, 0, static_cast<cudaStream_t>(p.stream)>>>(p, lse, rng,
                                                                                   dropout);
  FA_CUDA_CHECK_LAUNCH("probs_fwd_kernel");
  return Status::ok_status();
}

}  // namespace flashattn::sm80
