// Compile-time shape of a Hopper forward kernel: tile sizes, the two warpgroup GEMMs, the
// shared-memory layouts they read, and the TMA copies that fill them. The kernel arguments
// (FwdArgsSm90) are here too, since they hold the TMA descriptors.
//
// The GEMMs run per consumer warpgroup, on its own 64 query rows (the wgmma M):
//   S = Q K^T   64 x block_n x d, Q and K from shared memory (SS; "Register bandwidth is a
//               bottleneck", so Q stays in smem), both K-major (d contiguous);
//   O += P V    64 x d x block_n, P from registers (RS: the S accumulator converted to 16 bits
//               in place), V^T from shared memory, MN-major (V rows are d-contiguous, so V^T
//               is contiguous along its N = d).
// V is written by TMA in the same layout as K, and the P V GEMM reads it through a transposed
// view (SmemLayoutVt): both are the same bytes, and the transpose of a K-major swizzle atom
// (8 rows x 64 columns, 128-byte swizzle) is the MN-major atom of the same swizzle.
//
// FP8 (e4m3 inputs, kFp8): 8-bit wgmma reads shared-memory operands K-major only, so P V needs
// V^T with the keys contiguous. The launcher transposes V once into a scratch tensor
// (d, keys) per (kv head, sequence) (transpose_v_fp8.cuh), and TMA loads (d x block_n) tiles of
// it straight into the K-major SmemLayoutVt. P enters P V from registers as e4m3; O is written in
// ElementOut (bf16 / fp16).
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cutlass/numeric_types.h>

#include <cstdint>
#include <type_traits>

#include "flashattn/params.h"
#include "sm90/tile_scheduler_sm90.h"
#include "sm90/tile_size_sm90.h"

namespace flashattn::sm90 {

using namespace cute;

// The K-major swizzle atom for rows of kCols elements: the widest swizzle (128 bytes: 64 16-bit
// or 128 8-bit elements) that divides the row, so the row is whole atoms.
template <class Element, int kCols>
constexpr auto k_major_smem_atom() {
  constexpr int kBytes = kCols * int(sizeof(Element));
  if constexpr (kBytes % 128 == 0) {
    return GMMA::Layout_K_SW128_Atom<Element>{};
  } else if constexpr (kBytes % 64 == 0) {
    return GMMA::Layout_K_SW64_Atom<Element>{};
  } else {
    return GMMA::Layout_K_SW32_Atom<Element>{};
  }
}

template <int kHeadDim_, class Element_, class ElementOut_ = Element_>
struct FwdTraitsSm90 {
  using Element = Element_;        // q, k, v
  using ElementOut = ElementOut_;  // o
  static constexpr bool kFp8 = sizeof(Element) == 1;
  static_assert(kFp8 || std::is_same_v<Element, ElementOut>, "16-bit inputs give o in their dtype");
  static_assert(sizeof(ElementOut) == 2);
  static constexpr FwdTileSm90 kTile =
      kFp8 ? tile_size_fwd_sm90_fp8(kHeadDim_) : tile_size_fwd_sm90(kHeadDim_);
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kTile.block_m;
  static constexpr int kBlockN = kTile.block_n;
  static constexpr int kStages = kTile.stages;
  static constexpr int kMmaWarpGroups = kTile.mma_warpgroups();
  static constexpr int kMmaThreads = 128 * kMmaWarpGroups;
  static constexpr int kNThreads = kTile.threads();
  static constexpr int kMmaRegisters = kTile.mma_registers;
  static constexpr int kLoadRegisters = kTile.load_registers;
  static constexpr bool kPingPong = kTile.pingpong;
  static_assert(kHeadDim % 16 == 0 && kBlockN % 16 == 0, "wgmma K steps of 16");
  static_assert(!kFp8 || (kHeadDim % 32 == 0 && kBlockN % 32 == 0), "8-bit wgmma K steps of 32");
  static_assert(kMmaWarpGroups >= 1 && kMmaWarpGroups <= 3);

