// Preprocess of the Hopper backward, one launch before the main kernel:
//  - the row statistics per (sequence, head) in the layout the producer bulk-copies, padded to
//    whole query blocks [b, h, num_m_blocks * kBlockM]: lse_log2 = LSE * log2(e) (so P is one
//    FFMA and one exp2 from the raw q.k) and D = rowsum(dO * O) (the correction term of
//    dS = P (dP - D): sum_j P_ij dP_ij = dO_i . O_i, no pass over the keys). Padding rows get
//    lse_log2 = +inf and D = 0, which makes P = dS = 0 for the zero rows TMA reads past seqlen_q;
//  - dq_accum zeroed (grid-stride 16-byte stores), which the main kernel adds into.
// kGroup lanes per (row, head), each reading 16-byte vectors of O and dO (kGroup = d / 8: every
// lane of a warp loads, as in sm80/bwd_preprocess_sm80.cuh, whose unpadded layout this differs
// from).
#pragma once

#include <cuda_runtime.h>
#include <cutlass/array.h>

#include <cmath>
#include <cstdint>

#include "sm90/kernel_traits_bwd_sm90.cuh"

namespace flashattn::sm90 {

template <class Traits, int kGroup>
__global__ void __launch_bounds__(256)
    flash_bwd_preprocess_sm90_kernel(CUTE_GRID_CONSTANT BwdArgsSm90<Traits> const args,
                                     int64_t dq_accum_vec4) {
  static_assert(kGroup >= 4 && kGroup <= 32 && (kGroup & (kGroup - 1)) == 0);
  using Element = typename Traits::Element;
  const BwdParams& p = args.p;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t threads = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = tid; i < dq_accum_vec4; i += threads)
    reinterpret_cast<float4*>(args.dq_accum)[i] = make_float4(0.f, 0.f, 0.f, 0.f);

  const int padded = args.num_m_blocks * Traits::kBlockM;
  const int64_t pair = tid / kGroup;  // (sequence, head, padded row), row fastest
  const int lane = threadIdx.x % kGroup;
  // All lanes of a group share `pair` (groups never straddle a warp), so `active` and `row_in`
  // are uniform within the group and the shuffles name only the group's lanes.
  const bool active = pair < int64_t(p.b) * p.h * padded;
  const int row = int(pair % padded);
  const int64_t bh = pair / padded;
  const bool row_in = active && row < p.seqlen_q;
  float acc = 0.f;
  if (row_in) {
    const int64_t bidb = bh / p.h, bidh = bh % p.h;
    const Element* o = static_cast<const Element*>(p.o_ptr) + bidb * p.o_batch_stride +
                       row * p.o_row_stride + bidh * p.o_head_stride;
    const Element* dout = static_cast<const Element*>(p.do_ptr) + bidb * p.do_batch_stride +
                          row * p.do_row_stride + bidh * p.do_head_stride;
    using Vec = cutlass::Array<Element, 8>;
    for (int x = lane * 8; x < p.d; x += kGroup * 8) {  // d % 8 == 0: whole vectors only
      const Vec vo = *reinterpret_cast<const Vec*>(o + x);
      const Vec vd = *reinterpret_cast<const Vec*>(dout + x);
      CUTLASS_PRAGMA_UNROLL
      for (int e = 0; e < 8; ++e) acc += float(vo[e]) * float(vd[e]);
    }
    const unsigned group_mask =
        kGroup == 32 ? 0xffffffffu : ((1u << kGroup) - 1u) << (threadIdx.x % 32 / kGroup * kGroup);
    CUTLASS_PRAGMA_UNROLL
    for (int off = kGroup / 2; off > 0; off /= 2) acc += __shfl_xor_sync(group_mask, acc, off);
  }
  if (active && lane == 0) {
    // LSE [b, h, s_q]; +inf (a row that saw no key in the forward) stays +inf.
    args.lse_log2[pair] =
        row_in ? p.softmax_lse_ptr[bh * p.seqlen_q + row] * float(M_LOG2E) : INFINITY;
    args.dsum[pair] = acc;
  }
}

// Lanes per (row, head) for head dim d (multiple of 8): d / 8 rounded up to a power of two, 4..32.
inline int preprocess_group_bwd_sm90(int d) {
  int g = 4;
  while (g < 32 && g * 8 < d) g *= 2;
  return g;
}

}  // namespace flashattn::sm90
