// The FlashAttention-2 main loop of one CTA (kBlockM query rows of one head), SM80 path.
//
// Schedule (one K buffer, one V buffer; "||" = in flight at the same time):
//   prologue:  cp.async Q, cp.async K[n_max - 1]
//   for n = n_max - 1 down to n_min:
//     wait K[n]; barrier                 (all of K[n] landed; last P V done with sV)
//     cp.async V[n]                   || S = Q K[n]^T   (ldmatrix + mma.sync from smem)
//     score mods; mask only if the tile is not fully visible (boundary / residue tiles)
//     wait V[n]; barrier                 (V[n] landed; every warp done reading sK)
//     cp.async K[n - 1]               || online softmax, O += P V[n] (P from registers)
// Walking n downward puts the only partial key block (the seqlen_k residue, n = n_max - 1) and
// the causal diagonal first, so every later K/V load is a full, unpredicated-by-row tile.
#pragma once

#include <cute/tensor.hpp>

#include "common/mask.h"
#include "common/seqlen.h"
#include "sm80/fwd_args_sm80.h"
#include "sm80/mask_sm80.cuh"
#include "sm80/softmax_sm80.cuh"
#include "sm80/utils_sm80.cuh"

namespace flashattn::sm80 {

using namespace cute;

// Where a CTA sits: query block, query head, sequence.
struct BlockCoordSm80 {
  int m_block = 0;
  int bidh = 0;
  int bidb = 0;
};

template <class Traits, bool kHasSoftcap, bool kHasAlibi>
struct MainloopFwdSm80 {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  using TiledMma = typename Traits::TiledMma;
  using ScoreMod = ScoreModSm80<kHasSoftcap, kHasAlibi>;

  struct SharedStorage {
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutQ>, 128> smem_q;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutKV>, 128> smem_k;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutKV>, 128> smem_v;
  };

  // Runs the key blocks [n_block_min, n_block_max) into acc_o and the softmax state.
  template <class TensorO, class Softmax>
  __forceinline__ __device__ void run(FwdArgsSm80 const& args, SharedStorage& storage,
                                      SeqlenInfo const& seq, BlockCoordSm80 const& blk,
                                      VisibilityMask const& mask, int n_block_min,
                                      int n_block_max, TensorO& acc_o, Softmax& softmax) const {
    const FwdParams& p = args.p;
    const int tid = threadIdx.x;
    const bool varlen = p.cu_seqlens_q != nullptr;
    const int bidh_kv = blk.bidh / args.h_h_k_ratio;
    const int m0 = blk.m_block * kBlockM;

    // Global memory: this CTA's Q tile, and this (sequence, kv head)'s K and V as key blocks.
    const Element* q_base = static_cast<const Element*>(p.q_ptr) +
        seq.q_offset(p.q_batch_stride, p.q_row_stride, p.q_head_stride, blk.bidb, m0, blk.bidh,
                     varlen);
    const Element* k_base = static_cast<const Element*>(p.k_ptr) +
        seq.k_offset(p.k_batch_stride, p.k_row_stride, p.k_head_stride, blk.bidb, 0, bidh_kv,
                     varlen);
    const Element* v_base = static_cast<const Element*>(p.v_ptr) +
        seq.k_offset(p.v_batch_stride, p.v_row_stride, p.v_head_stride, blk.bidb, 0, bidh_kv,
                     varlen);
    Tensor gQ = make_tensor(make_gmem_ptr(q_base), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                            make_stride(p.q_row_stride, _1{}));            // (kBlockM, kHeadDim)
    Tensor mK = make_tensor(make_gmem_ptr(k_base), make_shape(n_block_max * kBlockN, Int<kHeadDim>{}),
                            make_stride(p.k_row_stride, _1{}));
    Tensor mV = make_tensor(make_gmem_ptr(v_base), make_shape(n_block_max * kBlockN, Int<kHeadDim>{}),
                            make_stride(p.v_row_stride, _1{}));
    Tensor gK = local_tile(mK, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, 0));  // (kBlockN, kHeadDim, n)
    Tensor gV = local_tile(mV, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, 0));  // (kBlockN, kHeadDim, n)

