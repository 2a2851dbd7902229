// Naive GPU attention forward (fp32 accumulation): the oracle for shapes the CPU reference cannot
// afford, and the first proof that the CUDA plumbing works. Obviously correct over fast.
//
// Schedule: one thread block of kThreads per (query row i, head, batch). The block walks the
// row's visible keys [col_begin(i), col_end(i)) (VisibilityMask) in chunks of kChunk keys:
//   1. scores: warp w computes the keys w, w + kWarps, ...; its lanes split the head dim, so each
//      key row is read contiguously, then a fixed xor-shuffle tree sums the lanes;
//   2. online softmax: thread t owns key t of the chunk; block max and sum give the new running
//      max m and denominator l (the previous accumulator is rescaled by exp(m_old - m_new));
//      dropout zeroes the dropped weights and scales the kept ones by 1/(1-p);
//   3. output: threads split the head dim and add weight * v row by row, in key order.
// o = acc / l, lse = m + log l (empty row: o = 0, lse = +inf); with sinks the sink joins l and
// the LSE (empty row: o = 0, lse = sink). With p_ptr, a second pass recomputes each score (same
// code, same rounding) and writes exp(s - lse), negated if dropped.
// Every reduction has a fixed order, so repeated runs are bitwise identical.
//
// Accuracy: the library is built with --use_fast_math, which turns float expf/logf/tanhf and
// division into approximations (tanh.approx alone is off by up to 2^-11 relative). The oracle
// must stay far below any kernel's error, so the per-score math after the fp32 dot product (the
// shared ScoreMod, instantiated for double, and exp) and the final log run in double precision,
// which fast-math leaves alone and which costs little next to the d multiply-adds per score; its
// float divisions use the IEEE round-to-nearest intrinsics.
#include "cuda/reference.h"

#include <cuda_runtime.h>

#include "common/lse_merge.h"
#include "common/mask.h"
#include "common/numeric.h"
#include "common/paged_kv.h"
#include "common/philox.h"
#include "common/score_mod.h"
#include "common/seqlen.h"
#include "cuda/cuda_check.h"

namespace flashattn::cuda::ref {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = kThreads;  // keys per chunk: one softmax entry per thread
constexpr int kMaxD = 256;
constexpr int kMaxPerThread = kMaxD / kThreads;  // output elements each thread accumulates
constexpr float kNegInf = -__builtin_huge_valf();

__device__ __forceinline__ float exp_accurate(float x) { return float(exp(double(x))); }
__device__ __forceinline__ float log_accurate(float x) { return float(log(double(x))); }

// Reduction over the block in a fixed order (xor tree in each warp, then warps 0..kWarps-1), the
// result broadcast to every thread. `red` holds kWarps floats; the trailing barrier lets the
// caller reuse it at once.
template <bool kIsMax>
__device__ float block_reduce(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = kIsMax ? fmaxf(v, other) : v + other;
  }
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < kWarps; ++w) r = kIsMax ? fmaxf(r, red[w]) : r + red[w];
  __syncthreads();
  return r;
}

// Where the keys and values of one (batch, kv head) live: contiguous (dense or varlen) or paged.
struct KeyAddressing {
  SeqlenInfo seq;
  PagedKV paged;
  bool is_paged = false;
  bool varlen = false;
  int bidb = 0;
  int kv_head = 0;

  __device__ int64_t offset(int t, int64_t batch_stride, int64_t row_stride,
                            int64_t head_stride) const {
    if (is_paged) return paged.offset(bidb, t, kv_head, batch_stride, row_stride, head_stride);
    return seq.k_offset(batch_stride, row_stride, head_stride, bidb, t, kv_head, varlen);
  }
  __device__ int64_t k(const FwdParams& p, int t) const {
    return offset(t, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
  }
  __device__ int64_t v(const FwdParams& p, int t) const {
    return offset(t, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
  }
};

// Scores of keys j0 .. j0 + n - 1 (all visible to row i) into score_s[0 .. n-1].
template <DType kT>
__device__ void chunk_scores(const FwdParams& p, const KeyAddressing& ka,
                             const ScoreMod<double>& mod, const float* q_s, int i, int j0, int n,
                             float* score_s) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int kk = warp; kk < n; kk += kWarps) {
    const int64_t k_off = ka.k(p, j0 + kk);
    float dot = 0.f;
    for (int x = lane; x < p.d; x += 32) dot = fmaf(q_s[x], load_as_float(p.k_ptr, kT, k_off + x), dot);
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (lane == 0) score_s[kk] = float(mod.apply(double(dot), i, j0 + kk));
  }
}

