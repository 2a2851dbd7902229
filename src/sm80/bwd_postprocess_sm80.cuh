// Backward postprocess:
//  - dQ = softmax_scale * dq_accum, rounded to the dtype (dq_accum holds the unscaled fp32 sums
//    of every key block's dS K);
//  - GQA/MQA only: dK, dV of kv head g = the sum over its query heads g * r .. g * r + r - 1 of
//    the fp32 per-query-head gradients, summed in head order (so the result is deterministic),
//    rounded to the dtype once.
// One warp per (row, head); each lane handles 8 consecutive elements (16-byte stores).
#pragma once

#include <cuda_runtime.h>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

#include <cstdint>

#include "sm80/bwd_args_sm80.h"
#include "sm80/bwd_preprocess_sm80.cuh"

namespace flashattn::sm80 {

template <typename Element>
__forceinline__ __device__ void store_vec8(Element* dst, float const (&v)[8]) {
  cutlass::Array<Element, 8> out;
  CUTLASS_PRAGMA_UNROLL
  for (int e = 0; e < 8; ++e) out[e] = Element(v[e]);
  *reinterpret_cast<cutlass::Array<Element, 8>*>(dst) = out;
}

template <typename Element>
__global__ void __launch_bounds__(256) flash_bwd_convert_dq_sm80_kernel(BwdArgsSm80 const args) {
  const BwdParams& p = args.p;
  const int64_t pair = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (pair >= int64_t(args.rows_q) * p.h) return;
  const int64_t row = pair / p.h;
  const int head = int(pair % p.h);
  const QRowSm80 r = locate_q_row(p, row);
  Element* dq = static_cast<Element*>(p.dq_ptr) + r.elem_offset(p.dq_batch_stride, p.dq_row_stride) +
                head * p.dq_head_stride;
  const float* acc = args.dq_accum + pair * args.d_accum;  // [rows_q, h, d_accum]
  for (int x = lane * 8; x < p.d; x += 32 * 8) {
    const float4 a = *reinterpret_cast<const float4*>(acc + x);
    const float4 b = *reinterpret_cast<const float4*>(acc + x + 4);
    const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    float s[8];
    CUTLASS_PRAGMA_UNROLL
    for (int e = 0; e < 8; ++e) s[e] = v[e] * p.softmax_scale;
    store_vec8(dq + x, s);
  }
}

template <typename Element>
__global__ void __launch_bounds__(256) flash_bwd_reduce_dkv_sm80_kernel(BwdArgsSm80 const args) {
  const BwdParams& p = args.p;
  const int64_t pair = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (pair >= int64_t(args.rows_k) * p.h_k) return;
  const int64_t row = pair / p.h_k;
  const int head_kv = int(pair % p.h_k);
  const bool varlen = p.cu_seqlens_q != nullptr;
  const int64_t bidb = varlen ? 0 : row / p.seqlen_k;
  const int64_t j = varlen ? row : row % p.seqlen_k;
  Element* dk = static_cast<Element*>(p.dk_ptr) + bidb * p.dk_batch_stride + j * p.dk_row_stride +
                head_kv * p.dk_head_stride;
  Element* dv = static_cast<Element*>(p.dv_ptr) + bidb * p.dv_batch_stride + j * p.dv_row_stride +
                head_kv * p.dv_head_stride;
  const int ratio = args.h_h_k_ratio;
  const int64_t base = (row * p.h + int64_t(head_kv) * ratio) * args.d_accum;  // [rows_k, h, d_accum]
  for (int x = lane * 8; x < p.d; x += 32 * 8) {
    float sk[8] = {}, sv[8] = {};
    for (int g = 0; g < ratio; ++g) {
      const float* ak = args.dk_accum + base + g * args.d_accum + x;
      const float* av = args.dv_accum + base + g * args.d_accum + x;
      CUTLASS_PRAGMA_UNROLL
      for (int e = 0; e < 8; ++e) {
        sk[e] += ak[e];
        sv[e] += av[e];
      }
    }
    store_vec8(dk + x, sk);
    store_vec8(dv + x, sv);
  }
}

}  // namespace flashattn::sm80
