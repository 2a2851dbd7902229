// flashattn: parameter structs of the public C++ API.
//
// Plain structs over raw pointers: no torch, no CUDA, no CuTe types. Field names follow
// flash_attn 2.x's Flash_fwd_params so an adapter maps one to one. Every pointer is annotated
// with its shape and whether it may be null. Strides are in ELEMENTS (not bytes); the last
// (head-dim) dimension is always contiguous. All pointers of one call live on the same device:
// all host memory (CPU backend) or all memory of the current CUDA device (GPU kernels).
//
// Semantics (one convention, identical on GPU, CPU and in the reference; docs/semantics.md):
//   score     s_ij = softmax_scale * q_i . k_j
//   softcap   s_ij = softcap * tanh(s_ij / softcap)            when softcap > 0
//   ALiBi     s_ij += -slope_h * |i + s_k - s_q - j|             when alibi_slopes != null
//   visible   j < s_k  and  i + s_k - s_q - left <= j <= i + s_k - s_q + right
//             (left/right = -1 means unbounded; is_causal forces right = 0)
//   softmax over visible keys only; a row with no visible key gives o = 0 and lse = +inf
//   sinks     sink_h joins every row's softmax denominator as one more logit with no value:
//             P_ij = exp(s_ij) / (exp(sink_h) + sum_j exp(s_ij)), lse = log(that denominator);
//             a row with no visible key then gives o = 0 and lse = sink_h
//   dropout   keep with probability 1 - p_dropout, kept probabilities scaled by 1/(1 - p)
//             keep mask from Philox-4x32-10(seed, offset), counter layout in src/common/philox.h
//   fp8       q, k, v in e4m3 stand for x_fp8 * descale (per head and per block of rows); the
//             probabilities are quantized to e4m3 as the FP8 kernel does (docs/fp8.md)
#pragma once

#include <cstdint>

namespace flashattn {

enum class DType : int {
  kUnset = -1,    // FwdParams::out_dtype only: "the default" (see there)
  kFloat32 = 0,   // CPU backend only
  kFloat16 = 1,
  kBFloat16 = 2,
  // float8 e4m3 ("e4m3fn": no infinities, max 448; torch.float8_e4m3fn). Inputs q, k, v (and the
  // KV cache) of the forward only, with the output in bf16 or fp16 (out_dtype) and optional
  // descale factors. CPU reference and backend; no GPU kernel yet (NotSupported).
  kFloat8E4M3 = 3,
};

const char* dtype_name(DType t);
int dtype_size(DType t);

// Forward attention. Used by mha_fwd (dense), mha_varlen_fwd (cu_seqlens_q/k set) and, through
// KVCacheParams, mha_fwd_kvcache.
struct FwdParams {
  DType dtype = DType::kBFloat16;  // of q, k, v (and knew, vnew), and of o and p_ptr unless fp8
  // Element type of o. kUnset (the default) means dtype, or bf16 when dtype is kFloat8E4M3
  // (FlashAttention-3's FP8 output type). fp8 inputs: bf16 or fp16; any other dtype: unset or
  // equal to dtype.
  DType out_dtype = DType::kUnset;

  // Sizes. Dense: the sequence lengths. Varlen: the maxima over the batch (max_seqlen_q/k).
  int b = 0;          // batch size (number of sequences)
  int seqlen_q = 0;
  int seqlen_k = 0;
  int h = 0;          // query heads
  int h_k = 0;        // key/value heads; h % h_k == 0, query head i reads kv head i / (h / h_k)
  int d = 0;          // head dim of q and k, 1..256 (GPU kernels: a multiple of 8)
  // Head dim of v and o (and of dout and the gradient dV in BwdParams; not to be confused with
  // BwdParams::dv_ptr, that gradient). 0 means d. 1..256. The GPU kernels need dv == d for now.
  int dv = 0;

  // q: dense [b, seqlen_q, h, d]; varlen [total_q, h, d] (q_batch_stride unused). Never null.
  const void* q_ptr = nullptr;
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  // k, v: dense [b, seqlen_k, h_k, d]; varlen [total_k, h_k, d];
  //       paged [num_blocks, page_block_size, h_k, d] (batch stride = stride between pages);
  //       v's last dim is dv.
  // Read-only, except that mha_fwd_kvcache appends new tokens into them in place.
  void* k_ptr = nullptr;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  void* v_ptr = nullptr;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  // o: dense [b, seqlen_q, h, dv]; varlen [total_q, h, dv]. Never null.
  void* o_ptr = nullptr;
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;
  // LSE (natural log), fp32, contiguous: dense [b, h, seqlen_q]; varlen [h, total_q]. May be null.
  // With sinks it includes the sink: log(exp(sink_h) + sum_j exp(s_ij)).
  float* softmax_lse_ptr = nullptr;

