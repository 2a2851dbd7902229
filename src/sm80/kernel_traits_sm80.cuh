// Compile-time configuration of the SM80-path forward kernel for one (head dim, tile, dtype):
// the tensor-core MMA, the swizzled shared-memory layouts and the copy atoms that move tiles
// gmem -> smem (cp.async, 16 bytes per thread), smem -> registers (ldmatrix) and back for O.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <type_traits>

namespace flashattn::sm80 {

using namespace cute;

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, typename Element_>
struct FwdKernelTraitsSm80 {
  using Element = Element_;  // cutlass::half_t or cutlass::bfloat16_t
  using ElementAccum = float;

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = kNWarps * 32;
  static_assert(kHeadDim % 32 == 0, "head dims are multiples of 32 (smaller d is predicated)");
  static_assert(kBlockM % (16 * kNWarps) == 0, "each warp owns whole 16-row MMA tiles");
  static_assert(kBlockN % 16 == 0, "the P V gemm consumes keys 16 at a time");

  // m16n8k16, fp32 accumulate. Warps are stacked along M only, so each query row lives in exactly
  // one warp and the softmax needs no cross-warp reduction. The N extent 16 (two n8 atoms) lets
  // one ldmatrix.x4 feed two MMAs with B.
  using MmaOp = std::conditional_t<std::is_same_v<Element, cutlass::half_t>,
                                   SM80_16x8x16_F32F16F16F32_TN, SM80_16x8x16_F32BF16BF16F32_TN>;
  using TiledMma = TiledMMA<MMA_Atom<MmaOp>, Layout<Shape<Int<kNWarps>, _1, _1>>,
                            Tile<Int<16 * kNWarps>, _16, _16>>;

  // Shared memory: rows of kBlockKSmem 16-bit elements (64 = 128 bytes, or 32 = 64 bytes when the
  // head dim is not a multiple of 64), XOR-swizzled in 16-byte chunks so that both the row-wise
  // cp.async writes and the 8x8 ldmatrix reads (8 rows, same column chunk) hit 8 distinct
  // 16-byte bank groups: no bank conflicts.
  static constexpr int kBlockKSmem = kHeadDim % 64 == 0 ? 64 : 32;
  static constexpr int kSwizzleBits = kBlockKSmem == 64 ? 3 : 2;
  using SmemLayoutAtom = decltype(composition(
      Swizzle<kSwizzleBits, 3, 3>{},
      Layout<Shape<_8, Int<kBlockKSmem>>, Stride<Int<kBlockKSmem>, _1>>{}));
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutKV = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  // V viewed as V^T (head dim x keys) for the P V gemm: same bytes, read with ldmatrix.trans.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, GenRowMajor{})));
  // O is staged through the Q buffer (Q is dead once the last S = Q K^T is done).
  using SmemLayoutO = SmemLayoutQ;

  using SmemCopyAtom = Copy_Atom<SM75_U32x4_LDSM_N, Element>;            // Q, K: ldmatrix.x4
  using SmemCopyAtomTransposed = Copy_Atom<SM75_U16x8_LDSM_T, Element>;  // V^T: ldmatrix.x4.trans
  using SmemCopyAtomO = Copy_Atom<AutoVectorizingCopyWithAssumedAlignment<32>, Element>;

  // gmem -> smem: each thread moves 16 bytes (8 elements) per cp.async; a row of kBlockKSmem
  // elements is covered by kGmemThreadsPerRow consecutive threads (64 or 128 contiguous bytes).
  // The zero-fill variant lets out-of-range rows/columns land as zeros in smem instead of stale
  // data (0 * NaN would poison P V).
  static constexpr int kGmemElemsPerLoad = 8;
  static constexpr int kGmemThreadsPerRow = kBlockKSmem / kGmemElemsPerLoad;
  static_assert(kNThreads % kGmemThreadsPerRow == 0);
  using GmemLayoutAtom = Layout<Shape<Int<kNThreads / kGmemThreadsPerRow>, Int<kGmemThreadsPerRow>>,
                                Stride<Int<kGmemThreadsPerRow>, _1>>;
  static_assert(kBlockN % (kNThreads / kGmemThreadsPerRow) == 0);
  using GmemTiledCopyQKV = decltype(make_tiled_copy(
      Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>, Element>{}, GmemLayoutAtom{},
      Layout<Shape<_1, Int<kGmemElemsPerLoad>>>{}));
  using GmemTiledCopyO = decltype(make_tiled_copy(
      Copy_Atom<UniversalCopy<cute::uint128_t>, Element>{}, GmemLayoutAtom{},
      Layout<Shape<_1, Int<kGmemElemsPerLoad>>>{}));

  static constexpr int kSmemSizeQ = int(cosize_v<SmemLayoutQ>) * int(sizeof(Element));
  static constexpr int kSmemSizeKV = int(cosize_v<SmemLayoutKV>) * int(sizeof(Element));
};

}  // namespace flashattn::sm80
