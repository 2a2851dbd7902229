// The accumulator-layout hook shared by every GPU arch: a view of one thread's MMA accumulator
// fragment as (rows it owns, columns it owns), the reductions over the four lanes that share a
// row, and the fp32 -> 16-bit conversion of a fragment. The online softmax (online_softmax.cuh)
// and the score mods (score_mod_tile.cuh) are written against the (row, col) view only, so the
// SM80 kernels (mma.sync m16n8k16) and the Hopper kernels (wgmma) run the same code.
//
// Both instructions give a thread the same pattern inside each 8-column block: values (c0, c1)
// in row lane / 4, columns 2 * (lane % 4) + {0, 1}, and (c2, c3) in row lane / 4 + 8. They differ
// in how the blocks are stacked:
//   mma.sync m16n8k16: ((2, 2), MMA_M, MMA_N)      one 16 x 8 tile per (MMA_M, MMA_N) index;
//   wgmma m64nNk16:    ((2, 2, N / 8), MMA_M, MMA_N) the N / 8 column blocks of one warp's 16
//                      rows are inside the value mode.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_conversion.h>

namespace flashattn::gpu {

using namespace cute;

// ((2, 2[, N / 8]), MMA_M, MMA_N) -> ((2, MMA_M), (2[, N / 8], MMA_N)): (rows, columns).
template <class Layout>
__forceinline__ __device__ auto acc_layout_rowcol(Layout const& acc) {
  static_assert(decltype(rank(acc))::value == 3);
  auto vals = get<0>(acc);  // (column pair, row half[, column block])
  static_assert(decltype(size<0>(vals))::value == 2 && decltype(size<1>(vals))::value == 2);
  if constexpr (decltype(rank(vals))::value == 2) {
    return make_layout(make_layout(get<1>(vals), get<1>(acc)),
                       make_layout(get<0>(vals), get<2>(acc)));
  } else {
    static_assert(decltype(rank(vals))::value == 3);
    return make_layout(make_layout(get<1>(vals), get<1>(acc)),
                       make_layout(get<0>(vals), get<2>(vals), get<2>(acc)));
  }
}

// The four lanes of a quad (lane / 4 equal) hold the same accumulator rows.
__forceinline__ __device__ float quad_allreduce_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__forceinline__ __device__ float quad_allreduce_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// fp32 fragment -> 16-bit fragment of the same layout (paired cvt.rn.{bf16x2,f16x2}.f32).
template <typename To, class Tensor>
__forceinline__ __device__ auto convert_fragment(Tensor const& src) {
  constexpr int kN = decltype(size(src))::value;
  static_assert(kN % 2 == 0);
  auto dst = make_tensor<To>(src.layout());
  cutlass::NumericArrayConverter<To, float, 2> conv;
  CUTE_UNROLL
  for (int i = 0; i < kN; i += 2) {
    cutlass::Array<float, 2> in;
    in[0] = src(i);
    in[1] = src(i + 1);
    cutlass::Array<To, 2> out = conv(in);
    dst(i) = out[0];
    dst(i + 1) = out[1];
  }
  return dst;
}

}  // namespace flashattn::gpu
