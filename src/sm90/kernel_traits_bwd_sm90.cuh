// Compile-time shape of a Hopper backward kernel: tiles, the five warpgroup GEMMs, the
// shared-memory layouts they read and the TMA copies that fill them; and the kernel arguments
// (BwdArgsSm90), which hold the TMA descriptors.
//
// The two consumer warpgroups split the key block: warpgroup w owns keys [64 w, 64 w + 64) (the
// wgmma M). With the score tile computed transposed (keys on M, queries on N), the probabilities
// and dS come out of the tensor cores already as the A operands (M = keys, K = queries) of the
// dV and dK GEMMs, so those run with A in registers and P never goes to shared memory:
//   S^T  = K Q^T      (block_n x block_m x d)  SS  A = sK  (keys, d)      B = sQ  (queries, d)
//   dP^T = V dO^T     (block_n x block_m x d)  SS  A = sV                 B = sdO
//   dV  += P^T dO     (block_n x d x block_m)  RS  A = P^T (registers)    B = sdO^T (d, queries)
//   dK  += dS^T Q     (block_n x d x block_m)  RS  A = dS^T (registers)   B = sQ^T
//   dQ    = dS K      (block_m x d x block_n)  SS  A = sdS (queries, keys) B = sK^T (d, keys)
// Only dS is written to shared memory (the dQ GEMM needs all keys of both warpgroups). Its
// layout is MN-major (queries contiguous): the dS^T accumulator holds pairs of adjacent queries,
// so each pair is one 32-bit store. The transposed B operands are views of the same bytes (the
// transpose of a K-major 128-byte swizzle atom is the MN-major atom of the same swizzle).
// The dQ GEMM's two warpgroups split d (block_m = 64) or the query rows (block_m = 128).
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cutlass/numeric_types.h>

#include <cstdint>

#include "flashattn/params.h"
#include "sm90/tile_size_bwd_sm90.h"

namespace flashattn::sm90 {

using namespace cute;

template <int kHeadDim_, class Element_>
struct BwdTraitsSm90 {
  using Element = Element_;
  static constexpr BwdTileSm90 kTile = tile_size_bwd_sm90(kHeadDim_);
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kTile.block_m;
  static constexpr int kBlockN = kTile.block_n;
  static constexpr int kStages = kTile.stages;
  static constexpr int kMmaWarpGroups = kTile.mma_warpgroups();
  static constexpr int kMmaThreads = 128 * kMmaWarpGroups;
  static constexpr int kNThreads = kTile.threads();
  static constexpr int kMmaRegisters = kTile.mma_registers;
  static constexpr int kLoadRegisters = kTile.load_registers;
  static_assert(kMmaWarpGroups == 2, "the dQ GEMM's split below assumes two consumer warpgroups");
  static_assert(kHeadDim % 64 == 0, "rows of whole 128-byte swizzle atoms");
  static_assert(kBlockM % 64 == 0 && kBlockM <= 128);

