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
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cutlass/numeric_types.h>

#include <cstdint>

#include "flashattn/params.h"
#include "sm90/tile_scheduler_sm90.h"
#include "sm90/tile_size_sm90.h"

namespace flashattn::sm90 {

using namespace cute;

// The K-major swizzle atom for rows of kCols 16-bit elements: the widest swizzle (128 bytes =
// 64 elements) that divides the row, so the row is whole atoms.
template <class Element, int kCols>
constexpr auto k_major_smem_atom() {
  if constexpr (kCols % 64 == 0) {
    return GMMA::Layout_K_SW128_Atom<Element>{};
  } else if constexpr (kCols % 32 == 0) {
    return GMMA::Layout_K_SW64_Atom<Element>{};
  } else {
    return GMMA::Layout_K_SW32_Atom<Element>{};
  }
}

template <int kHeadDim_, class Element_>
struct FwdTraitsSm90 {
  using Element = Element_;
  static constexpr FwdTileSm90 kTile = tile_size_fwd_sm90(kHeadDim_);
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
  static_assert(kMmaWarpGroups >= 1 && kMmaWarpGroups <= 3);

  using TileS = Shape<_64, Int<kBlockN>, Int<kHeadDim>>;  // per warpgroup (M, N, K)
  using TileO = Shape<_64, Int<kHeadDim>, Int<kBlockN>>;
  using TiledMmaS = decltype(make_tiled_mma(GMMA::ss_op_selector<Element, Element, float, TileS>()));
  using TiledMmaO = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, TileO, GMMA::Major::K, GMMA::Major::MN>()));

  using SmemAtom = decltype(k_major_smem_atom<Element, kHeadDim>());
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutKVStage = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  using SmemLayoutKV =
      decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  // (d, block_n, stages) -> the element of V at (key, d, stage).
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{},
      make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{}, Step<_2, _1, _3>{})));

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
  // O of one consumer warpgroup (64 rows), staged in smem_v for the store: the V buffers are
  // free once every warpgroup's last P V GEMM of the tile is done, and Q's buffer is by then
  // already receiving the next tile's Q.
  using SmemLayoutOWg = decltype(tile_to_shape(SmemAtom{}, Shape<_64, Int<kHeadDim>>{}));
  static_assert(kMmaWarpGroups * 64 * kHeadDim <= kStages * kBlockN * kHeadDim,
                "the staged O of every warpgroup fits in the V buffers");
  using TmaO = decltype(make_tma_copy(SM90_TMA_STORE{}, make_tensor(make_gmem_ptr(static_cast<Element*>(nullptr)), GmemLayout{}),
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
  typename Traits::TmaKV tma_v;
  // Dense outputs are stored by TMA (rows past seqlen_q and columns past d are clipped by the
  // descriptor's bounds); varlen ones with predicated vector stores, since the rows past a
  // sequence's end belong to the next sequence.
  bool o_by_tma = false;
  typename Traits::GmemShape shape_o;
  typename Traits::TmaO tma_o;
};

}  // namespace flashattn::sm90
