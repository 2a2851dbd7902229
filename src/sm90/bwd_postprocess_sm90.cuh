// Postprocess of the Hopper backward: dQ = softmax_scale * dq_accum, rounded to the dtype. One CTA
// of kMmaThreads threads per (query block, head, sequence): thread t reads back the values it
// would own in the dQ GEMM's accumulator (the same TiledMmadQ partition as the main kernel, so
// the order of BwdArgsSm90::dq_accum_index never leaks out), as 16-byte loads, stages them
// row-major in shared memory and writes 16-byte row vectors (rows < seqlen_q, columns < d).
// GQA / MQA dK / dV group sums reuse the SM80 path's kernel (sm80/bwd_postprocess_sm80.cuh): the
// dk_accum / dv_accum layout is the same.
#pragma once

#include <cuda_runtime.h>

#include <cute/tensor.hpp>

#include "sm90/kernel_traits_bwd_sm90.cuh"

namespace flashattn::sm90 {

template <class Traits>
__global__ void __launch_bounds__(Traits::kMmaThreads)
    flash_bwd_convert_dq_sm90_kernel(CUTE_GRID_CONSTANT BwdArgsSm90<Traits> const args) {
  using namespace cute;
  using Element = typename Traits::Element;
  using Args = BwdArgsSm90<Traits>;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kPitch = kHeadDim + 8;  // elements; the padding staggers the rows over the banks
  __shared__ __align__(16) Element tile_s[kBlockM * kPitch];
  const BwdParams& p = args.p;
  const int m_block = blockIdx.x, bidh = blockIdx.y, bidb = blockIdx.z;
  const int m0 = m_block * kBlockM;
  const int tid = threadIdx.x;
  const float* tile = args.dq_accum + ((int64_t(bidb) * p.h + bidh) * args.num_m_blocks + m_block) *
                                          (kBlockM * kHeadDim);

  typename Traits::TiledMmadQ tiled_mma;
  Tensor c = tiled_mma.get_thread_slice(tid).partition_C(
      make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  static_assert(decltype(size(c))::value == Traits::kDqValues);
  CUTE_UNROLL
  for (int i = 0; i < Traits::kDqValues; i += 4) {
    const float4 a = *reinterpret_cast<const float4*>(tile + Args::dq_accum_index(tid, i));
    const float v[4] = {a.x, a.y, a.z, a.w};
    CUTE_UNROLL
    for (int e = 0; e < 4; ++e)
      tile_s[get<0>(c(i + e)) * kPitch + get<1>(c(i + e))] = Element(v[e] * p.softmax_scale);
  }
  __syncthreads();
  Element* dq = static_cast<Element*>(p.dq_ptr) + int64_t(bidb) * p.dq_batch_stride +
                int64_t(m0) * p.dq_row_stride + int64_t(bidh) * p.dq_head_stride;
  const int rows = min(kBlockM, p.seqlen_q - m0);
  constexpr int kVecsPerRow = kHeadDim / 8;
  for (int v = tid; v < kBlockM * kVecsPerRow; v += Traits::kMmaThreads) {
    const int r = v / kVecsPerRow, col = (v % kVecsPerRow) * 8;
    if (r < rows && col < p.d) {
      *reinterpret_cast<uint4*>(dq + int64_t(r) * p.dq_row_stride + col) =
          *reinterpret_cast<const uint4*>(tile_s + r * kPitch + col);
    }
  }
}

}  // namespace flashattn::sm90
