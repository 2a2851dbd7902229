// Compile-time configuration of the SM80-path forward kernel for one (head dim, tile, dtype,
// schedule knobs): the tensor-core MMA, the shared-memory layouts (padded or XOR-swizzled, one or
// two K/V stages) and the copy atoms that move tiles gmem -> smem (cp.async, 16 bytes per
// thread), smem -> registers (ldmatrix) and back for O. The knobs come from the tile policy
// (tile_size_sm80.h), which records why each head dim uses which.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <type_traits>

namespace flashattn::sm80 {

using namespace cute;

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, typename Element_,
          bool kPaddedSmem_ = false, int kStages_ = 1, bool kSkipRescale_ = false>
struct FwdKernelTraitsSm80 {
  using Element = Element_;  // cutlass::half_t or cutlass::bfloat16_t
  using ElementAccum = float;

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr bool kPaddedSmem = kPaddedSmem_;  // else XOR-swizzled rows
  static constexpr int kStages = kStages_;           // K/V buffers: 1 or 2 (double-buffered)
  static constexpr bool kSkipRescale = kSkipRescale_;  // skip the O rescale when no max moved
  static_assert(kStages == 1 || kStages == 2);
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

  // Shared memory. Both layouts make the 8 row addresses of an 8x8 ldmatrix (same column chunk,
  // consecutive rows) and the row-wise 16-byte cp.async writes land in 8 distinct 16-byte bank
  // groups, i.e. no bank conflicts:
  //  - swizzled: rows of kBlockKSmem elements (128 or 64 bytes), 16-byte chunk index XORed with
  //    the row index (mod 8). Dense, and every row segment starts 128-byte aligned; but each
  //    k-slice of a thread's ldmatrix sees a different XOR pattern, so the thread keeps one
  //    address register per pattern and operand live across the main loop (12 at d = 128);
  //  - padded: plain row-major with a 16-byte pad per row (pitch kHeadDim + 8), so consecutive
  //    rows are 16 bytes apart modulo 128. Every (row tile, k-slice) address is one base
  //    register plus an immediate; costs 1/16 (d = 128) to 1/4 (d = 32) more shared memory.
  static constexpr int kBlockKSmem = kHeadDim % 64 == 0 ? 64 : 32;
  static constexpr int kSwizzleBits = kBlockKSmem == 64 ? 3 : 2;
  static constexpr int kSmemPitch = kHeadDim + 8;  // padded layout, elements
  using SmemLayoutAtom = decltype(composition(
      Swizzle<kSwizzleBits, 3, 3>{},
      Layout<Shape<_8, Int<kBlockKSmem>>, Stride<Int<kBlockKSmem>, _1>>{}));
  using SmemLayoutQ = std::conditional_t<
      kPaddedSmem, Layout<Shape<Int<kBlockM>, Int<kHeadDim>>, Stride<Int<kSmemPitch>, _1>>,
      decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}))>;
  // K and V: (kBlockN, kHeadDim, kStages); key block n lives in stage n % kStages.
  using SmemLayoutKV = std::conditional_t<
      kPaddedSmem,
      Layout<Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>,
             Stride<Int<kSmemPitch>, _1, Int<kBlockN * kSmemPitch>>>,
      decltype(tile_to_shape(SmemLayoutAtom{},
                             Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}))>;
  // V viewed as V^T (head dim x keys x stages) for the P V gemm: same bytes, read with
  // ldmatrix.trans.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{},
      make_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{},
                  Stride<Int<kBlockN>, _1, Int<kBlockN * kHeadDim>>{})));
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
