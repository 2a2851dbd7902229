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
          bool kPaddedSmem_ = false, int kStages_ = 1, bool kSkipRescale_ = false,
          int kWarpsN_ = 1, bool kQInRegs_ = false, bool kPaddedQ_ = kPaddedSmem_,
          int kQKChunksAhead_ = 0, bool kFreshKVAddr_ = false, bool kFreshScoreCoords_ = false>
struct FwdKernelTraitsSm80 {
  using Element = Element_;  // cutlass::half_t or cutlass::bfloat16_t
  using ElementAccum = float;

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr bool kPaddedSmem = kPaddedSmem_;  // else XOR-swizzled rows (K, V; Q: kPaddedQ)
  static constexpr int kStages = kStages_;           // K/V buffers: 1 or 2 (double-buffered)
  static constexpr bool kSkipRescale = kSkipRescale_;  // skip the O rescale when no max moved
  // Warps per query row: 1 (FlashAttention-2's layout) or 2 (row pairs, see TiledMma).
  static constexpr int kWarpsN = kWarpsN_;
  static constexpr int kWarpsM = kNWarps / kWarpsN;
  // Q's A-operand fragments kept in registers for the whole loop instead of re-read from shared
  // memory for every key block (kBlockM * kHeadDim / (32 * kNWarps) / 2 registers per thread).
  static constexpr bool kQInRegs = kQInRegs_;
  // Q padded while K / V are swizzled (kPaddedQ != kPaddedSmem): Q is copied in once, so only
  // its ldmatrix addressing matters, and padded rows need one address register where the
  // swizzle needs one per k-slice pattern (the d = 128 / 256 policies, tile_size_sm80.h).
  static constexpr bool kPaddedQ = kPaddedQ_;
  // S = Q K^T from shared memory: 0 loads whole k-slices one ahead (gemm_ss); n > 0 streams K in
  // ldmatrix.x4 chunks of 16 keys, n chunks ahead (gemm_ss_streamed, fewer live registers).
  static constexpr int kQKChunksAhead = kQKChunksAhead_;
  // The main loop's K / V cp.async sources: false keeps each thread's K and V row pointers in
  // registers across the loop (2 x 64 bits); true re-derives them from threadIdx.x for every copy
  // (fresh_thread_idx, a few integer ops per copy), four registers fewer at the loop's
  // register peak. Which spills less differs per tile (tile_size_sm80.h). Contiguous K / V
  // only: the paged copy (copy_kv_paged) forms its row addresses at every copy anyway.
  static constexpr bool kFreshKVAddr = kFreshKVAddr_;
  // ALiBi's (row, key) coordinates in the unmasked tiles: false takes them from one partition of
  // the identity tile made before the loop (its per-thread base held in a register); true
  // re-derives them from threadIdx.x every block (MainloopFwdSm80::score_mods). No effect on
  // kernels without ALiBi.
  static constexpr bool kFreshScoreCoords = kFreshScoreCoords_;
  static_assert(kStages == 1 || kStages == 2);
  static_assert(kWarpsN == 1 || kWarpsN == 2);
  static_assert(kWarpsN == 1 || kStages == 1,
                "row pairs use the single-buffered schedule");
  static_assert(kHeadDim % 32 == 0, "head dims are multiples of 32 (smaller d is predicated)");
  static_assert(kBlockM % (16 * kWarpsM) == 0, "each warp owns whole 16-row MMA tiles");
  static_assert(kBlockN % (16 * kWarpsN) == 0, "the P V gemm consumes keys 16 at a time");