  using TileS = Shape<_64, Int<kBlockN>, Int<kHeadDim>>;  // per warpgroup (M, N, K)
  using TileO = Shape<_64, Int<kHeadDim>, Int<kBlockN>>;
  using TiledMmaS = decltype(make_tiled_mma(GMMA::ss_op_selector<Element, Element, float, TileS>()));
  static constexpr GMMA::Major kMajorV = kFp8 ? GMMA::Major::K : GMMA::Major::MN;
  using TiledMmaO = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, TileO, GMMA::Major::K, kMajorV>()));

  using SmemAtom = decltype(k_major_smem_atom<Element, kHeadDim>());
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutKVStage = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  using SmemLayoutKV =
      decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  // (d, block_n, stages) -> the element of V at (key, d, stage). 16-bit: a view of the K-like
  // buffer TMA wrote; FP8: the layout TMA writes the V^T tiles in, K-major (keys contiguous).
  using SmemLayoutVtStage = decltype(tile_to_shape(k_major_smem_atom<Element, kBlockN>(),
                                                   Shape<Int<kHeadDim>, Int<kBlockN>>{}));
  using SmemLayoutVt = std::conditional_t<
      kFp8,
      decltype(tile_to_shape(k_major_smem_atom<Element, kBlockN>(),
                             Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{})),
      decltype(composition(SmemLayoutKV{},
                           make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{},
                                               Step<_2, _1, _3>{})))>;
  static_assert(cosize_v<SmemLayoutVt> == cosize_v<SmemLayoutKV>, "V fills the same buffer");

  // Global tensors as TMA sees them: (rows, d, heads, batch), d contiguous. Varlen inputs are
  // one batch of total rows; each CTA offsets its rows by the sequence's first row.
  using GmemShape = cute::Shape<int32_t, int32_t, int32_t, int32_t>;
  using GmemStride = cute::Stride<int64_t, _1, int64_t, int64_t>;
  using GmemLayout = cute::Layout<GmemShape, GmemStride>;
  using GmemTensor = decltype(make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)),
                                          GmemLayout{}));
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutQ{},
                                      Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using TmaKV = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutKVStage{},
                                       Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));
  // FP8: V^T as (d, keys, kv heads, batch), keys contiguous; 16-bit: V like K.
  using TmaVt = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutVtStage{},
                                       Shape<Int<kHeadDim>, Int<kBlockN>>{}, _1{}));
  using TmaV = std::conditional_t<kFp8, TmaVt, TmaKV>;
  // O of one consumer warpgroup (64 rows), staged in smem_v for the store: the V buffers are
  // free once every warpgroup's last P V GEMM of the tile is done, and Q's buffer is by then
  // already receiving the next tile's Q.
  using SmemLayoutOWg = decltype(tile_to_shape(k_major_smem_atom<ElementOut, kHeadDim>(),
                                               Shape<_64, Int<kHeadDim>>{}));
  static_assert(kMmaWarpGroups * 64 * kHeadDim * sizeof(ElementOut) <=
                    kStages * kBlockN * kHeadDim * sizeof(Element),
                "the staged O of every warpgroup fits in the V buffers");
  using TmaO = decltype(make_tma_copy(
      SM90_TMA_STORE{}, make_tensor(make_gmem_ptr(static_cast<ElementOut*>(nullptr)), GmemLayout{}),
      SmemLayoutOWg{}, Shape<_64, Int<kHeadDim>>{}, _1{}));
  static constexpr uint32_t kTmaBytesQ = kBlockM * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesKV = kBlockN * kHeadDim * sizeof(Element);
};

// Kernel arguments: the resolved params, what the host derives from them once, and the TMA
// descriptors (passed by value as a __grid_constant__ parameter, as TMA requires).
template <class Traits>
struct FwdArgsSm90 {
  FwdParams p;                   // resolved and validated
  float unit = 1.f;              // true score = t * unit (softmax_scale, or softcap with softcap)
  float unit_log2 = 1.f;         // unit * log2(e)
  float softcap_prescale = 0.f;  // softmax_scale / softcap
  // Dropout (FwdFeaturesSm90::kDropout): keep iff the Philox word < threshold; O is scaled by
  // rp_dropout = 1 / (1 - p), folded into the final 1 / l.
  uint32_t dropout_threshold = 0xFFFFFFFFu;
  float rp_dropout = 1.f;
  int h_h_k_ratio = 1;           // query heads per kv head
  int num_m_blocks = 0;          // ceil(seqlen_q / kBlockM), seqlen_q the (max) query length
  // Whether K / V rows past a sequence's last key can lie inside the tensor TMA reads (varlen:
  // the next sequence's rows; seqused_k: rows the caller did not fill). Their scores are masked,
  // but P = 0 times a NaN there would still be NaN, so the consumers zero those V rows of the
  // one key block that holds the sequence end. Dense K / V without seqused_k end at the tensor
  // edge, where TMA itself fills zeros.
  bool kv_tail_in_tensor = false;
  bool has_kv = true;  // some key exists (else tma_k / tma_v are left unset and never used)
  TileSchedulerSm90 scheduler;
  int* tile_counter = nullptr;  // zeroed per launch: tiles taken after each CTA's first

  typename Traits::GmemShape shape_q;  // (rows, d, h, batch) as the TMA descriptors were built
  typename Traits::GmemShape shape_kv;
  typename Traits::TmaQ tma_q;
  typename Traits::TmaKV tma_k;
  typename Traits::TmaV tma_v;
  typename Traits::GmemShape shape_v;  // shape_kv, or FP8's V^T (d, keys padded, h_k, batch)
  // Dense outputs are stored by TMA (rows past seqlen_q and columns past d are clipped by the
  // descriptor's bounds); varlen ones with predicated vector stores, since the rows past a
  // sequence's end belong to the next sequence.
  bool o_by_tma = false;
  typename Traits::GmemShape shape_o;
  typename Traits::TmaO tma_o;
};

}  // namespace flashattn::sm90
