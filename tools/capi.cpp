// A minimal C ABI over the forward, backward and KV-cache entry points, built as a shared library
// (libflashattn_capi.so) so benchmarks/bench_gpu.py can call flashattn from Python through
// ctypes on torch tensors, side by side with torch SDPA in one process, before the torch
// extension exists. Not a public API: the C++ API in include/flashattn/ is.
#include <cstdint>
#include <cstring>

#include "flashattn/flashattn.h"

namespace {

int report(const flashattn::Status& s, char* err, int err_len) {
  if (!s.ok() && err != nullptr && err_len > 0) {
    std::strncpy(err, s.to_string().c_str(), size_t(err_len) - 1);
    err[err_len - 1] = '\0';
  }
  return static_cast<int>(s.code());
}

// The fields every entry point shares: dtype, shape, q/k/v/o and LSE, and the 12 strides
// (batch, row, head) of q, k, v, o in that order.
void set_attention(flashattn::FwdParams& p, const void* q, void* k, void* v, void* o, float* lse,
                   int dtype, int b, int seqlen_q, int seqlen_k, int h, int h_k, int d,
                   const int64_t* strides) {
  p.dtype = static_cast<flashattn::DType>(dtype);
  p.b = b;
  p.seqlen_q = seqlen_q;
  p.seqlen_k = seqlen_k;
  p.h = h;
  p.h_k = h_k;
  p.d = d;
  p.q_ptr = q;
  p.k_ptr = k;
  p.v_ptr = v;
  p.o_ptr = o;
  p.softmax_lse_ptr = lse;
  p.q_batch_stride = strides[0], p.q_row_stride = strides[1], p.q_head_stride = strides[2];
  p.k_batch_stride = strides[3], p.k_row_stride = strides[4], p.k_head_stride = strides[5];
  p.v_batch_stride = strides[6], p.v_row_stride = strides[7], p.v_head_stride = strides[8];
  p.o_batch_stride = strides[9], p.o_row_stride = strides[10], p.o_head_stride = strides[11];
}

}  // namespace

