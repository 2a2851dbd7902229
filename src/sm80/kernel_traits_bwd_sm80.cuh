// Compile-time configuration of the SM80-path backward kernel for one (head dim, tile, dtype):
// the three tiled MMAs (S / dP over (M, N), dK / dV over (N, d), dQ over (M, d)), the swizzled
// shared-memory layouts with their transposed views, and the copy atoms.
//
// Which operand is read how (all gemms are C = A * B^T with K-contiguous operands for ldmatrix):
//   S  = Q  K^T      A = sQ   (M x d)            B = sK   (N x d)              ldmatrix
//   dP = dO V^T      A = sdO  (M x d)            B = sV   (N x d)              ldmatrix
//   dV = P^T dO      A = sPt  (N x M, view of sP) B = sdOt (d x M, view of sdO) ldmatrix.trans
//   dK = dS^T Q      A = sdSt (N x M)            B = sQt  (d x M)              ldmatrix.trans
//   dQ = dS K        A = sdS  (M x N)            B = sKt  (d x N, view of sK)  ldmatrix / .trans
// The transposed views are the same bytes composed with a row-major (cols, rows) layout, so no
// data is moved; ldmatrix.trans delivers the transpose.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <type_traits>

namespace flashattn::sm80 {

using namespace cute;

// kDqAtomics_: how the dQ partials are added (dq_accum_index below): 0 = 16-byte vector atomics
// where the arch has them (sm_90), else scalar; 1 = scalar; 2 = not at all (timing experiments
// of benchmarks/cpp/bwd_bench_sm80.cu only: dQ is then wrong).
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, int kAtomMSdP, int kAtomNdKV,
          int kAtomMdQ, int kStagesQ_, int kStagesdO_, typename Element_, int kDqAtomics_ = 0,
          int kDqParts_ = 1, int kGemmChunksAhead_ = 0>
struct BwdKernelTraitsSm80 {
  using Element = Element_;  // cutlass::half_t or cutlass::bfloat16_t
  using ElementAccum = float;

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = kNWarps * 32;
  // Q and dO buffers (tile_size_bwd_sm80.h): both single, both double, or Q double and dO
  // single (dO is dead after the dV gemm, so one buffer can be refilled mid-step).
  static constexpr int kStagesQ = kStagesQ_;
  static constexpr int kStagesdO = kStagesdO_;
  static_assert((kStagesQ == 1 || kStagesQ == 2) && (kStagesdO == 1 || kStagesdO == 2));
  static_assert(kStagesdO <= kStagesQ);
  static_assert(kHeadDim % 32 == 0);
  static_assert(kNWarps % kAtomMSdP == 0 && kNWarps % kAtomNdKV == 0 && kNWarps % kAtomMdQ == 0);

  using MmaOp = std::conditional_t<std::is_same_v<Element, cutlass::half_t>,
                                   SM80_16x8x16_F32F16F16F32_TN, SM80_16x8x16_F32BF16BF16F32_TN>;
  // Each tiled MMA spreads the 8 warps over its (rows, cols) and covers 16 columns per warp
  // per step (two n8 atoms), so one ldmatrix.x4 feeds two MMAs with B.
  using TiledMmaSdP = TiledMMA<MMA_Atom<MmaOp>, Layout<Shape<Int<kAtomMSdP>, Int<kNWarps / kAtomMSdP>, _1>>,
                               Tile<Int<16 * kAtomMSdP>, Int<16 * (kNWarps / kAtomMSdP)>, _16>>;
  using TiledMmadKV = TiledMMA<MMA_Atom<MmaOp>, Layout<Shape<Int<kAtomNdKV>, Int<kNWarps / kAtomNdKV>, _1>>,
                               Tile<Int<16 * kAtomNdKV>, Int<16 * (kNWarps / kAtomNdKV)>, _16>>;
  using TiledMmadQ = TiledMMA<MMA_Atom<MmaOp>, Layout<Shape<Int<kAtomMdQ>, Int<kNWarps / kAtomMdQ>, _1>>,
                              Tile<Int<16 * kAtomMdQ>, Int<16 * (kNWarps / kAtomMdQ)>, _16>>;
  static_assert(kBlockM % (16 * kAtomMSdP) == 0 && kBlockN % (16 * (kNWarps / kAtomMSdP)) == 0);
  static_assert(kBlockN % (16 * kAtomNdKV) == 0 && kHeadDim % (16 * (kNWarps / kAtomNdKV)) == 0);
  static_assert(kBlockM % (16 * kAtomMdQ) == 0 && kHeadDim % (16 * (kNWarps / kAtomMdQ)) == 0);

