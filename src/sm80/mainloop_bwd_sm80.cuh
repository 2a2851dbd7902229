// The FlashAttention-2 backward main loop of one CTA (one key block of kBlockN keys, one query
// head), SM80 path. K and V stay in shared memory, dK and dV in registers, for the whole loop.
//
// Per query block m (only the blocks whose rows can see a key of this block):
//   wait Q[m], dO[m]; barrier
//   S  = Q K^T,  dP = dO V^T                         (ldmatrix + mma.sync from smem)
//   P  = exp2(s2 - lse2)   (score mods, mask on boundary tiles; the saved LSE replaces the
//                           online softmax: P is recomputed exactly, no running max)
//   dS = P * (dP - D)  [* (1 - tanh^2) with softcap]
//   P, dS -> smem (16-bit); barrier
//   dV += P^T dO,  dK += dS^T Q                      (transposed smem views, ldmatrix.trans)
//   barrier (every warp done with sQ, sdO)
//   cp.async Q[m+1], dO[m+1]                      || dQ_m = dS K, atomicAdd into dq_accum
// Deterministic mode: the dQ adds of query block m happen in key-block order, serialized by a
// per-(sequence, head, m) counter (see BwdArgsSm80::dq_semaphore). A CTA only waits for CTAs of
// lower blockIdx.x of the same (head, sequence), which the hardware dispatches first, so they are
// running or done and the wait always ends.
// Rows past seqlen_q are zero-filled on load and get lse = +inf, so P = dS = 0 there; keys past
// seqlen_k are zero-filled and masked. Rows with lse = +inf (no visible key in the forward) give
// P = 0 and contribute nothing. softmax_scale is applied once, at the end (dK here, dQ in the
// postprocess), so dS is the gradient with respect to scale * q.k.
#pragma once

#include <cute/tensor.hpp>

#include <cmath>

#include "common/mask.h"
#include "common/seqlen.h"
#include "sm80/bwd_args_sm80.h"
#include "sm80/utils_sm80.cuh"

namespace flashattn::sm80 {

using namespace cute;

// Where a backward CTA sits: key block, query head, sequence.
struct BwdBlockCoordSm80 {
  int n_block = 0;
  int bidh = 0;
  int bidb = 0;
};

// Offsets of the per-row fp32 vectors (LSE, D) of (sequence, head): dense [b, h, s_q],
// varlen [h, total_q].
__forceinline__ __device__ int64_t row_stats_offset(BwdParams const& p, SeqlenInfo const& seq,
                                                    int bidb, int bidh) {
  return p.cu_seqlens_q != nullptr ? int64_t(bidh) * p.total_q + seq.q_row0
                                   : (int64_t(bidb) * p.h + bidh) * p.seqlen_q;
}

// First row of sequence bidb in the [rows, h, d_accum] fp32 buffers (q-like and k-like).
__forceinline__ __device__ int64_t accum_row0_q(BwdParams const& p, SeqlenInfo const& seq, int bidb) {
  return p.cu_seqlens_q != nullptr ? seq.q_row0 : int64_t(bidb) * p.seqlen_q;
}
__forceinline__ __device__ int64_t accum_row0_k(BwdParams const& p, SeqlenInfo const& seq, int bidb) {
  return p.cu_seqlens_q != nullptr ? seq.k_row0 : int64_t(bidb) * p.seqlen_k;
}

// The query rows that see at least one key of [n_begin, n_end): [*m_begin, *m_end). Inverts
// VisibilityMask: row i sees key j iff col_begin(i) <= j < col_end(i), and both limits grow with i.
__forceinline__ __device__ void query_range(VisibilityMask const& mask, int n_begin, int n_end,
                                            int* m_begin, int* m_end) {
  int lo = 0, hi = mask.seqlen_q;
  // col_end(i) > n_begin  <=>  i + off + right + 1 > n_begin
  if (mask.window_right >= 0) lo = max(lo, n_begin - mask.offset() - mask.window_right);
  // col_begin(i) < n_end  <=>  i + off - left < n_end
  if (mask.window_left >= 0) hi = min(hi, n_end - mask.offset() + mask.window_left);
  *m_begin = lo;
  *m_end = hi;
}

template <class Traits, bool kHasSoftcap, bool kHasAlibi>
struct MainloopBwdSm80 {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  using TiledMmaSdP = typename Traits::TiledMmaSdP;
  using TiledMmadKV = typename Traits::TiledMmadKV;
  using TiledMmadQ = typename Traits::TiledMmadQ;

