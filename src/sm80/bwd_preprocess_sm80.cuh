// Backward preprocess: D_i = rowsum(dO_i * O_i) in fp32, one value per (query row, head), laid
// out like the LSE (dense [b, h, s_q], varlen [h, total_q]). D is the correction term of
// dS = P * (dP - D): sum_j P_ij dP_ij = dO_i . O_i, so it needs no pass over the keys.
// The same launch zeroes the fp32 dQ accumulator (grid-stride 16-byte stores), which the main
// kernel adds into.
//
// A group of kGroup lanes per (row, head), each lane reading 16-byte vectors (8 elements) of O
// and dO, kGroup = d / 8 rounded up to a power of two (4..32), so every lane of a warp loads:
// a whole warp per (row, head) leaves 24 of 32 lanes idle at d = 64 and took 150 us at
// b * s = 16k, h = 32 on the H100, plus 42 us for a separate cudaMemsetAsync of dq_accum
// (this kernel: 95 us for both; FlashAttention-2's fused kernel: 99 us).
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

template <typename Element, int kGroup>
__global__ void __launch_bounds__(256)
    flash_bwd_dot_do_o_sm80_kernel(BwdArgsSm80 const args, int64_t dq_accum_vec4) {
  static_assert(kGroup >= 4 && kGroup <= 32 && (kGroup & (kGroup - 1)) == 0);
  const BwdParams& p = args.p;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t threads = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = tid; i < dq_accum_vec4; i += threads)
    reinterpret_cast<float4*>(args.dq_accum)[i] = make_float4(0.f, 0.f, 0.f, 0.f);

  const int64_t pair = tid / kGroup;
  const int lane = threadIdx.x % kGroup;
  // All lanes of a group share `pair`, so `active` is uniform within the group, and the shuffles
  // below name only the group's lanes (groups never straddle a warp).
  const bool active = pair < int64_t(args.rows_q) * p.h;
  float acc = 0.f;
  int64_t out = 0;
  if (active) {
    const int64_t row = pair / p.h;
    const int head = int(pair % p.h);
    const QRowSm80 r = locate_q_row(p, row);
    const Element* o = static_cast<const Element*>(p.o_ptr) +
                       r.elem_offset(p.o_batch_stride, p.o_row_stride) + head * p.o_head_stride;
    const Element* dout = static_cast<const Element*>(p.do_ptr) +
                          r.elem_offset(p.do_batch_stride, p.do_row_stride) +
                          head * p.do_head_stride;
    using Vec = cutlass::Array<Element, 8>;
    for (int x = lane * 8; x < p.d; x += kGroup * 8) {  // d % 8 == 0: whole vectors only
      const Vec vo = *reinterpret_cast<const Vec*>(o + x);
      const Vec vd = *reinterpret_cast<const Vec*>(dout + x);
      CUTLASS_PRAGMA_UNROLL
      for (int e = 0; e < 8; ++e) acc += float(vo[e]) * float(vd[e]);
    }
    out = r.stats_index + head * r.stats_head_stride;
  }
  const unsigned group_mask = kGroup == 32 ? 0xffffffffu
      : ((1u << kGroup) - 1u) << (threadIdx.x % 32 / kGroup * kGroup);
  if (active) {
    CUTLASS_PRAGMA_UNROLL
    for (int off = kGroup / 2; off > 0; off /= 2) acc += __shfl_xor_sync(group_mask, acc, off);
    if (lane == 0) args.dsum[out] = acc;
  }
}

// Lanes per (row, head) for head dim d (multiple of 8): d / 8 rounded up to a power of two, 4..32.
inline int dot_do_o_group_sm80(int d) {
  int g = 4;
  while (g < 32 && g * 8 < d) g *= 2;
  return g;
}

}  // namespace flashattn::sm80