extern "C" {

// strides: 12 values, (batch, row, head) for q, k, v, o in that order (elements).
// dtype: 1 = fp16, 2 = bf16, 0 = fp32. Returns 0 on success, else the StatusCode and fills err.
int flashattn_capi_fwd(const void* q, void* k, void* v, void* o, float* lse, int dtype, int b,
                       int seqlen_q, int seqlen_k, int h, int h_k, int d, const int64_t* strides,
                       float softmax_scale, int causal, int window_left, int window_right,
                       float softcap, const float* alibi_slopes, void* stream, char* err,
                       int err_len) {
  flashattn::FwdParams p;
  set_attention(p, q, k, v, o, lse, dtype, b, seqlen_q, seqlen_k, h, h_k, d, strides);
  p.softmax_scale = softmax_scale;
  p.is_causal = causal != 0;
  p.window_size_left = window_left;
  p.window_size_right = window_right;
  p.softcap = softcap;
  p.alibi_slopes = alibi_slopes;
  p.stream = stream;
  return report(flashattn::mha_fwd(p), err, err_len);
}

// strides: 24 values, (batch, row, head) for q, k, v, o, dout, dq, dk, dv in that order.
// lse: the forward's [b, h, seqlen_q] fp32. Dense inputs, no dropout.
int flashattn_capi_bwd(const void* q, void* k, void* v, const void* o,
                       const float* lse, const void* dout, void* dq, void* dk, void* dv,
                       int dtype, int b, int seqlen_q, int seqlen_k, int h, int h_k, int d,
                       const int64_t* strides, float softmax_scale, int causal,
                       int deterministic, void* stream, char* err, int err_len) {
  flashattn::BwdParams p;
  set_attention(p, q, k, v, const_cast<void*>(o), const_cast<float*>(lse), dtype, b, seqlen_q,
                seqlen_k, h, h_k, d, strides);
  p.do_ptr = dout;
  p.dq_ptr = dq;
  p.dk_ptr = dk;
  p.dv_ptr = dv;
  p.do_batch_stride = strides[12], p.do_row_stride = strides[13], p.do_head_stride = strides[14];
  p.dq_batch_stride = strides[15], p.dq_row_stride = strides[16], p.dq_head_stride = strides[17];
  p.dk_batch_stride = strides[18], p.dk_row_stride = strides[19], p.dk_head_stride = strides[20];
  p.dv_batch_stride = strides[21], p.dv_row_stride = strides[22], p.dv_head_stride = strides[23];
  p.softmax_scale = softmax_scale;
  p.is_causal = causal != 0;
  p.deterministic = deterministic != 0;
  p.stream = stream;
  return report(flashattn::mha_bwd(p), err, err_len);
}


// mha_fwd_kvcache (benchmarks/bench_decode.py). strides: 18 values, (batch, row, head) for q,
// k_cache, v_cache, o, knew, vnew in that order (elements; a paged cache's "batch" stride is the
// page stride). cache_seqlens (device [b] int32) may be null: then cache_seqlen is every
// sequence's length. block_table (device [b, max_blocks_per_seq]) null = contiguous cache.
// knew/vnew null = nothing appended; rotary_cos/sin null = no rotary.
int flashattn_capi_fwd_kvcache(
    const void* q, void* k_cache, void* v_cache, void* o, float* lse, int dtype, int b,
    int seqlen_q, int seqlen_k, int h, int h_k, int d, const int64_t* strides, int b_cache,
    const int* cache_seqlens, int cache_seqlen, const int* cache_batch_idx,
    const int* cache_leftpad, const int* block_table, int64_t block_table_batch_stride,
    int max_blocks_per_seq, int page_block_size, int num_blocks, const void* knew,
    const void* vnew, int seqlen_knew, const void* rotary_cos, const void* rotary_sin,
    int seqlen_ro, int rotary_dim, int rotary_interleaved, float softmax_scale, int causal,
    int window_left, int window_right, float softcap, const float* alibi_slopes, int num_splits,
    void* stream, char* err, int err_len) {
  flashattn::KVCacheParams p;
  set_attention(p, q, k_cache, v_cache, o, lse, dtype, b, seqlen_q, seqlen_k, h, h_k, d, strides);
  p.knew_batch_stride = strides[12], p.knew_row_stride = strides[13];
  p.knew_head_stride = strides[14];
  p.vnew_batch_stride = strides[15], p.vnew_row_stride = strides[16];
  p.vnew_head_stride = strides[17];
  p.b_cache = b_cache;
  p.cache_seqlens = cache_seqlens;
  p.cache_seqlen = cache_seqlen;
  p.cache_batch_idx = cache_batch_idx;
  p.cache_leftpad = cache_leftpad;
  p.block_table = block_table;
  p.block_table_batch_stride = block_table_batch_stride;
  p.max_blocks_per_seq = max_blocks_per_seq;
  p.page_block_size = page_block_size;
  p.num_blocks = num_blocks;
  p.knew_ptr = knew;
  p.vnew_ptr = vnew;
  p.seqlen_knew = seqlen_knew;
  p.rotary_cos = rotary_cos;
  p.rotary_sin = rotary_sin;
  p.seqlen_ro = seqlen_ro;
  p.rotary_dim = rotary_dim;
  p.rotary_interleaved = rotary_interleaved != 0;
  p.softmax_scale = softmax_scale;
  p.is_causal = causal != 0;
  p.window_size_left = window_left;
  p.window_size_right = window_right;
  p.softcap = softcap;
  p.alibi_slopes = alibi_slopes;
  p.num_splits = num_splits;
  p.stream = stream;
  return report(flashattn::mha_fwd_kvcache(p), err, err_len);
}

// GPU kernel path for the calls that follow (flashattn::set_gpu_path): 0 = auto, 1 = sm80,
// 2 = sm90. The path the calling thread's last GPU forward ran on, same numbering.
void flashattn_capi_set_gpu_path(int path) {
  flashattn::set_gpu_path(static_cast<flashattn::GpuPath>(path));
}
int flashattn_capi_last_gpu_path() { return static_cast<int>(flashattn::last_gpu_path()); }

}  // extern "C"
