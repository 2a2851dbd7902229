// A minimal C ABI over the forward entry point, built as a shared library
// (libflashattn_capi.so) so benchmarks/bench_gpu.py can call flashattn from Python through
// ctypes on torch tensors, side by side with torch SDPA in one process, before the torch
// extension exists. Not a public API: the C++ API in include/flashattn/ is.
#include <cstdint>
#include <cstring>

#include "flashattn/flashattn.h"

extern "C" {

// strides: 12 values, (batch, row, head) for q, k, v, o in that order (elements).
// dtype: 1 = fp16, 2 = bf16, 0 = fp32. Returns 0 on success, else the StatusCode and fills err.
int flashattn_capi_fwd(const void* q, void* k, void* v, void* o, float* lse, int dtype, int b,
                       int seqlen_q, int seqlen_k, int h, int h_k, int d, const int64_t* strides,
                       float softmax_scale, int causal, int window_left, int window_right,
                       float softcap, const float* alibi_slopes, void* stream, char* err,
                       int err_len) {
  flashattn::FwdParams p;
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
  p.softmax_scale = softmax_scale;
  p.is_causal = causal != 0;
  p.window_size_left = window_left;
  p.window_size_right = window_right;
  p.softcap = softcap;
  p.alibi_slopes = alibi_slopes;
  p.stream = stream;
  flashattn::Status s = flashattn::mha_fwd(p);
  if (!s.ok() && err != nullptr && err_len > 0) {
    std::strncpy(err, s.to_string().c_str(), size_t(err_len) - 1);
    err[err_len - 1] = '\0';
  }
  return static_cast<int>(s.code());
}

}  // extern "C"