  // S^T, dP^T, dK, dV: warpgroups along M (keys).
  using AtomLayoutKeys = Layout<Shape<Int<kMmaWarpGroups>, _1, _1>>;
  using TiledMmaSdP = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockM>, Int<kHeadDim>>>(),
      AtomLayoutKeys{}));
  using TiledMmadKV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<_64, Int<kHeadDim>, Int<kBlockM>>,
                           GMMA::Major::K, GMMA::Major::MN>(),
      AtomLayoutKeys{}));
  // dQ: 64 query rows per wgmma; two warpgroups split the rows when there are 128, else d.
  static constexpr int kDqWgM = kBlockM / 64;
  static constexpr int kDqWgN = kMmaWarpGroups / kDqWgM;
  using TiledMmadQ =
      decltype(make_tiled_mma(GMMA::ss_op_selector<Element, Element, float,
                                                   Shape<_64, Int<kHeadDim / kDqWgN>, Int<kBlockN>>,
                                                   GMMA::Major::MN, GMMA::Major::MN>(),
                              Layout<Shape<Int<kDqWgM>, Int<kDqWgN>, _1>>{}));
  // fp32 values of the dQ partial per consumer thread (its share of block_m x d).
  static constexpr int kDqValues = kBlockM * kHeadDim / kMmaThreads;
  static_assert(kDqValues % 4 == 0);

  using SmemAtomK = GMMA::Layout_K_SW128_Atom<Element>;
  using SmemLayoutQStage =
      decltype(tile_to_shape(SmemAtomK{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutQ =  // Q and dO: (queries, d, stages)
      decltype(tile_to_shape(SmemAtomK{}, Shape<Int<kBlockM>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutQt = decltype(composition(  // (d, queries, stages)
      SmemLayoutQ{},
      make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockM>, Int<kStages>>{}, Step<_2, _1, _3>{})));
  using SmemLayoutK =
      decltype(tile_to_shape(SmemAtomK{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));  // K, V
  using SmemLayoutKt = decltype(composition(                                       // (d, keys)
      SmemLayoutK{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, Step<_2, _1>{})));
  // dS: (queries, keys, 2 buffers), MN-major; dSt the (keys, queries, 2) view the dS^T
  // accumulator is stored through. Two buffers: step m + 1 writes the other one while a slower
  // warpgroup may still read step m's in its dQ GEMM.
  using SmemLayoutdS = decltype(tile_to_shape(GMMA::Layout_MN_SW128_Atom<Element>{},
                                              Shape<Int<kBlockM>, Int<kBlockN>, _2>{}));
  using SmemLayoutdSt = decltype(composition(
      SmemLayoutdS{},
      make_ordered_layout(Shape<Int<kBlockN>, Int<kBlockM>, _2>{}, Step<_2, _1, _3>{})));

  // Global tensors as TMA sees them: (rows, d, heads, batch), d contiguous.
  using GmemShape = cute::Shape<int32_t, int32_t, int32_t, int32_t>;
  using GmemStride = cute::Stride<int64_t, _1, int64_t, int64_t>;
  using GmemLayout = cute::Layout<GmemShape, GmemStride>;
  using GmemTensor =
      decltype(make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemLayout{}));
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutQStage{},
                                      Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using TmaK = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutK{},
                                      Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));
  static constexpr uint32_t kRowStatBytes = kBlockM * sizeof(float);  // LSE or D of one block
  static constexpr uint32_t kTmaBytesQ = kBlockM * kHeadDim * sizeof(Element) + kRowStatBytes;
  static constexpr uint32_t kTmaBytesK = kBlockN * kHeadDim * sizeof(Element);
  static_assert(kRowStatBytes % 16 == 0, "bulk copies move multiples of 16 bytes");
};

// Kernel arguments: the resolved params, what the host derives from them once, the fp32
// workspace and the TMA descriptors (passed by value as a __grid_constant__ parameter).
template <class Traits>
struct BwdArgsSm90 {
  BwdParams p;             // resolved and validated; dense (no cu_seqlens, no seqused_k)
  float scale_log2 = 1.f;  // softmax_scale * log2(e): P = exp2(q.k * scale_log2 - lse_log2)
  int h_h_k_ratio = 1;     // query heads per kv head
  int num_m_blocks = 0;    // ceil(seqlen_q / kBlockM)
  int num_n_blocks = 0;    // ceil(seqlen_k / kBlockN)
  // Workspace. Row statistics per (sequence, head), padded to whole query blocks
  // [b, h, num_m_blocks * kBlockM], so one bulk copy moves a block's values with no bounds:
  // lse_log2 = LSE * log2(e) (+inf in the padding: P = 0 there), dsum = rowsum(dO * O)
  // (0 in the padding).
  float* lse_log2 = nullptr;
  float* dsum = nullptr;
  // dQ partials: one kBlockM x kHeadDim fp32 tile per (sequence, head, query block), in the dQ
  // GEMM's accumulator order (dq_accum_index), zeroed by the preprocess, added with red.add.
  float* dq_accum = nullptr;
  // GQA / MQA only (null when h == h_k): scaled dK / dV of every query head,
  // [b * seqlen_k, h, kHeadDim], summed over each kv head's group by the postprocess.
  float* dk_accum = nullptr;
  float* dv_accum = nullptr;
  typename Traits::GmemShape shape_q;  // (rows, d, h, batch) as the descriptors were built
  typename Traits::GmemShape shape_k;
  typename Traits::TmaQ tma_q;
  typename Traits::TmaQ tma_do;
  typename Traits::TmaK tma_k;
  typename Traits::TmaK tma_v;

  // Value i of consumer thread t in a dq_accum tile: each group of 4 values of a thread is one
  // 16-byte red.global.add.v4.f32, and the 32 lanes of a warp cover 512 contiguous bytes.
  __host__ __device__ static constexpr int dq_accum_index(int t, int i) {
    return (i / 4) * (4 * Traits::kMmaThreads) + 4 * t + (i % 4);
  }
};

}  // namespace flashattn::sm90