    Tensor sQ = make_tensor(make_smem_ptr(storage.smem_q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(storage.smem_k.data()), typename Traits::SmemLayoutKV{});
    Tensor sV = make_tensor(make_smem_ptr(storage.smem_v.data()), typename Traits::SmemLayoutKV{});
    Tensor sVt = make_tensor(make_smem_ptr(storage.smem_v.data()), typename Traits::SmemLayoutVt{});

    // gmem -> smem copies, with coordinates for the row / head-dim predicates.
    typename Traits::GmemTiledCopyQKV gmem_tiled_copy;
    auto gmem_thr_copy = gmem_tiled_copy.get_thread_slice(tid);
    Tensor tQgQ = gmem_thr_copy.partition_S(gQ);  // (CPY, CPY_M, CPY_K)
    Tensor tQsQ = gmem_thr_copy.partition_D(sQ);
    Tensor tKgK = gmem_thr_copy.partition_S(gK);  // (CPY, CPY_N, CPY_K, n)
    Tensor tKsK = gmem_thr_copy.partition_D(sK);
    Tensor tVgV = gmem_thr_copy.partition_S(gV);  // (CPY, CPY_N, CPY_K, n)
    Tensor tVsV = gmem_thr_copy.partition_D(sV);
    Tensor tQcQ = gmem_thr_copy.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    Tensor tKVcKV = gmem_thr_copy.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
    // Head-dim predicate: the column split is the same for Q and K/V tiles.
    Tensor tpD = make_tensor<bool>(make_shape(size<2>(tKsK)));
    CUTE_UNROLL
    for (int k = 0; k < size(tpD); ++k) tpD(k) = get<1>(tKVcKV(0, 0, k)) < p.d;

    // MMA operands and the ldmatrix copies that feed them.
    TiledMma tiled_mma;
    auto thr_mma = tiled_mma.get_thread_slice(tid);
    Tensor tSrQ = thr_mma.partition_fragment_A(sQ);    // (MMA, MMA_M, MMA_K)
    Tensor tSrK = thr_mma.partition_fragment_B(sK);    // (MMA, MMA_N, MMA_K)
    Tensor tOrVt = thr_mma.partition_fragment_B(sVt);  // (MMA, MMA_K=d, MMA_N=keys)

    auto smem_tiled_copy_q = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);
    auto smem_thr_copy_q = smem_tiled_copy_q.get_thread_slice(tid);
    Tensor tSsQ = smem_thr_copy_q.partition_S(sQ);
    auto smem_tiled_copy_k = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);
    auto smem_thr_copy_k = smem_tiled_copy_k.get_thread_slice(tid);
    Tensor tSsK = smem_thr_copy_k.partition_S(sK);
    auto smem_tiled_copy_v = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma);
    auto smem_thr_copy_v = smem_tiled_copy_v.get_thread_slice(tid);
    Tensor tOsVt = smem_thr_copy_v.partition_S(sVt);

    // (row, key) of every S accumulator element, for the score mods and the mask.
    Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));

    ScoreMod score_mod;
    score_mod.offset = seq.seqlen_k - seq.seqlen_q;
    if constexpr (kHasSoftcap) score_mod.softcap_prescale = args.softcap_prescale;
    if constexpr (kHasAlibi) {
      const float slope = p.alibi_slopes[blk.bidb * p.alibi_slopes_batch_stride + blk.bidh];
      score_mod.alibi_coef = -slope / args.unit;
    }
    // Query rows past the sequence end are zero-filled and never stored; they are left out of
    // the "fully visible" test so that the last row block still takes the unmasked path.
    const int m_end = min(m0 + kBlockM, seq.seqlen_q);

    // Prologue: Q and the last (possibly partial) K block.
    int n_block = n_block_max - 1;
    copy_zfill<true>(gmem_tiled_copy, tQgQ, tQsQ, tQcQ, tpD, seq.seqlen_q - m0);
    copy_zfill<true>(gmem_tiled_copy, tKgK(_, _, _, n_block), tKsK, tKVcKV, tpD,
                     seq.seqlen_k - n_block * kBlockN);
    cp_async_fence();

    CUTE_NO_UNROLL
    for (; n_block >= n_block_min; --n_block) {
      const int n0 = n_block * kBlockN;
      Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});  // (MMA, MMA_M, MMA_N)
      clear(acc_s);

      cp_async_wait<0>();
      __syncthreads();  // K[n] visible to every warp; every warp done with the last P V (sV free)
      // Only the first block walked can be partial (it holds the seqlen_k residue).
      if (n_block == n_block_max - 1) {
        copy_zfill<true>(gmem_tiled_copy, tVgV(_, _, _, n_block), tVsV, tKVcKV, tpD, seq.seqlen_k - n0);
      } else {
        copy_zfill<false>(gmem_tiled_copy, tVgV(_, _, _, n_block), tVsV, tKVcKV, tpD, kBlockN);
      }
      cp_async_fence();

      gemm_ss(acc_s, tSrQ, tSrK, tSsQ, tSsK, tiled_mma, smem_tiled_copy_q, smem_tiled_copy_k,
              smem_thr_copy_q, smem_thr_copy_k);
      // Uniform branch: interior tiles skip the per-element visibility test.
      if (mask.tile_fully_visible(m0, m_end, n0, n0 + kBlockN)) {
        score_mod.template apply<false>(acc_s, tScS, m0, n0, mask);
      } else {
        score_mod.template apply<true>(acc_s, tScS, m0, n0, mask);
      }

      cp_async_wait<0>();
      __syncthreads();  // V[n] visible; every warp done reading sK, so K[n - 1] may overwrite it
      if (n_block > n_block_min) {
        copy_zfill<false>(gmem_tiled_copy, tKgK(_, _, _, n_block - 1), tKsK, tKVcKV, tpD, kBlockN);
        cp_async_fence();
      }

      softmax.update(acc_s, acc_o);

      // P (fp32 accumulator) -> 16-bit A operand of O += P V, without leaving registers.
      Tensor rP = convert_fragment<Element>(acc_s);
      Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));
      gemm_rs(acc_o, tOrP, tOrVt, tOsVt, tiled_mma, smem_tiled_copy_v, smem_thr_copy_v);
    }
  }
};

}  // namespace flashattn::sm80