  // Varlen (both null for dense). Sequence i owns rows cu_seqlens_q[i] .. cu_seqlens_q[i+1]-1.
  const int* cu_seqlens_q = nullptr;  // [b + 1] int32, may be null (dense)
  const int* cu_seqlens_k = nullptr;  // [b + 1] int32, non-null iff cu_seqlens_q is
  const int* seqused_k = nullptr;     // [b] int32, may be null: use only this many keys per sequence
  int total_q = 0;                    // rows of q/o in varlen mode (cu_seqlens_q[b])
  int total_k = 0;                    // rows of k/v in varlen mode, non-paged (cu_seqlens_k[b])

  // Paged KV (null = contiguous). Key t of sequence i lives in page block_table[i][t / page],
  // row t % page_block_size. Any page size >= 1.
  const int* block_table = nullptr;   // [b, max_blocks_per_seq] int32, may be null
  int64_t block_table_batch_stride = 0;
  int max_blocks_per_seq = 0;
  int page_block_size = 0;
  int num_blocks = 0;                 // pages in k/v; every used table entry must be < num_blocks

  // Score and mask.
  float softmax_scale = 0.f;          // 0 means 1/sqrt(d); otherwise any finite value
  float softcap = 0.f;                // > 0 enables tanh capping; must be >= 0
  bool is_causal = false;             // bottom-right aligned; forces window_size_right = 0
  int window_size_left = -1;          // -1 = unbounded; else >= 0
  int window_size_right = -1;         // -1 = unbounded; else >= 0
  // ALiBi slopes, fp32: [h] (alibi_slopes_batch_stride == 0) or [b, h]. May be null.
  const float* alibi_slopes = nullptr;
  int64_t alibi_slopes_batch_stride = 0;
  // Learnable attention sinks (gpt-oss), fp32 [h], one logit per query head. May be null (no
  // sink). The sink is a final score: softmax_scale, softcap and ALiBi do not apply to it. It
  // takes probability mass in every row's softmax and contributes no value (docs/semantics.md);
  // -inf is the same as no sink for that head. The backward must get the forward's sinks (its
  // LSE includes them). GPU: the SM80 path (the Hopper forward and backward route sinks there).
  const float* sinks = nullptr;

  // Dropout on the attention probabilities. 0 <= p_dropout < 1; not with softcap > 0.
  float p_dropout = 0.f;
  uint64_t philox_seed = 0;
  uint64_t philox_offset = 0;
  // Testing aid (flash_attn's return_attn_probs): [b, h, seqlen_q, seqlen_k] contiguous, dtype,
  // receives the softmax probabilities (before the 1/(1-p) scaling), negated where dropped.
  // Dense only. May be null.
  void* p_ptr = nullptr;

  // Split-KV: 1 = no split, 0 = heuristic, 2..128 = explicit. Results merge exactly by LSE.
  int num_splits = 1;

  // FP8 descale factors (dtype kFloat8E4M3 only; every one may be null, meaning 1). fp32, > 0
  // and finite. The value an e4m3 element x of q stands for is
  //     x * q_descale[bidb][h / (h / h_k)] * q_block_descale[bidb][h][i / descale_block_m]
  // (i: the row within its sequence), and likewise for k and v with their kv head and key row t:
  //     x * k_descale[bidb][hk] * k_block_descale[bidb][hk][t / descale_block_n].
  // Per head, as FlashAttention-3 (shape [b, h_k] for q too: the query heads of a group share
  // it); per block, beyond it, for outlier tokens a per-head factor cannot absorb. Rows are
  // counted within the sequence (varlen: from cu_seqlens; paged and the KV cache: the logical
  // key index, the KV cache counting from cache index 0, left padding included). The factors are
  // indexed by the call's sequence index, never by cache_batch_idx. docs/fp8.md has the layout.
  const float* q_descale = nullptr;   // [b, h_k]
  int64_t q_descale_batch_stride = 0, q_descale_head_stride = 0;
  const float* k_descale = nullptr;   // [b, h_k]
  int64_t k_descale_batch_stride = 0, k_descale_head_stride = 0;
  const float* v_descale = nullptr;   // [b, h_k]
  int64_t v_descale_batch_stride = 0, v_descale_head_stride = 0;
  // Rows per block factor: of q (descale_block_m) and of k and v (descale_block_n); >= 1 when the
  // matching block pointer is set, else 0.
  int descale_block_m = 0;
  int descale_block_n = 0;
  // [b, h, ceil(seqlen_q / descale_block_m)], last dim contiguous (seqlen_q: the maximum for varlen).
  const float* q_block_descale = nullptr;
  int64_t q_block_descale_batch_stride = 0, q_block_descale_head_stride = 0;
  // [b, h_k, ceil(seqlen_k / descale_block_n)], last dim contiguous (seqlen_k: the maximum for
  // varlen, the capacity for paged KV and the KV cache).
  const float* k_block_descale = nullptr;
  int64_t k_block_descale_batch_stride = 0, k_block_descale_head_stride = 0;
  const float* v_block_descale = nullptr;
  int64_t v_block_descale_batch_stride = 0, v_block_descale_head_stride = 0;