  struct SharedStorage {
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutQdO>, 128> smem_q;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutQdO>, 128> smem_do;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutKV>, 128> smem_k;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutKV>, 128> smem_v;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutPdS>, 128> smem_p;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutPdS>, 128> smem_ds;
  };

  // Runs the query blocks [m_block_min, m_block_max) into acc_dk, acc_dv (unscaled sums).
  template <class TensordK, class TensordV>
  __forceinline__ __device__ void run(BwdArgsSm80 const& args, SharedStorage& storage,
                                      SeqlenInfo const& seq, BwdBlockCoordSm80 const& blk,
                                      VisibilityMask const& mask, int m_block_min,
                                      int m_block_max, TensordK& acc_dk, TensordV& acc_dv) const {
    const BwdParams& p = args.p;
    const int tid = threadIdx.x;
    const bool varlen = p.cu_seqlens_q != nullptr;
    const int bidh_kv = blk.bidh / args.h_h_k_ratio;
    const int n0 = blk.n_block * kBlockN;

    // Global memory: this head's Q and dO as query blocks, this CTA's K and V tiles.
    const Element* q_base = static_cast<const Element*>(p.q_ptr) +
        seq.q_offset(p.q_batch_stride, p.q_row_stride, p.q_head_stride, blk.bidb, 0, blk.bidh, varlen);
    const Element* do_base = static_cast<const Element*>(p.do_ptr) +
        seq.q_offset(p.do_batch_stride, p.do_row_stride, p.do_head_stride, blk.bidb, 0, blk.bidh, varlen);
    const Element* k_base = static_cast<const Element*>(p.k_ptr) +
        seq.k_offset(p.k_batch_stride, p.k_row_stride, p.k_head_stride, blk.bidb, n0, bidh_kv, varlen);
    const Element* v_base = static_cast<const Element*>(p.v_ptr) +
        seq.k_offset(p.v_batch_stride, p.v_row_stride, p.v_head_stride, blk.bidb, n0, bidh_kv, varlen);
    Tensor mQ = make_tensor(make_gmem_ptr(q_base), make_shape(m_block_max * kBlockM, Int<kHeadDim>{}),
                            make_stride(p.q_row_stride, _1{}));
    Tensor mdO = make_tensor(make_gmem_ptr(do_base), make_shape(m_block_max * kBlockM, Int<kHeadDim>{}),
                             make_stride(p.do_row_stride, _1{}));
    Tensor gQ = local_tile(mQ, Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(_, 0));    // (kBlockM, kHeadDim, m)
    Tensor gdO = local_tile(mdO, Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(_, 0));  // (kBlockM, kHeadDim, m)
    Tensor gK = make_tensor(make_gmem_ptr(k_base), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                            make_stride(p.k_row_stride, _1{}));                        // (kBlockN, kHeadDim)
    Tensor gV = make_tensor(make_gmem_ptr(v_base), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                            make_stride(p.v_row_stride, _1{}));                        // (kBlockN, kHeadDim)
    const float* lse_base = p.softmax_lse_ptr + row_stats_offset(p, seq, blk.bidb, blk.bidh);
    const float* dsum_base = args.dsum + row_stats_offset(p, seq, blk.bidb, blk.bidh);
    const int64_t dq_row_stride = int64_t(p.h) * args.d_accum;
    float* dq_accum_base = args.dq_accum + accum_row0_q(p, seq, blk.bidb) * dq_row_stride +
                           int64_t(blk.bidh) * args.d_accum;

    Tensor sQ = make_tensor(make_smem_ptr(storage.smem_q.data()), typename Traits::SmemLayoutQdO{});
    Tensor sQt = make_tensor(make_smem_ptr(storage.smem_q.data()), typename Traits::SmemLayoutQdOt{});
    Tensor sdO = make_tensor(make_smem_ptr(storage.smem_do.data()), typename Traits::SmemLayoutQdO{});
    Tensor sdOt = make_tensor(make_smem_ptr(storage.smem_do.data()), typename Traits::SmemLayoutQdOt{});
    Tensor sK = make_tensor(make_smem_ptr(storage.smem_k.data()), typename Traits::SmemLayoutKV{});
    Tensor sKt = make_tensor(make_smem_ptr(storage.smem_k.data()), typename Traits::SmemLayoutKt{});
    Tensor sV = make_tensor(make_smem_ptr(storage.smem_v.data()), typename Traits::SmemLayoutKV{});
    Tensor sP = make_tensor(make_smem_ptr(storage.smem_p.data()), typename Traits::SmemLayoutPdS{});
    Tensor sPt = make_tensor(make_smem_ptr(storage.smem_p.data()), typename Traits::SmemLayoutPdSt{});
    Tensor sdS = make_tensor(make_smem_ptr(storage.smem_ds.data()), typename Traits::SmemLayoutPdS{});
    Tensor sdSt = make_tensor(make_smem_ptr(storage.smem_ds.data()), typename Traits::SmemLayoutPdSt{});

    // gmem -> smem copies with the row / head-dim predicates.
    typename Traits::GmemTiledCopy gmem_tiled_copy;
    auto gmem_thr_copy = gmem_tiled_copy.get_thread_slice(tid);
    Tensor tQgQ = gmem_thr_copy.partition_S(gQ);     // (CPY, CPY_M, CPY_K, m)
    Tensor tQsQ = gmem_thr_copy.partition_D(sQ);
    Tensor tdOgdO = gmem_thr_copy.partition_S(gdO);  // (CPY, CPY_M, CPY_K, m)
    Tensor tdOsdO = gmem_thr_copy.partition_D(sdO);
    Tensor tKgK = gmem_thr_copy.partition_S(gK);     // (CPY, CPY_N, CPY_K)
    Tensor tKsK = gmem_thr_copy.partition_D(sK);
    Tensor tVgV = gmem_thr_copy.partition_S(gV);
    Tensor tVsV = gmem_thr_copy.partition_D(sV);
    Tensor tQcQ = gmem_thr_copy.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    Tensor tKcK = gmem_thr_copy.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
    Tensor tpD = make_tensor<bool>(make_shape(size<2>(tKsK)));
    CUTE_UNROLL
    for (int k = 0; k < size(tpD); ++k) tpD(k) = get<1>(tKcK(0, 0, k)) < p.d;

    // S / dP gemms.
    TiledMmaSdP tiled_mma_sdp;
    auto thr_mma_sdp = tiled_mma_sdp.get_thread_slice(tid);
    Tensor tSrQ = thr_mma_sdp.partition_fragment_A(sQ);     // (MMA, MMA_M, MMA_K)
    Tensor tSrK = thr_mma_sdp.partition_fragment_B(sK);     // (MMA, MMA_N, MMA_K)
    Tensor tdPrdO = thr_mma_sdp.partition_fragment_A(sdO);  // (MMA, MMA_M, MMA_K)
    Tensor tdPrV = thr_mma_sdp.partition_fragment_B(sV);    // (MMA, MMA_N, MMA_K)
    auto smem_tiled_copy_a_sdp = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma_sdp);
    auto smem_thr_copy_a_sdp = smem_tiled_copy_a_sdp.get_thread_slice(tid);
    auto smem_tiled_copy_b_sdp = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma_sdp);
    auto smem_thr_copy_b_sdp = smem_tiled_copy_b_sdp.get_thread_slice(tid);
    Tensor tSsQ = smem_thr_copy_a_sdp.partition_S(sQ);
    Tensor tdPsdO = smem_thr_copy_a_sdp.partition_S(sdO);
    Tensor tSsK = smem_thr_copy_b_sdp.partition_S(sK);
    Tensor tdPsV = smem_thr_copy_b_sdp.partition_S(sV);
    // P and dS registers -> smem.
    auto smem_tiled_copy_pds = make_tiled_copy_C(typename Traits::SmemCopyAtomPdS{}, tiled_mma_sdp);
    auto smem_thr_copy_pds = smem_tiled_copy_pds.get_thread_slice(tid);
    Tensor tPsP = smem_thr_copy_pds.partition_D(sP);
    Tensor tdSsdS = smem_thr_copy_pds.partition_D(sdS);
    // (row, key) of every S / dP accumulator element.
    Tensor tScS = thr_mma_sdp.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));

    // dK / dV gemms: A = P^T or dS^T, B = dO^T or Q^T, all through ldmatrix.trans.
    TiledMmadKV tiled_mma_dkv;
    auto thr_mma_dkv = tiled_mma_dkv.get_thread_slice(tid);
    Tensor tdVrPt = thr_mma_dkv.partition_fragment_A(sPt);    // (MMA, MMA_N, MMA_K=M)
    Tensor tdVrdOt = thr_mma_dkv.partition_fragment_B(sdOt);  // (MMA, MMA_D, MMA_K=M)
    Tensor tdKrdSt = thr_mma_dkv.partition_fragment_A(sdSt);
    Tensor tdKrQt = thr_mma_dkv.partition_fragment_B(sQt);
    auto smem_tiled_copy_a_dkv = make_tiled_copy_A(typename Traits::SmemCopyAtomTransposed{}, tiled_mma_dkv);
    auto smem_thr_copy_a_dkv = smem_tiled_copy_a_dkv.get_thread_slice(tid);
    auto smem_tiled_copy_b_dkv = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma_dkv);
    auto smem_thr_copy_b_dkv = smem_tiled_copy_b_dkv.get_thread_slice(tid);
    Tensor tdVsPt = smem_thr_copy_a_dkv.partition_S(sPt);
    Tensor tdKsdSt = smem_thr_copy_a_dkv.partition_S(sdSt);
    Tensor tdVsdOt = smem_thr_copy_b_dkv.partition_S(sdOt);
    Tensor tdKsQt = smem_thr_copy_b_dkv.partition_S(sQt);

    // dQ gemm: A = dS (ldmatrix), B = K^T (ldmatrix.trans).
    TiledMmadQ tiled_mma_dq;
    auto thr_mma_dq = tiled_mma_dq.get_thread_slice(tid);
    Tensor tdQrdS = thr_mma_dq.partition_fragment_A(sdS);  // (MMA, MMA_M, MMA_K=N)
    Tensor tdQrKt = thr_mma_dq.partition_fragment_B(sKt);  // (MMA, MMA_D, MMA_K=N)
    auto smem_tiled_copy_a_dq = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma_dq);
    auto smem_thr_copy_a_dq = smem_tiled_copy_a_dq.get_thread_slice(tid);
    auto smem_tiled_copy_b_dq = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma_dq);
    auto smem_thr_copy_b_dq = smem_tiled_copy_b_dq.get_thread_slice(tid);
    Tensor tdQsdS = smem_thr_copy_a_dq.partition_S(sdS);
    Tensor tdQsKt = smem_thr_copy_b_dq.partition_S(sKt);
    Tensor tdQcdQ = thr_mma_dq.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));

    float alibi_coef = 0.f;
    if constexpr (kHasAlibi) {
      alibi_coef = -p.alibi_slopes[blk.bidb * p.alibi_slopes_batch_stride + blk.bidh] * float(M_LOG2E);
    }
    const int offset = seq.seqlen_k - seq.seqlen_q;

    // Prologue: K, V (the CTA's whole life) and the first Q, dO.
    copy_zfill<true>(gmem_tiled_copy, tKgK, tKsK, tKcK, tpD, seq.seqlen_k - n0);
    copy_zfill<true>(gmem_tiled_copy, tVgV, tVsV, tKcK, tpD, seq.seqlen_k - n0);
    copy_zfill<true>(gmem_tiled_copy, tQgQ(_, _, _, m_block_min), tQsQ, tQcQ, tpD,
                     seq.seqlen_q - m_block_min * kBlockM);
    copy_zfill<true>(gmem_tiled_copy, tdOgdO(_, _, _, m_block_min), tdOsdO, tQcQ, tpD,
                     seq.seqlen_q - m_block_min * kBlockM);
    cp_async_fence();

    CUTE_NO_UNROLL
    for (int m_block = m_block_min; m_block < m_block_max; ++m_block) {
      const int m0 = m_block * kBlockM;
      Tensor acc_s = partition_fragment_C(tiled_mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});   // (MMA, MMA_M, MMA_N)
      Tensor acc_dp = partition_fragment_C(tiled_mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});  // (MMA, MMA_M, MMA_N)
      Tensor s = make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout()));     // (rows, keys)
      Tensor dp = make_tensor(acc_dp.data(), acc_layout_rowcol(acc_dp.layout()));  // (rows, keys)
      Tensor c = make_tensor(tScS.data(), acc_layout_rowcol(tScS.layout()));
      constexpr int kNRows = decltype(size<0>(s))::value;

      // The LSE (log2 units) and D of this thread's rows; rows past the end get lse = +inf.
      float lse2[kNRows], dsum[kNRows];
      CUTE_UNROLL
      for (int mi = 0; mi < kNRows; ++mi) {
        const int row = m0 + get<0>(c(mi, 0));
        const bool ok = row < seq.seqlen_q;
        lse2[mi] = ok ? lse_base[row] * float(M_LOG2E) : INFINITY;
        dsum[mi] = ok ? dsum_base[row] : 0.f;
      }

      clear(acc_s);
      clear(acc_dp);
      cp_async_wait<0>();
      __syncthreads();  // Q[m], dO[m] (and K, V) visible to every warp
      gemm_ss(acc_s, tSrQ, tSrK, tSsQ, tSsK, tiled_mma_sdp, smem_tiled_copy_a_sdp,
              smem_tiled_copy_b_sdp, smem_thr_copy_a_sdp, smem_thr_copy_b_sdp);
      gemm_ss(acc_dp, tdPrdO, tdPrV, tdPsdO, tdPsV, tiled_mma_sdp, smem_tiled_copy_a_sdp,
              smem_tiled_copy_b_sdp, smem_thr_copy_a_sdp, smem_thr_copy_b_sdp);

      // S -> P and dP -> dS, element by element. Uniform branch: interior tiles skip the mask.
      const int m_end = min(m0 + kBlockM, seq.seqlen_q);
      if (mask.tile_fully_visible(m0, m_end, n0, n0 + kBlockN)) {
        scores_to_grads<false>(s, dp, c, m0, n0, mask, offset, alibi_coef, lse2, dsum, args);
      } else {
        scores_to_grads<true>(s, dp, c, m0, n0, mask, offset, alibi_coef, lse2, dsum, args);
      }

      Tensor rP = convert_fragment<Element>(acc_s);
      Tensor rdS = convert_fragment<Element>(acc_dp);
      copy(smem_tiled_copy_pds, smem_thr_copy_pds.retile_S(rP), tPsP);
      copy(smem_tiled_copy_pds, smem_thr_copy_pds.retile_S(rdS), tdSsdS);
      __syncthreads();  // P, dS visible to every warp

      gemm_ss(acc_dv, tdVrPt, tdVrdOt, tdVsPt, tdVsdOt, tiled_mma_dkv, smem_tiled_copy_a_dkv,
              smem_tiled_copy_b_dkv, smem_thr_copy_a_dkv, smem_thr_copy_b_dkv);
      gemm_ss(acc_dk, tdKrdSt, tdKrQt, tdKsdSt, tdKsQt, tiled_mma_dkv, smem_tiled_copy_a_dkv,
              smem_tiled_copy_b_dkv, smem_thr_copy_a_dkv, smem_thr_copy_b_dkv);
      __syncthreads();  // every warp done with sQ, sdO: the next block may overwrite them

      if (m_block + 1 < m_block_max) {
        const int rows_left = seq.seqlen_q - (m0 + kBlockM);
        copy_zfill<true>(gmem_tiled_copy, tQgQ(_, _, _, m_block + 1), tQsQ, tQcQ, tpD, rows_left);
        copy_zfill<true>(gmem_tiled_copy, tdOgdO(_, _, _, m_block + 1), tdOsdO, tQcQ, tpD, rows_left);
        cp_async_fence();
      }

      // dQ_m = dS K (unscaled), added into the fp32 accumulator; rows past the end are dropped.
      // (sdS is next overwritten only after the barrier at the top of the next iteration.)
      Tensor acc_dq = partition_fragment_C(tiled_mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});  // (MMA, MMA_M, MMA_D)
      clear(acc_dq);
      gemm_ss(acc_dq, tdQrdS, tdQrKt, tdQsdS, tdQsKt, tiled_mma_dq, smem_tiled_copy_a_dq,
              smem_tiled_copy_b_dq, smem_thr_copy_a_dq, smem_thr_copy_b_dq);
      float* dq_block = dq_accum_base + int64_t(m0) * dq_row_stride;
      const int rows_here = seq.seqlen_q - m0;
      int* semaphore = nullptr;
      if (args.dq_semaphore != nullptr) {
        // Deterministic: wait until the key blocks before this one (of those that see query
        // block m: [key_range begin / kBlockN, n_block)) have added theirs.
        semaphore = args.dq_semaphore + (int64_t(blk.bidb) * p.h + blk.bidh) * args.num_m_blocks + m_block;
        int n_lo = 0, n_hi = 0;
        mask.key_range(m0, m_end, &n_lo, &n_hi);
        const int turn = blk.n_block - n_lo / kBlockN;
        if (tid == 0) {
          while (atomicAdd(semaphore, 0) != turn) __nanosleep(64);
          __threadfence();
        }
        __syncthreads();
      }
      CUTE_UNROLL
      for (int i = 0; i < size(acc_dq); ++i) {
        const int r = get<0>(tdQcdQ(i));
        if (r < rows_here) atomicAdd(dq_block + int64_t(r) * dq_row_stride + get<1>(tdQcdQ(i)), acc_dq(i));
      }
      if (semaphore != nullptr) {
        __threadfence();
        __syncthreads();  // every thread's adds are visible before the next key block's turn
        if (tid == 0) atomicAdd(semaphore, 1);
      }
    }
  }

  // s: S (in), P (out); dp: dP (in), dS (out); both (rows, keys) views. See the file comment.
  template <bool kMasked, class TensorS, class TensorC, int kNRows>
  __forceinline__ __device__ static void scores_to_grads(TensorS& s, TensorS& dp, TensorC const& c,
                                                         int m0, int n0, VisibilityMask const& mask,
                                                         int offset, float alibi_coef,
                                                         float const (&lse2)[kNRows],
                                                         float const (&dsum)[kNRows],
                                                         BwdArgsSm80 const& args) {
    // Coordinates as this thread's first element plus compile-time offsets (see mask_sm80.cuh).
    const int row0 = m0 + get<0>(c(0, 0));
    const int col0 = n0 + get<1>(c(0, 0));
    CUTE_UNROLL
    for (int mi = 0; mi < size<0>(s); ++mi) {
      const int row = row0 + (get<0>(c(mi, 0)) - get<0>(c(0, 0)));
      int lo = 0, hi = 0;  // visible iff lo <= (col - col0) < hi
      if constexpr (kMasked) {
        lo = mask.col_begin(row) - col0;
        hi = mask.col_end(row) - col0;
      }
      const float dist0 = float(row + offset - col0);
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(s); ++ni) {
        const int dc = get<1>(c(mi, ni)) - get<1>(c(0, 0));  // compile-time
        float s2, dscore = 1.f;
        if constexpr (kHasSoftcap) {
          const float t = tanhf(s(mi, ni) * args.softcap_prescale);
          dscore = 1.f - t * t;
          s2 = t * args.cap_log2;
        } else {
          s2 = s(mi, ni) * args.scale_log2;
        }
        if constexpr (kHasAlibi) s2 += alibi_coef * fabsf(dist0 - float(dc));
        if constexpr (kMasked) {
          if (dc < lo || dc >= hi) s2 = -INFINITY;
        }
        const float pr = exp2f(s2 - lse2[mi]);
        float ds = pr * (dp(mi, ni) - dsum[mi]);
        if constexpr (kHasSoftcap) ds *= dscore;
        s(mi, ni) = pr;
        dp(mi, ni) = ds;
      }
    }
  }
};

}  // namespace flashattn::sm80