template <DType kT>
__global__ void __launch_bounds__(kThreads) ref_fwd_kernel(FwdParams p) {
  __shared__ float q_s[kMaxD];
  __shared__ float score_s[kChunk];
  __shared__ float weight_s[kChunk];  // softmax numerator after dropout: the weight of v
  __shared__ float red_s[kWarps];

  const int i = blockIdx.x, bidh = blockIdx.y, bidb = blockIdx.z;
  const int tid = threadIdx.x;
  KeyAddressing ka;
  ka.seq = SeqlenInfo::make(p, bidb);
  if (i >= ka.seq.seqlen_q) return;  // varlen: this sequence is shorter than max_seqlen_q
  ka.varlen = p.cu_seqlens_q != nullptr;
  ka.is_paged = p.block_table != nullptr;
  ka.paged = PagedKV{p.block_table, p.block_table_batch_stride, p.page_block_size};
  ka.bidb = bidb;
  ka.kv_head = bidh / (p.h / p.h_k);

  const int64_t q_off = ka.seq.q_offset(p.q_batch_stride, p.q_row_stride, p.q_head_stride, bidb,
                                        i, bidh, ka.varlen);
  for (int x = tid; x < p.d; x += kThreads) q_s[x] = load_as_float(p.q_ptr, kT, q_off + x);

  const VisibilityMask mask = VisibilityMask::make(ka.seq.seqlen_q, ka.seq.seqlen_k, p.is_causal,
                                                   p.window_size_left, p.window_size_right);
  ScoreMod<double> mod;
  mod.scale = p.softmax_scale;
  mod.softcap = p.softcap;
  mod.alibi_slope =
      p.alibi_slopes != nullptr ? p.alibi_slopes[bidb * p.alibi_slopes_batch_stride + bidh] : 0.0;
  mod.offset = mask.offset();

  const bool dropout = p.p_dropout > 0.f;
  DropoutRng rng;
  rng.seed = p.philox_seed;
  rng.offset = p.philox_offset;
  rng.threshold = dropout_threshold(p.p_dropout);
  const float keep_scale = __frcp_rn(1.f - p.p_dropout);
  const uint64_t bh = uint64_t(bidb) * uint64_t(p.h) + uint64_t(bidh);

  const int j_begin = mask.col_begin(i), j_end = mask.col_end(i);
  float m = kNegInf, l = 0.f;
  float acc[kMaxPerThread];
  for (int e = 0; e < kMaxPerThread; ++e) acc[e] = 0.f;
  __syncthreads();  // q_s complete

  for (int j0 = j_begin; j0 < j_end; j0 += kChunk) {
    const int n = min(kChunk, j_end - j0);
    chunk_scores<kT>(p, ka, mod, q_s, i, j0, n, score_s);
    __syncthreads();

    const float s = tid < n ? score_s[tid] : kNegInf;
    const float m_new = fmaxf(m, block_reduce<true>(s, red_s));
    // m_new stays -inf only if every score so far is -inf; exp(-inf - -inf) would be NaN.
    const float pr = (tid < n && m_new != kNegInf) ? exp_accurate(s - m_new) : 0.f;
    const float alpha = m == kNegInf ? 0.f : exp_accurate(m - m_new);
    l = l * alpha + block_reduce<false>(pr, red_s);
    m = m_new;
    float w = pr;
    if (dropout && tid < n) w = rng.keep(bh, i, j0 + tid) ? pr * keep_scale : 0.f;
    weight_s[tid] = w;
    __syncthreads();

    for (int e = 0; e < kMaxPerThread; ++e) {
      const int x = tid + e * kThreads;
      if (x >= p.d) break;
      float a = acc[e] * alpha;
      for (int kk = 0; kk < n; ++kk)
        a = fmaf(weight_s[kk], load_as_float(p.v_ptr, kT, ka.v(p, j0 + kk) + x), a);
      acc[e] = a;
    }
    __syncthreads();  // score_s / weight_s are rewritten by the next chunk
  }

  // Empty row (no visible key): l = 0, m = -inf -> o = 0, lse = +inf.
  float lse = m == kNegInf ? kNegInf : m + log_accurate(l);
  // Attention sinks: the sink joins the denominator, lse = log(exp(sink) + exp(m) l), and
  // o = acc exp(m - lse) (= acc / (l + exp(sink - m)), with a factor <= 1: no overflow), both
  // in double. An empty row gets lse = sink and o = 0; a -inf sink is skipped (no sink).
  const double sink = p.sinks != nullptr ? double(p.sinks[bidh]) : double(kNegInf);
  double o_factor = l > 0.f ? 1.0 / double(l) : 0.0;
  if (sink != double(kNegInf)) {
    if (m == kNegInf) {
      lse = float(sink);
    } else {
      const double lse_keys = double(m) + log(double(l));
      const double top = fmax(lse_keys, sink);
      const double lse_all = top + log(exp(lse_keys - top) + exp(sink - top));
      o_factor = exp(double(m) - lse_all);
      lse = float(lse_all);
    }
  }
  const int64_t o_off = ka.seq.q_offset(p.o_batch_stride, p.o_row_stride, p.o_head_stride, bidb,
                                        i, bidh, ka.varlen);
  for (int e = 0; e < kMaxPerThread; ++e) {
    const int x = tid + e * kThreads;
    if (x >= p.d) break;
    float o = l > 0.f ? __fdiv_rn(acc[e], l) : 0.f;
    if (sink != double(kNegInf)) o = float(double(acc[e]) * o_factor);
    store_from_float(p.o_ptr, kT, o_off + x, o);
  }
  if (p.softmax_lse_ptr != nullptr && tid == 0) {
    const int64_t lse_idx = ka.varlen ? int64_t(bidh) * p.total_q + ka.seq.q_row0 + i
                                      : (int64_t(bidb) * p.h + bidh) * p.seqlen_q + i;
    p.softmax_lse_ptr[lse_idx] = finalize_lse(lse);
  }

  // Probabilities (testing aid, dense only): every key column of the row is written, invisible
  // ones as 0, so a caller can check that nothing was left unwritten.
  if (p.p_ptr != nullptr) {
    const int64_t row_base = ((int64_t(bidb) * p.h + bidh) * p.seqlen_q + i) * p.seqlen_k;
    for (int j0 = 0; j0 < p.seqlen_k; j0 += kChunk) {
      // Visible keys of this chunk: [lo, hi) in absolute key indices.
      const int lo = max(j0, j_begin), hi = min(j0 + kChunk, j_end);
      if (lo < hi) chunk_scores<kT>(p, ka, mod, q_s, i, lo, hi - lo, score_s + (lo - j0));
      __syncthreads();
      const int j = j0 + tid;
      if (j < p.seqlen_k) {
        float prob = 0.f;
        if (j >= lo && j < hi && lse != kNegInf) {
          prob = exp_accurate(score_s[tid] - lse);
          if (dropout && !rng.keep(bh, i, j)) prob = -prob;
        }
        store_from_float(p.p_ptr, kT, row_base + j, prob);
      }
      __syncthreads();
    }
  }
}

