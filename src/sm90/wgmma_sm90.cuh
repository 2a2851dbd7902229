// The two wgmma helpers every Hopper mainloop uses (forward and backward): issuing one
// asynchronous GEMM batch, and relabeling an fp32 accumulator as the 16-bit A operand of the
// next GEMM without moving data.
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>

namespace flashattn::sm90 {

using namespace cute;

// tCrC (+)= tCrA * tCrB on the tensor cores, issued asynchronously as one wgmma batch over the
// K steps; the caller waits (warpgroup_wait) before reading tCrC or changing tCrA (kRegsA: A is
// a register fragment, else shared-memory descriptors).
template <bool kZeroInit, bool kRegsA, class TiledMma, class TensorA, class TensorB, class TensorC>
__forceinline__ __device__ void wgmma_issue(TiledMma& tiled_mma, TensorA const& tCrA,
                                            TensorB const& tCrB, TensorC& tCrC) {
  if constexpr (kRegsA) warpgroup_fence_operand(const_cast<TensorA&>(tCrA));
  warpgroup_fence_operand(tCrC);
  warpgroup_arrive();
  tiled_mma.accumulate_ = kZeroInit ? GMMA::ScaleOut::Zero : GMMA::ScaleOut::One;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(tCrA); ++k) {
    cute::gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), tCrC);
    tiled_mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(tCrC);
  if constexpr (kRegsA) warpgroup_fence_operand(const_cast<TensorA&>(tCrA));
}

// An accumulator ((2, 2, N / 8), 1, 1) relabeled as the A operand ((2, 2, 2), 1, N / 16) of a
// 16-bit GEMM whose K is the accumulator's N: the two 8-column blocks of each 16-wide slice are
// the A fragment's two k halves, in the same registers (no data movement). (8-bit A operands
// need a repack instead: convert_p_fp8, mainloop_fwd_sm90.cuh.)
template <class Layout>
__forceinline__ __device__ auto acc_as_a_operand(Layout const& acc) {
  static_assert(decltype(rank<0>(acc))::value == 3 && decltype(size<1>(acc))::value == 1 &&
                decltype(size<2>(acc))::value == 1);
  auto halves = logical_divide(get<0>(acc), Shape<Underscore, Underscore, _2>{});  // (2, 2, (2, N/16))
  return make_layout(make_layout(get<0>(halves), get<1>(halves), get<2, 0>(halves)), get<1>(acc),
                     get<2, 1>(halves));
}

}  // namespace flashattn::sm90