  // m16n8k16, fp32 accumulate, the same TiledMma for S = Q K^T and O += P V.
  //  - kWarpsN = 1: warps are stacked along M only, so each query row lives in exactly one warp,
  //    the softmax needs no cross-warp reduction and P goes from the S accumulator straight into
  //    the A operand of P V. The N extent 16 (two n8 atoms) lets one ldmatrix.x4 feed two MMAs.
  //  - kWarpsN = 2 ("row pairs"): kWarpsM x 2 warps; the two warps of a pair hold the same query
  //    rows, each half of the keys of S (n8 columns alternating between them) and half of the
  //    head dim of O. Each warp then reads K and V over twice the rows per byte: at d = 256 with
  //    64-row tiles (16 rows per warp with kWarpsN = 1) every K and V element read from shared
  //    memory fed only one m16 MMA, and ldmatrix traffic (Q 8 + K 32 + V 32 KB per warp and key
  //    block) matched the tensor cores' time. Paired, a warp reads Q 16 + K 16 + V 16 + P 4
  //    KB. The price: the pair exchanges its row maxima (after the barrier the schedule already
  //    has) and P goes through shared memory (one more barrier per key block).
  using MmaOp = std::conditional_t<std::is_same_v<Element, cutlass::half_t>,
                                   SM80_16x8x16_F32F16F16F32_TN, SM80_16x8x16_F32BF16BF16F32_TN>;
  using TiledMma = TiledMMA<MMA_Atom<MmaOp>, Layout<Shape<Int<kWarpsM>, Int<kWarpsN>, _1>>,
                            Tile<Int<16 * kWarpsM>, Int<16 * kWarpsN>, _16>>;

  // Shared memory. Both layouts make the 8 row addresses of an 8x8 ldmatrix (same column chunk,
  // consecutive rows) and the row-wise 16-byte cp.async writes land in 8 distinct 16-byte bank
  // groups, i.e. no bank conflicts:
  //  - swizzled: rows of kBlockKSmem elements (128 or 64 bytes), 16-byte chunk index XORed with
  //    the row index (mod 8). Dense, and every row segment starts 128-byte aligned; but each
  //    k-slice of a thread's ldmatrix sees a different XOR pattern, so the thread keeps one
  //    address register per pattern and operand live across the main loop (12 at d = 128 with
  //    Q, K and V swizzled);
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
      kPaddedQ, Layout<Shape<Int<kBlockM>, Int<kHeadDim>>, Stride<Int<kSmemPitch>, _1>>,
      decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}))>;
  // K, V: (kBlockN, kHeadDim, kStages); block n in stage n % stages.
  template <bool kPadded, int kNStages>
  using SmemLayoutKVOf = std::conditional_t<
      kPadded,
      Layout<Shape<Int<kBlockN>, Int<kHeadDim>, Int<kNStages>>,
             Stride<Int<kSmemPitch>, _1, Int<kBlockN * kSmemPitch>>>,
      decltype(tile_to_shape(SmemLayoutAtom{},
                             Shape<Int<kBlockN>, Int<kHeadDim>, Int<kNStages>>{}))>;
  using SmemLayoutK = SmemLayoutKVOf<kPaddedSmem, kStages>;
  using SmemLayoutV = SmemLayoutKVOf<kPaddedSmem, kStages>;
  // V viewed as V^T (head dim x keys x stages) for the P V gemm: same bytes, read with
  // ldmatrix.trans.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutV{},
      make_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{},
                  Stride<Int<kBlockN>, _1, Int<kBlockN * kHeadDim>>{})));
  // O is staged through the Q buffer (Q is dead once the last S = Q K^T is done).
  using SmemLayoutO = SmemLayoutQ;
  // P of a key block (row pairs only): rows of kBlockN elements, swizzled like Q (written as
  // 4-byte accumulator pairs, read back with ldmatrix as the A operand of P V).
  static constexpr int kBlockNSmem = kBlockN % 64 == 0 ? 64 : 32;
  using SmemLayoutAtomP = decltype(composition(
      Swizzle<kBlockNSmem == 64 ? 3 : 2, 3, 3>{},
      Layout<Shape<_8, Int<kBlockNSmem>>, Stride<Int<kBlockNSmem>, _1>>{}));
  using SmemLayoutP = decltype(tile_to_shape(SmemLayoutAtomP{}, Shape<Int<kBlockM>, Int<kBlockN>>{}));

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
  static constexpr int kSmemSizeKV = int(cosize_v<SmemLayoutV>) * int(sizeof(Element));
};

}  // namespace flashattn::sm80