template <DType kT>
Status launch(const FwdParams& p) {
  const dim3 grid(unsigned(p.seqlen_q), unsigned(p.h), unsigned(p.b));
  ref_fwd_kernel<kT><<<grid, kThreads, 0, static_cast<cudaStream_t>(p.stream)>>>(p);
  FA_CUDA_CHECK_LAUNCH("cuda::ref::ref_fwd_kernel");
  return Status::ok_status();
}

}  // namespace

Status mha_fwd(const FwdParams& p) {
  if (p.dv != 0 && p.dv != p.d)
    return Status::not_supported("cuda::ref::mha_fwd: dv != d is not implemented");
  if (p.d < 1 || p.d > kMaxD)
    return Status::invalid("cuda::ref::mha_fwd: d = " + std::to_string(p.d) +
                           " must be in 1.." + std::to_string(kMaxD));
  if (p.h < 1 || p.h_k < 1 || p.h % p.h_k != 0)
    return Status::invalid("cuda::ref::mha_fwd: h must be a positive multiple of h_k");
  if (p.h > 65535 || p.b > 65535)
    return Status::invalid("cuda::ref::mha_fwd: h and b must be <= 65535 (grid y/z limit)");
  if (p.b == 0 || p.seqlen_q == 0) return Status::ok_status();
  switch (p.dtype) {
    case DType::kFloat32: return launch<DType::kFloat32>(p);
    case DType::kFloat16: return launch<DType::kFloat16>(p);
    case DType::kBFloat16: return launch<DType::kBFloat16>(p);
  }
  return Status::invalid("cuda::ref::mha_fwd: unknown dtype");
}

}  // namespace flashattn::cuda::ref
