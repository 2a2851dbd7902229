// The FlashAttention-2 main loop of one CTA (kBlockM query rows of one head), SM80 path.
//
// Key blocks are walked from the last visible one down to the first, so the only partial block
// (the seqlen_k residue, n = n_max - 1) and the causal diagonal come first and every later K/V
// load is a full tile. Two schedules ("||" = in flight at the same time):
//
// kStages = 2 (K and V double-buffered, one barrier per block):
//   prologue:  cp.async Q, K[n_max - 1], V[n_max - 1]
//   for n = n_max - 1 down to n_min:
//     wait K[n], V[n]; barrier         (landed; every warp is done with block n + 1's stage)
//     cp.async K[n - 1], V[n - 1]    || S = Q K[n]^T; score mods / mask; softmax; O += P V[n]
//
// kStages = 1 (FlashAttention-2's schedule, one K and one V buffer, two barriers per block):
//   prologue:  cp.async Q, K[n_max - 1]
//   for n = n_max - 1 down to n_min:
//     wait K[n]; barrier               (K[n] landed; every warp done with the last P V)
//     cp.async V[n]                  || S = Q K[n]^T; score mods / mask
//     wait V[n]; barrier               (V[n] landed; every warp done reading sK)
//     cp.async K[n - 1]              || softmax; O += P V[n]
//
// Tiles that hold invisible (row, key) pairs (causal diagonal, window edges, the residue) run
// the per-element mask; the fully visible ones run in their own loop without any mask code.
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
  static constexpr int kStages = Traits::kStages;
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
    Tensor sK = make_tensor(make_smem_ptr(storage.smem_k.data()), typename Traits::SmemLayoutKV{});  // (kBlockN, kHeadDim, stage)
    Tensor sV = make_tensor(make_smem_ptr(storage.smem_v.data()), typename Traits::SmemLayoutKV{});
    Tensor sVt = make_tensor(make_smem_ptr(storage.smem_v.data()), typename Traits::SmemLayoutVt{});  // (kHeadDim, kBlockN, stage)

    // gmem -> smem copies, with coordinates for the row / head-dim predicates.
    typename Traits::GmemTiledCopyQKV gmem_tiled_copy;
    auto gmem_thr_copy = gmem_tiled_copy.get_thread_slice(tid);
    Tensor tQgQ = gmem_thr_copy.partition_S(gQ);  // (CPY, CPY_M, CPY_K)
    Tensor tQsQ = gmem_thr_copy.partition_D(sQ);
    Tensor tKgK = gmem_thr_copy.partition_S(gK);  // (CPY, CPY_N, CPY_K, n)
    Tensor tKsK = gmem_thr_copy.partition_D(sK);  // (CPY, CPY_N, CPY_K, stage)
    Tensor tVgV = gmem_thr_copy.partition_S(gV);
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
    Tensor tSrQ = thr_mma.partition_fragment_A(sQ);               // (MMA, MMA_M, MMA_K)
    Tensor tSrK = thr_mma.partition_fragment_B(sK(_, _, 0));      // (MMA, MMA_N, MMA_K)
    Tensor tOrVt = thr_mma.partition_fragment_B(sVt(_, _, 0));    // (MMA, MMA_K=d, MMA_N=keys)

    auto smem_tiled_copy_q = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);
    auto smem_thr_copy_q = smem_tiled_copy_q.get_thread_slice(tid);
    Tensor tSsQ = smem_thr_copy_q.partition_S(sQ);
    auto smem_tiled_copy_k = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);
    auto smem_thr_copy_k = smem_tiled_copy_k.get_thread_slice(tid);
    Tensor tSsK = smem_thr_copy_k.partition_S(sK);  // (CPY, CPY_N, CPY_K, stage)
    auto smem_tiled_copy_v = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma);
    auto smem_thr_copy_v = smem_tiled_copy_v.get_thread_slice(tid);
    Tensor tOsVt = smem_thr_copy_v.partition_S(sVt);  // (CPY, CPY_N, CPY_K, stage)

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

    // Prologue: Q and the last key block (V too when double-buffered), the only block that can
    // be partial: rows past seqlen_k are zero-filled, never left stale (0 * NaN from poisoned
    // memory must not reach P V).
    int n_block = n_block_max - 1;
    const int rows_last = seq.seqlen_k - n_block * kBlockN;
    constexpr int kLastStage = 0;  // stage of block n_max - 1 (stages are relative to it)
    copy_zfill<true>(gmem_tiled_copy, tQgQ, tQsQ, tQcQ, tpD, seq.seqlen_q - m0);
    copy_zfill<true>(gmem_tiled_copy, tKgK(_, _, _, n_block), tKsK(_, _, _, kLastStage), tKVcKV,
                     tpD, rows_last);
    if constexpr (kStages == 2) {
      copy_zfill<true>(gmem_tiled_copy, tVgV(_, _, _, n_block), tVsV(_, _, _, kLastStage), tKVcKV,
                       tpD, rows_last);
    }
    cp_async_fence();

    // S -> P -> O += P V for one key block whose K and V sit in `stage`.
    auto softmax_pv = [&](auto& acc_s, int stage, auto masked) {
      // Every row of an unmasked tile sees kBlockN finite scores, so its max is finite.
      const bool rescale = softmax.template update</*kCheckInf=*/decltype(masked)::value>(acc_s);
      // P (fp32 accumulator) -> 16-bit A operand of O += P V, without leaving registers.
      Tensor rP = convert_fragment<Element>(acc_s);
      Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));
      if constexpr (Traits::kSkipRescale) {
        softmax.rescale_o_if(rescale, acc_o);
      } else {
        softmax.rescale_o(acc_o);
      }
      gemm_rs(acc_o, tOrP, tOrVt, tOsVt(_, _, _, stage), tiled_mma, smem_tiled_copy_v,
              smem_thr_copy_v);
    };

    // One key block. kMasked: the tile holds invisible (row, key) pairs; only then is the
    // per-element mask evaluated.
    auto step = [&](int n_block, auto masked) {
      constexpr bool kMasked = decltype(masked)::value;
      const int n0 = n_block * kBlockN;
      // Block n_max - 1 is in stage 0, n_max - 2 in stage 1, ...
      const int stage = kStages == 2 ? (n_block_max - 1 - n_block) & 1 : 0;
      Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});  // (MMA, MMA_M, MMA_N)
      clear(acc_s);

      cp_async_wait<0>();
      if constexpr (kStages == 2) {
        // K[n], V[n] visible to every warp; every warp is done with block n + 1 (its Q K^T and
        // P V), so that stage may take block n - 1, which then has a whole block to land.
        __syncthreads();
        if (n_block > n_block_min) {
          copy_zfill<false>(gmem_tiled_copy, tKgK(_, _, _, n_block - 1), tKsK(_, _, _, stage ^ 1),
                            tKVcKV, tpD, kBlockN);
          copy_zfill<false>(gmem_tiled_copy, tVgV(_, _, _, n_block - 1), tVsV(_, _, _, stage ^ 1),
                            tKVcKV, tpD, kBlockN);
          cp_async_fence();
        }
        gemm_ss(acc_s, tSrQ, tSrK, tSsQ, tSsK(_, _, _, stage), tiled_mma, smem_tiled_copy_q,
                smem_tiled_copy_k, smem_thr_copy_q, smem_thr_copy_k);
        score_mod.template apply<kMasked>(acc_s, tScS, m0, n0, mask);
        softmax_pv(acc_s, stage, masked);
      } else {
        __syncthreads();  // K[n] visible to every warp; every warp done with the last P V (sV free)
        // A partial block (the seqlen_k residue) is always a masked one: col_end <= seqlen_k.
        copy_zfill<kMasked>(gmem_tiled_copy, tVgV(_, _, _, n_block), tVsV(_, _, _, 0), tKVcKV, tpD,
                            kMasked ? seq.seqlen_k - n0 : kBlockN);
        cp_async_fence();
        gemm_ss(acc_s, tSrQ, tSrK, tSsQ, tSsK(_, _, _, 0), tiled_mma, smem_tiled_copy_q,
                smem_tiled_copy_k, smem_thr_copy_q, smem_thr_copy_k);
        score_mod.template apply<kMasked>(acc_s, tScS, m0, n0, mask);
        cp_async_wait<0>();
        __syncthreads();  // V[n] visible; every warp done reading sK, so K[n - 1] may overwrite it
        if (n_block > n_block_min) {
          copy_zfill<false>(gmem_tiled_copy, tKgK(_, _, _, n_block - 1), tKsK(_, _, _, 0), tKVcKV,
                            tpD, kBlockN);
          cp_async_fence();
        }
        softmax_pv(acc_s, 0, masked);
      }
    };

    // Key blocks [n_full_min, n_full_max) are fully visible to every valid row: the top row m0
    // sees up to col_end(m0) and the bottom row m_end - 1 from col_begin(m_end - 1) (both limits
    // grow with the row). They run in their own loop, so the hot loop holds no mask code at all:
    // with one loop and a uniform branch per tile, ptxas if-converted the ~200 mask instructions
    // into predicated ones that were issued on every tile (measured d = 128, s = 16k: 307 ->
    // 349 TFLOP/s from this split alone) and kept the per-row mask values live across the loop.
    const int n_full_max = mask.col_end(m0) / kBlockN;
    const int n_full_min = max((mask.col_begin(m_end - 1) + kBlockN - 1) / kBlockN, n_block_min);
    CUTE_NO_UNROLL
    while (n_block >= n_block_min) {
      if (n_block < n_full_max && n_block >= n_full_min) {
        CUTE_NO_UNROLL
        for (; n_block >= n_full_min; --n_block) step(n_block, cute::false_type{});
      } else {
        step(n_block, cute::true_type{});
        --n_block;
      }
    }
  }
};

}  // namespace flashattn::sm80