  // cudaStream_t for GPU calls (null = default stream). Ignored on the CPU.
  void* stream = nullptr;
};

// Backward: dq, dk, dv from dout, the forward's out and LSE. Inherits every forward field; o_ptr
// and softmax_lse_ptr are INPUTS here (the forward's results) and softmax_lse_ptr is required.
struct BwdParams : FwdParams {
  // dout: like o ([..., h, dv]). Never null.
  const void* do_ptr = nullptr;
  int64_t do_batch_stride = 0, do_row_stride = 0, do_head_stride = 0;
  // dq: like q. dk, dv: like k, v (h_k heads: gradients of query heads sharing a kv head are
  // summed; dv's last dim is dv). Never null. Paged KV has no backward.
  void* dq_ptr = nullptr;
  int64_t dq_batch_stride = 0, dq_row_stride = 0, dq_head_stride = 0;
  void* dk_ptr = nullptr;
  int64_t dk_batch_stride = 0, dk_row_stride = 0, dk_head_stride = 0;
  void* dv_ptr = nullptr;
  int64_t dv_batch_stride = 0, dv_row_stride = 0, dv_head_stride = 0;
  // Bitwise identical gradients across runs (the CPU backend always is).
  bool deterministic = false;
  // Gradient outputs for callers that sum gradients over several calls (context parallelism:
  // one call per KV block). dqkv_fp32: dq_ptr, dk_ptr, dv_ptr hold fp32 elements (strides in
  // fp32 elements) whatever `dtype` is. dqkv_accumulate: the gradients are ADDED to what
  // dq/dk/dv hold (read, add in fp32, round once to their element type) instead of overwriting
  // them; rows no query sees (and rows past seqused_k) are then left unchanged. CPU backend and
  // reference; the GPU backward returns kNotSupported for either.
  bool dqkv_fp32 = false;
  bool dqkv_accumulate = false;
  // Gradient of the sinks, fp32 [h], OVERWRITTEN with the sum over the batch and every query row
  // of the head: dsinks[h] = -sum_(b, i) P_sink(b, h, i) * D(b, h, i), where
  // P_sink = exp(sinks[h] - lse) and D = dout_i . o_i (docs/algorithm.md derives it); not
  // affected by dqkv_fp32 / dqkv_accumulate. May be null (not wanted); needs sinks.
  float* dsinks = nullptr;
};

// Inference against a KV cache (flash_attn_with_kvcache). k_ptr/v_ptr are the cache:
// contiguous [b_cache, seqlen_k, h_k, d] (v: dv; seqlen_k = capacity) or paged (block_table set).
// q is dense [b, seqlen_q, h, d]. Varlen fields must stay null.
struct KVCacheParams : FwdParams {
  int b_cache = 0;                    // cache batch (contiguous cache); >= b, or = b when paged
  // Tokens already in the cache: cache_seqlens[i] per sequence, or cache_seqlen for all when
  // the pointer is null. Keys [cache_leftpad[i], cache_seqlens[i] + seqlen_knew) are visible.
  const int* cache_seqlens = nullptr; // [b] int32, may be null
  int cache_seqlen = 0;
  const int* cache_batch_idx = nullptr;  // [b] int32, may be null (= arange); not with paging
  const int* cache_leftpad = nullptr;    // [b] int32, may be null; not with paging
  // New tokens appended in place at cache index cache_seqlens[i] before attention. May be null
  // (both or neither).
  const void* knew_ptr = nullptr;     // [b, seqlen_knew, h_k, d]
  int64_t knew_batch_stride = 0, knew_row_stride = 0, knew_head_stride = 0;
  const void* vnew_ptr = nullptr;     // [b, seqlen_knew, h_k, dv]
  int64_t vnew_batch_stride = 0, vnew_row_stride = 0, vnew_head_stride = 0;
  int seqlen_knew = 0;
  // Rotary embedding of new k (at absolute cache positions) and q (at cache_seqlens + i when
  // causal/local, else all at cache_seqlens). Only with knew. May be null (both or neither).
  const void* rotary_cos = nullptr;   // [seqlen_ro, rotary_dim / 2], dtype, contiguous
  const void* rotary_sin = nullptr;   // [seqlen_ro, rotary_dim / 2], dtype, contiguous
  int seqlen_ro = 0;
  int rotary_dim = 0;                 // even, <= d
  bool rotary_interleaved = true;     // pairs (0,1),(2,3).. if true; else halves (i, i + dim/2)
};

// Merge of split-KV partial results: out = sum_s exp(lse_s - lse) out_s, lse = logsumexp_s lse_s.
// Splits with lse = -inf are empty and ignored; if every split is empty, out = 0, lse = +inf.
struct CombineParams {
  int num_splits = 0, b = 0, seqlen_q = 0, h = 0, d = 0;
  const float* out_partial = nullptr;  // [num_splits, b, seqlen_q, h, d] fp32 contiguous
  const float* lse_partial = nullptr;  // [num_splits, b, h, seqlen_q] fp32 contiguous
  DType dtype = DType::kBFloat16;      // of out (fp32 allowed)
  void* out = nullptr;                 // [b, seqlen_q, h, d]
  int64_t out_batch_stride = 0, out_row_stride = 0, out_head_stride = 0;
  float* lse = nullptr;                // [b, h, seqlen_q], may be null
  void* stream = nullptr;
};

}  // namespace flashattn
