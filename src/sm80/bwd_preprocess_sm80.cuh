// Backward preprocess: D_i = rowsum(dO_i * O_i) in fp32, one value per (query row, head), laid
// out like the LSE (dense [b, h, s_q], varlen [h, total_q]). D is the correction term of
// dS = P * (dP - D): sum_j P_ij dP_ij = dO_i . O_i, so it needs no pass over the keys.
// One warp per (row, head); each lane reads 16-byte vectors (8 elements) of O and dO.
// (The fp32 dQ accumulator is zeroed with cudaMemsetAsync by the launcher.)
#pragma once

#include <cuda_runtime.h>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

#include <cstdint>

#include "sm80/bwd_args_sm80.h"

namespace flashattn::sm80 {

// Locates q-like row `row` (0 .. rows_q-1) of the params' geometry: element offset of
// (row, head 0) given the batch/row strides, and the LSE-layout index of (row, head 0) plus the
// head stride of that layout.
struct QRowSm80 {
  __host__ __device__ int64_t elem_offset(int64_t batch_stride, int64_t row_stride) const {
    return bidb * batch_stride + i * row_stride;
  }
  int64_t bidb = 0, i = 0;  // dense: sequence and row within it; varlen: 0 and the packed row
  int64_t stats_index = 0, stats_head_stride = 0;
};

__forceinline__ __host__ __device__ QRowSm80 locate_q_row(BwdParams const& p, int64_t row) {
  QRowSm80 r;
  if (p.cu_seqlens_q != nullptr) {
    r.i = row;
    r.stats_index = row;
    r.stats_head_stride = p.total_q;
  } else {
    r.bidb = row / p.seqlen_q;
    r.i = row % p.seqlen_q;
    r.stats_index = r.bidb * p.h * int64_t(p.seqlen_q) + r.i;
    r.stats_head_stride = p.seqlen_q;
  }
  return r;
}

template <typename Element>
__global__ void __launch_bounds__(256) flash_bwd_dot_do_o_sm80_kernel(BwdArgsSm80 const args) {
  const BwdParams& p = args.p;
  const int64_t pair = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (pair >= int64_t(args.rows_q) * p.h) return;
  const int64_t row = pair / p.h;
  const int head = int(pair % p.h);
  const QRowSm80 r = locate_q_row(p, row);
  const Element* o = static_cast<const Element*>(p.o_ptr) +
                     r.elem_offset(p.o_batch_stride, p.o_row_stride) + head * p.o_head_stride;
  const Element* dout = static_cast<const Element*>(p.do_ptr) +
                        r.elem_offset(p.do_batch_stride, p.do_row_stride) + head * p.do_head_stride;
  using Vec = cutlass::Array<Element, 8>;
  float acc = 0.f;
  for (int x = lane * 8; x < p.d; x += 32 * 8) {  // d % 8 == 0: whole vectors only
    const Vec vo = *reinterpret_cast<const Vec*>(o + x);
    const Vec vd = *reinterpret_cast<const Vec*>(dout + x);
    CUTLASS_PRAGMA_UNROLL
    for (int e = 0; e < 8; ++e) acc += float(vo[e]) * float(vd[e]);
  }
  CUTLASS_PRAGMA_UNROLL
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) args.dsum[r.stats_index + head * r.stats_head_stride] = acc;
}

}  // namespace flashattn::sm80