  // Q, dO, K, V: rows of kBlockKSmem 16-bit elements XOR-swizzled in 16-byte chunks (as in the
  // forward: conflict-free cp.async writes and ldmatrix reads, also the transposed ones, which
  // read 8 rows of one 16-byte column chunk).
  static constexpr int kBlockKSmem = kHeadDim % 64 == 0 ? 64 : 32;
  static constexpr int kSwizzleBits = kBlockKSmem == 64 ? 3 : 2;
  using SmemLayoutAtomQKV = decltype(composition(
      Swizzle<kSwizzleBits, 3, 3>{},
      Layout<Shape<_8, Int<kBlockKSmem>>, Stride<Int<kBlockKSmem>, _1>>{}));
  using SmemLayoutQdO = decltype(tile_to_shape(SmemLayoutAtomQKV{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutKV = decltype(tile_to_shape(SmemLayoutAtomQKV{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  using SmemLayoutQdOt = decltype(composition(
      SmemLayoutQdO{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockM>>{}, GenRowMajor{})));
  using SmemLayoutKt = decltype(composition(
      SmemLayoutKV{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, GenRowMajor{})));

  // P and dS: (M x N), rows of 64 elements (kBlockN is 64 or 128), same swizzle.
  using SmemLayoutAtomPdS = decltype(composition(
      Swizzle<3, 3, 3>{}, Layout<Shape<_8, _64>, Stride<_64, _1>>{}));
  using SmemLayoutPdS = decltype(tile_to_shape(SmemLayoutAtomPdS{}, Shape<Int<kBlockM>, Int<kBlockN>>{}));
  using SmemLayoutPdSt = decltype(composition(
      SmemLayoutPdS{}, make_layout(Shape<Int<kBlockN>, Int<kBlockM>>{}, GenRowMajor{})));
  static_assert(kBlockN % 64 == 0);

  using SmemCopyAtom = Copy_Atom<SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomTransposed = Copy_Atom<SM75_U16x8_LDSM_T, Element>;
  // Registers -> smem for P and dS: each thread writes its accumulator pairs (32 bits).
  using SmemCopyAtomPdS = Copy_Atom<AutoVectorizingCopyWithAssumedAlignment<32>, Element>;

  // gmem -> smem with cp.async, 16 bytes per thread, zero fill for rows past the sequence end and
  // columns past d (exact zeros keep the padded rows/columns out of every gemm).
  static constexpr int kGmemElemsPerLoad = 8;
  static constexpr int kGmemThreadsPerRow = kBlockKSmem / kGmemElemsPerLoad;
  using GmemLayoutAtom = Layout<Shape<Int<kNThreads / kGmemThreadsPerRow>, Int<kGmemThreadsPerRow>>,
                                Stride<Int<kGmemThreadsPerRow>, _1>>;
  static_assert(kBlockM % (kNThreads / kGmemThreadsPerRow) == 0);
  static_assert(kBlockN % (kNThreads / kGmemThreadsPerRow) == 0);
  using GmemTiledCopy = decltype(make_tiled_copy(
      Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>, Element>{}, GmemLayoutAtom{},
      Layout<Shape<_1, Int<kGmemElemsPerLoad>>>{}));

  // The fp32 dQ partial of one query block (kBlockM x kHeadDim) in the dq_accum workspace: not
  // row-major but in the dQ gemm's accumulator order, so each thread adds its fragment with
  // fully coalesced atomics: sm_90 (red.global.add.v4.f32): value i of thread t at
  // (i / 4) * 4 * kNThreads + 4 * t + i % 4, a warp covering 512 contiguous bytes per
  // instruction; sm_80 (scalar red): at i * kNThreads + t, 128 contiguous bytes per instruction.
  // The main kernel and the postprocess (which un-permutes) use the same function, compiled for
  // the same arch, so the order never leaks out of one device's run.
  static constexpr int kDqTileElems = kBlockM * kHeadDim;
  static constexpr int kDqAtomics = kDqAtomics_;
  // The dQ gemm in kDqParts slices of the head dim (MainloopBwdSm80::dq_step).
  static constexpr int kDqParts = kDqParts_;
  // Every gemm's B operand streamed in 16-column chunks this many ahead (gemm_ss_streamed), or
  // whole k-slices one ahead (0).
  static constexpr int kGemmChunksAhead = kGemmChunksAhead_;
  static_assert(kHeadDim % (kDqParts * 16 * (kNWarps / kAtomMdQ)) == 0);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  static constexpr bool kDqVectorAtomics = kDqAtomics == 0;
#else
  static constexpr bool kDqVectorAtomics = false;
#endif
  __forceinline__ __device__ static int dq_accum_index(int tid, int i) {
    if constexpr (kDqVectorAtomics) {
      return (i / 4) * (4 * kNThreads) + 4 * tid + (i % 4);
    } else {
      return i * kNThreads + tid;
    }
  }

  static constexpr int kSmemQdO = int(cosize_v<SmemLayoutQdO>) * int(sizeof(Element));
  static constexpr int kSmemKV = int(cosize_v<SmemLayoutKV>) * int(sizeof(Element));
  static constexpr int kSmemPdS = int(cosize_v<SmemLayoutPdS>) * int(sizeof(Element));
};

}  // namespace flashattn::sm80
