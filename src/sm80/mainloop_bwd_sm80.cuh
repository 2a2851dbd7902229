// The FlashAttention-2 backward main loop of one CTA (one key block of kBlockN keys, one query
// head), SM80 path. K and V stay in shared memory, dK and dV in registers, for the whole loop.
//
// Query blocks m (only those whose rows can see a key of this block) are walked from the last
// down to the first, so that in deterministic mode every CTA of a (sequence, head) reaches a
// given block m at about the same step (see below). Per block, with two Q and two dO buffers
// ("||" = in flight at the same time):
//   wait Q[m], dO[m]; barrier              (landed; every warp is done with step m + 1, so
//                                           its Q / dO stage, sP and sdS are free)
//   cp.async Q[m-1], dO[m-1] (other stage) || the rest of this step
//   S  = Q K^T,  dP = dO V^T                          (ldmatrix + mma.sync from smem)
//   P  = exp2(s2 - lse2)    (score mods, mask on boundary tiles only; the saved LSE replaces
//                            the online softmax: P is recomputed exactly, no running max)
//   dS = P (dP Z / (1 - p) - D)  [* (1 - tanh^2) with softcap; Z the dropout keep mask]
//   P Z, dS -> smem (16-bit); barrier
//   dV += (P Z)^T dO,  dQ_m = dS K -> red.add into dq_accum,  dK += dS^T Q
// The dQ atomics are fire-and-forget: issued between two gemms they drain behind dK's.
// Two Q buffers and one dO buffer (FlashAttention-2's d = 256 layout): dO is dead after the dV
// gemm, so the step goes dV, barrier, cp.async dO[m-1] || dQ_m, its atomics, dK; Q[m-1] loads
// at the top as above.
// One buffer each: the next Q / dO can only be loaded once every warp is done with dK's read of
// sQ, so the step ends dV, dK, barrier, cp.async Q[m-1], dO[m-1] || dQ_m and its atomics.
//
// Deterministic mode: the dQ adds of query block m happen in key-block order, serialized by a
// per-(sequence, head, m) counter (see BwdArgsSm80::dq_semaphore). A CTA only waits for CTAs of
// lower blockIdx.x of the same (head, sequence), which the hardware dispatches first, so they are
// running or done and the wait always ends. Walking m downwards keeps the wait short: the last
// query block a key block sees only grows with the key block (causal: it is the last block for
// all), so CTA n - 1 reaches block m no later than CTA n. (Walking upwards, causal CTA n started
// 2 blocks later than CTA n - 1 at the same step and waited for it at every step: measured at
// d = 128, s = 16k, 136 vs 309 TFLOP/s of the default mode.)
// Rows past seqlen_q are zero-filled on load and get lse = +inf, so P = dS = 0 there (their dQ
// rows are exact zeros, added into the padding of the last dq_accum tile); keys past seqlen_k are
// zero-filled and masked. Rows with lse = +inf (no visible key in the forward) give P = 0 and
// contribute nothing; with attention sinks such a row's lse is the sink (finite), and P = 0
// comes from the mask: every tile holding the row has an invisible pair, so it runs the mask. softmax_scale is applied once, at the end (dK here, dQ in the
// postprocess), and so is dropout's 1 / (1 - p) on dV, so dS is the gradient with respect to
// scale * q.k.
// Tiles that hold invisible (row, key) pairs run the per-element mask; the fully visible ones
// run in their own loop with no mask code (as in the forward: one loop with a uniform branch
// let ptxas if-convert the mask into predicated instructions issued on every tile).
#pragma once

#include <cute/tensor.hpp>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/mask.h"
#include "common/philox.h"
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

// First row of sequence bidb in the k-like [rows, h, d_accum] fp32 buffers (GQA dK / dV).
__forceinline__ __device__ int64_t accum_row0_k(BwdParams const& p, SeqlenInfo const& seq, int bidb) {
  return p.cu_seqlens_q != nullptr ? seq.k_row0 : int64_t(bidb) * p.seqlen_k;
}

// Index of the dq_accum tile of (sequence bidb, head bidh, query block 0); see BwdWorkspaceSm80.
template <int kBlockM>
__forceinline__ __device__ int64_t dq_tile0(BwdArgsSm80 const& args, SeqlenInfo const& seq,
                                            int bidb, int bidh) {
  const int64_t first = args.p.cu_seqlens_q != nullptr
      ? seq.q_row0 / kBlockM + bidb
      : int64_t(bidb) * args.num_m_blocks;
  return int64_t(bidh) * args.dq_tiles_per_head + first;
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

// The query blocks [*m_full_begin, *m_full_end) whose tile with keys [n0, n0 + kBlockN) is fully
// visible (VisibilityMask::tile_fully_visible with m_end clamped to seqlen_q), in closed form:
//   n0 + kBlockN <= col_end(m0)       <=>  n0 + kBlockN <= s_k and m0 >= n0 + kBlockN - off - right - 1
//   n0 >= col_begin(last row of m)    <=>  last row <= n0 - off + left
// Both limits grow with the row, so the set is one range (possibly empty).
template <int kBlockM, int kBlockN>
__forceinline__ __device__ void full_query_blocks(VisibilityMask const& mask, int n0,
                                                  int m_block_min, int m_block_max,
                                                  int* m_full_begin, int* m_full_end) {
  int lo = m_block_min, hi = m_block_max;
  if (n0 + kBlockN > mask.seqlen_k) {
    hi = lo;  // the key residue block: always masked
  } else {
    if (mask.window_right >= 0) {
      const int i_min = n0 + kBlockN - mask.offset() - mask.window_right - 1;
      if (i_min > 0) lo = max(lo, (i_min + kBlockM - 1) / kBlockM);
    }
    if (mask.window_left >= 0) {
      const int i_max = n0 - mask.offset() + mask.window_left;  // last row allowed
      if (mask.seqlen_q - 1 > i_max) {
        // The last block is excluded (its last row, seqlen_q - 1, is past i_max), and a full
        // block m qualifies iff (m + 1) * kBlockM - 1 <= i_max.
        hi = min(hi, i_max + 1 >= 0 ? (i_max + 1) / kBlockM : 0);
      }
    }
  }
  *m_full_begin = lo;
  *m_full_end = max(lo, hi);
}

template <class Traits, bool kHasSoftcap, bool kHasAlibi, bool kHasDropout>
struct MainloopBwdSm80 {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kNThreads = Traits::kNThreads;
  static constexpr int kStagesQ = Traits::kStagesQ;
  static constexpr int kStagesdO = Traits::kStagesdO;
  static constexpr int kAhead = Traits::kGemmChunksAhead;  // gemm_ss's B look-ahead (0: k-slices)
  using TiledMmaSdP = typename Traits::TiledMmaSdP;
  using TiledMmadKV = typename Traits::TiledMmadKV;
  using TiledMmadQ = typename Traits::TiledMmadQ;
  static constexpr int kQdOElems = int(cute::cosize_v<typename Traits::SmemLayoutQdO>);
  // Dropout keep bits, one per S / dP accumulator register of a thread.
  static constexpr int kAccSdP = kBlockM * kBlockN / kNThreads;
  static_assert(kAccSdP <= 64);
  using KeepBits = std::conditional_t<(kAccSdP <= 32), uint32_t, uint64_t>;

  struct SharedStorage {
    cute::array_aligned<Element, kStagesQ * kQdOElems, 128> smem_q;
    cute::array_aligned<Element, kStagesdO * kQdOElems, 128> smem_do;
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

    // Global memory: this head's Q and dO (block m starts m * kBlockM rows in), this CTA's K, V.
    const Element* q_base = static_cast<const Element*>(p.q_ptr) +
        seq.q_offset(p.q_batch_stride, p.q_row_stride, p.q_head_stride, blk.bidb, 0, blk.bidh, varlen);
    const Element* do_base = static_cast<const Element*>(p.do_ptr) +
        seq.q_offset(p.do_batch_stride, p.do_row_stride, p.do_head_stride, blk.bidb, 0, blk.bidh, varlen);
    const Element* k_base = static_cast<const Element*>(p.k_ptr) +
        seq.k_offset(p.k_batch_stride, p.k_row_stride, p.k_head_stride, blk.bidb, n0, bidh_kv, varlen);
    const Element* v_base = static_cast<const Element*>(p.v_ptr) +
        seq.k_offset(p.v_batch_stride, p.v_row_stride, p.v_head_stride, blk.bidb, n0, bidh_kv, varlen);
    Tensor gK = make_tensor(make_gmem_ptr(k_base), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                            make_stride(p.k_row_stride, _1{}));                        // (kBlockN, kHeadDim)
    Tensor gV = make_tensor(make_gmem_ptr(v_base), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                            make_stride(p.v_row_stride, _1{}));                        // (kBlockN, kHeadDim)
    const float* lse_base = p.softmax_lse_ptr + row_stats_offset(p, seq, blk.bidb, blk.bidh);
    const float* dsum_base = args.dsum + row_stats_offset(p, seq, blk.bidb, blk.bidh);
    float* dq_tiles = args.dq_accum + dq_tile0<kBlockM>(args, seq, blk.bidb, blk.bidh) * Traits::kDqTileElems;

    // Stage 0 of the Q / dO buffers; stage 1 (two buffers) is kQdOElems further.
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
    Tensor tQsQ = gmem_thr_copy.partition_D(sQ);
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
    auto smem_tiled_copy_a_dq = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma_dq);
    auto smem_thr_copy_a_dq = smem_tiled_copy_a_dq.get_thread_slice(tid);
    auto smem_tiled_copy_b_dq = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma_dq);
    auto smem_thr_copy_b_dq = smem_tiled_copy_b_dq.get_thread_slice(tid);
    Tensor tdQsdS = smem_thr_copy_a_dq.partition_S(sdS);

    float alibi_coef = 0.f;
    if constexpr (kHasAlibi) {
      alibi_coef = -p.alibi_slopes[blk.bidb * p.alibi_slopes_batch_stride + blk.bidh] * float(M_LOG2E);
    }
    DropoutRng rng;
    if constexpr (kHasDropout) {
      rng.seed = p.philox_seed;
      rng.offset = p.philox_offset;
      rng.threshold = args.dropout_threshold;
    }
    const uint64_t bh = uint64_t(blk.bidb) * p.h + blk.bidh;  // the Philox (batch, head) index
    const int offset = seq.seqlen_k - seq.seqlen_q;

    // Q / dO of query block m into stage `stage`: rows past seqlen_q zero-filled. Pointers are
    // rebuilt from the base per block (one 64-bit add) instead of kept per copy across the loop.
    auto load_q = [&](int m_block, int stage) __attribute__((always_inline)) {
      const int64_t m0 = int64_t(m_block) * kBlockM;
      Tensor gQ = make_tensor(make_gmem_ptr(q_base + m0 * p.q_row_stride),
                              Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_stride(p.q_row_stride, _1{}));
      copy_zfill<true>(gmem_tiled_copy, gmem_thr_copy.partition_S(gQ),
                       make_tensor(tQsQ.data() + stage * kQdOElems, tQsQ.layout()), tQcQ, tpD,
                       seq.seqlen_q - int(m0));
    };
    auto load_do = [&](int m_block, int stage) __attribute__((always_inline)) {
      const int64_t m0 = int64_t(m_block) * kBlockM;
      Tensor gdO = make_tensor(make_gmem_ptr(do_base + m0 * p.do_row_stride),
                               Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_stride(p.do_row_stride, _1{}));
      copy_zfill<true>(gmem_tiled_copy, gmem_thr_copy.partition_S(gdO),
                       make_tensor(tdOsdO.data() + stage * kQdOElems, tdOsdO.layout()), tQcQ, tpD,
                       seq.seqlen_q - int(m0));
    };

    // The LSE and D of this thread's rows of block m; rows past the end get lse = +inf (P = 0).
    // Loaded one block ahead and consumed (scaled to log2 units) a step later: the loads are
    // predicated into registers that already hold the defaults, so no instruction of this step
    // waits for them. (Scaling or selecting right after the load would put an instruction that
    // waits the whole global-load latency at the top of every step, with all 8 warps in the same
    // place: ncu at d = 256 attributed ~11 % of the stall samples to it.)
    Tensor c = make_tensor(tScS.data(), acc_layout_rowcol(tScS.layout()));  // (rows, keys) coords
    constexpr int kNRows = decltype(size<0>(c))::value;
    float lse_next[kNRows], dsum_next[kNRows];
    auto load_row_stats = [&](int m_block) __attribute__((always_inline)) {
      CUTE_UNROLL
      for (int mi = 0; mi < kNRows; ++mi) {
        const int row = m_block * kBlockM + get<0>(c(mi, 0));
        lse_next[mi] = INFINITY;
        dsum_next[mi] = 0.f;
        if (row < seq.seqlen_q) {
          lse_next[mi] = lse_base[row];
          dsum_next[mi] = dsum_base[row];
        }
      }
    };

    // Prologue: K, V (the CTA's whole life), the first Q, dO and row statistics.
    copy_zfill<true>(gmem_tiled_copy, tKgK, tKsK, tKcK, tpD, seq.seqlen_k - n0);
    copy_zfill<true>(gmem_tiled_copy, tVgV, tVsV, tKcK, tpD, seq.seqlen_k - n0);
    load_q(m_block_max - 1, 0);
    load_do(m_block_max - 1, 0);
    cp_async_fence();
    load_row_stats(m_block_max - 1);

    // One query block. kMasked: the tile holds invisible (row, key) pairs.
    auto step = [&](int m_block, auto masked) __attribute__((always_inline)) {
      constexpr bool kMasked = decltype(masked)::value;
      const int m0 = m_block * kBlockM;
      const int stage = (m_block_max - 1 - m_block) & 1;
      const int so_q = kStagesQ == 2 ? stage * kQdOElems : 0;    // this block's Q buffer
      const int so_do = kStagesdO == 2 ? stage * kQdOElems : 0;  // and dO buffer
      Tensor acc_s = partition_fragment_C(tiled_mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});   // (MMA, MMA_M, MMA_N)
      Tensor acc_dp = partition_fragment_C(tiled_mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});  // (MMA, MMA_M, MMA_N)
      clear(acc_s);
      clear(acc_dp);
      // This block's row statistics; the next (m - 1) block's load is issued now and lands
      // during this step.
      float lse2_m[kNRows], dsum_m[kNRows];
      CUTE_UNROLL
      for (int mi = 0; mi < kNRows; ++mi) {
        lse2_m[mi] = lse_next[mi] * float(M_LOG2E);
        dsum_m[mi] = dsum_next[mi];
      }

      cp_async_wait<0>();
      __syncthreads();  // Q[m], dO[m] visible; every warp done with step m + 1 (its stage, sP, sdS)
      if constexpr (kStagesQ == 2) {
        if (m_block > m_block_min) {
          load_q(m_block - 1, stage ^ 1);
          if constexpr (kStagesdO == 2) load_do(m_block - 1, stage ^ 1);
          cp_async_fence();
        }
      }
      if (m_block > m_block_min) load_row_stats(m_block - 1);
      KeepBits keep_bits = 0;
      if constexpr (kHasDropout) keep_bits = dropout_keep_bits(tScS, acc_s.layout(), m0, n0, rng, bh);

      gemm_ss<kAhead>(acc_s, tSrQ, tSrK, make_tensor(tSsQ.data() + so_q, tSsQ.layout()), tSsK,
                      tiled_mma_sdp, smem_tiled_copy_a_sdp, smem_tiled_copy_b_sdp,
                      smem_thr_copy_a_sdp, smem_thr_copy_b_sdp);
      gemm_ss<kAhead>(acc_dp, tdPrdO, tdPrV, make_tensor(tdPsdO.data() + so_do, tdPsdO.layout()),
                      tdPsV, tiled_mma_sdp, smem_tiled_copy_a_sdp, smem_tiled_copy_b_sdp,
                      smem_thr_copy_a_sdp, smem_thr_copy_b_sdp);

      // S -> P (Z applied), dP -> dS, element by element. (Tried: FlashAttention-2's order, P
      // computed and stored between the two gemms. ptxas hoisted the independent dP gemm above
      // the exp2 work anyway, so nothing overlapped, and the longer live ranges spilled 200 B.)
      scores_to_grads<kMasked>(acc_s, acc_dp, tScS, m0, n0, mask, offset, alibi_coef, lse2_m,
                               dsum_m, keep_bits, args);

      Tensor rP = convert_fragment<Element>(acc_s);
      Tensor rdS = convert_fragment<Element>(acc_dp);
      copy(smem_tiled_copy_pds, smem_thr_copy_pds.retile_S(rP), tPsP);
      copy(smem_tiled_copy_pds, smem_thr_copy_pds.retile_S(rdS), tdSsdS);
      __syncthreads();  // P, dS visible to every warp

      gemm_ss<kAhead>(acc_dv, tdVrPt, tdVrdOt, tdVsPt,
                      make_tensor(tdVsdOt.data() + so_do, tdVsdOt.layout()), tiled_mma_dkv,
                      smem_tiled_copy_a_dkv, smem_tiled_copy_b_dkv, smem_thr_copy_a_dkv,
                      smem_thr_copy_b_dkv);
      auto dq = [&]() __attribute__((always_inline)) {
        dq_step(m_block, m0, mask, blk, tdQrdS, sKt, thr_mma_dq, tdQsdS, tiled_mma_dq,
                smem_tiled_copy_a_dq, smem_tiled_copy_b_dq, smem_thr_copy_a_dq, smem_thr_copy_b_dq,
                dq_tiles, args);
      };
      auto dk = [&]() __attribute__((always_inline)) {
        gemm_ss<kAhead>(acc_dk, tdKrdSt, tdKrQt, tdKsdSt,
                        make_tensor(tdKsQt.data() + so_q, tdKsQt.layout()), tiled_mma_dkv,
                        smem_tiled_copy_a_dkv, smem_tiled_copy_b_dkv, smem_thr_copy_a_dkv,
                        smem_thr_copy_b_dkv);
      };
      if constexpr (kStagesQ == 2) {
        if constexpr (kStagesdO == 1) {
          if (m_block > m_block_min) {
            __syncthreads();  // every warp done with dV's read of sdO
            load_do(m_block - 1, 0);
            cp_async_fence();
          }
        }
        dq();
        dk();
      } else {
        dk();
        if (m_block > m_block_min) {
          __syncthreads();  // every warp done with sQ, sdO: the next block may overwrite them
          load_q(m_block - 1, 0);
          load_do(m_block - 1, 0);
          cp_async_fence();
        }
        // (sdS and sK are next overwritten only after the barrier at the top of the next step.)
        dq();
      }
    };

    int m_full_begin = 0, m_full_end = 0;
    full_query_blocks<kBlockM, kBlockN>(mask, n0, m_block_min, m_block_max, &m_full_begin, &m_full_end);
    int m_block = m_block_max - 1;
    CUTE_NO_UNROLL
    while (m_block >= m_block_min) {
      if (m_block >= m_full_begin && m_block < m_full_end) {
        CUTE_NO_UNROLL
        for (; m_block >= m_full_begin; --m_block) step(m_block, cute::false_type{});
      } else {
        step(m_block, cute::true_type{});
        --m_block;
      }
    }
  }

  // dQ_m = dS K (unscaled) added into query block m's dq_accum tile, fully coalesced (see
  // BwdKernelTraitsSm80::dq_accum_index); rows past seqlen_q hold exact zeros and land in the
  // tile's padding, so no predicate is needed. With Traits::kDqParts = 2 the gemm runs on one
  // half of the head dim at a time (half the accumulators live next to dK and dV): a half's
  // fragment is a contiguous range of the whole fragment's values (the head-dim mode is its
  // outermost), so value i of part j goes where value i + j * size / 2 of the whole one goes.
  template <class TensorRA, class TensorSKt, class ThrMma, class TensorSA, class TiledMma,
            class CopyA, class CopyB, class ThrCopyA, class ThrCopyB>
  __forceinline__ __device__ void dq_step(int m_block, int m0, VisibilityMask const& mask,
                                          BwdBlockCoordSm80 const& blk, TensorRA& tdQrdS,
                                          TensorSKt const& sKt, ThrMma const& thr_mma_dq,
                                          TensorSA const& tdQsdS, TiledMma const& tiled_mma_dq,
                                          CopyA const& copy_a, CopyB const& copy_b,
                                          ThrCopyA const& thr_copy_a, ThrCopyB const& thr_copy_b,
                                          float* dq_tiles, BwdArgsSm80 const& args) const {
    constexpr int kParts = Traits::kDqParts;
    constexpr int kPartD = kHeadDim / kParts;
    float* tile = dq_tiles + int64_t(m_block) * Traits::kDqTileElems;
    const int tid = threadIdx.x;
    int* semaphore = nullptr;
    CUTE_UNROLL
    for (int part = 0; part < kParts; ++part) {
      Tensor sKt_part = local_tile(sKt, Shape<Int<kPartD>, Int<kBlockN>>{}, make_coord(part, 0));
      Tensor tdQrKt = thr_mma_dq.partition_fragment_B(sKt_part);  // (MMA, MMA_D, MMA_K=N)
      Tensor tdQsKt = thr_copy_b.partition_S(sKt_part);
      Tensor acc_dq = partition_fragment_C(tiled_mma_dq, Shape<Int<kBlockM>, Int<kPartD>>{});  // (MMA, MMA_M, MMA_D)
      clear(acc_dq);
      gemm_ss<kAhead>(acc_dq, tdQrdS, tdQrKt, tdQsdS, tdQsKt, tiled_mma_dq, copy_a, copy_b,
                      thr_copy_a, thr_copy_b);
      if (part == 0 && args.dq_semaphore != nullptr) {
        // Deterministic: wait until the key blocks before this one (of those that see query
        // block m: [key_range begin / kBlockN, n_block)) have added theirs.
        const BwdParams& p = args.p;
        semaphore = args.dq_semaphore + (int64_t(blk.bidb) * p.h + blk.bidh) * args.num_m_blocks + m_block;
        int n_lo = 0, n_hi = 0;
        mask.key_range(m0, min(m0 + kBlockM, mask.seqlen_q), &n_lo, &n_hi);
        const int turn = blk.n_block - n_lo / kBlockN;
        if (tid == 0) {
          while (atomicAdd(semaphore, 0) != turn) __nanosleep(64);
          __threadfence();
        }
        __syncthreads();
      }
      constexpr int kN = decltype(size(acc_dq))::value;
      static_assert(kN % 4 == 0);
      const int i0 = part * kN;
      // red (no return value) rather than atomicAdd: inside this kernel nvcc emitted atomicAdd as
      // ATOMG (the L2 answers each one) where red is fire-and-forget (REDG).
      if constexpr (Traits::kDqVectorAtomics) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        CUTE_UNROLL
        for (int i = 0; i < kN; i += 4) {
          float* dst = tile + Traits::dq_accum_index(tid, i0 + i);
          asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};"
                       :: "l"(dst), "f"(acc_dq(i)), "f"(acc_dq(i + 1)), "f"(acc_dq(i + 2)),
                          "f"(acc_dq(i + 3)) : "memory");
        }
#endif
      } else if constexpr (Traits::kDqAtomics != 2) {
        CUTE_UNROLL
        for (int i = 0; i < kN; ++i) {
          float* dst = tile + Traits::dq_accum_index(tid, i0 + i);
          asm volatile("red.global.add.f32 [%0], %1;" :: "l"(dst), "f"(acc_dq(i)) : "memory");
        }
      } else {
        // Timing experiment: keep the gemm (its result must look used) without any atomics.
        if (acc_dq(0) == 12345.f) tile[tid] = acc_dq(kN - 1);
      }
    }
    if (semaphore != nullptr) {
      __threadfence();
      __syncthreads();  // every thread's adds are visible before the next key block's turn
      if (tid == 0) atomicAdd(semaphore, 1);
    }
  }

  // Dropout keep bits of this thread's S / dP elements: bit e for register e of the fragment.
  // Philox gives 4 words for one row and 4 consecutive keys; in the m16n8k16 accumulator lanes
  // 2q and 2q + 1 hold the same 4 keys of rows r and r + 8, 2 keys each (value v = 0, 1: row r,
  // keys k, k + 1; v = 2, 3: row r + 8). So the even lane draws row r and the odd lane row r + 8,
  // and they swap the halves the other needs: one Philox call per 4 elements, none wasted.
  // Drawn before the S / dP gemms, when only dK / dV hold registers, and kept as one word.
  // acc_layout: the S accumulator's register layout (register index of (v, m, n)).
  template <class TensorC, class AccLayout>
  __forceinline__ __device__ static KeepBits dropout_keep_bits(TensorC const& tScS,
                                                               AccLayout const& acc_layout, int m0,
                                                               int n0, DropoutRng const& rng,
                                                               uint64_t bh) {
    const bool odd = (threadIdx.x & 1) != 0;
    KeepBits bits = 0;
    // Not unrolled: one Philox stream at a time (unrolled, ptxas interleaved all of them and
    // spilled ~250 bytes at d = 128 next to the 128 dK / dV registers).
    CUTE_NO_UNROLL
    for (int mn = 0; mn < size<1>(tScS) * size<2>(tScS); ++mn) {
      const int m = mn % size<1>(tScS), n = mn / size<1>(tScS);
      const int r = m0 + get<0>(tScS(0, m, n));
      const int k = n0 + get<1>(tScS(0, m, n));
      const Philox4 w = rng.words(bh, odd ? r + 8 : r, k >> 2);
      const uint32_t send0 = odd ? w.x[0] : w.x[2];
      const uint32_t send1 = odd ? w.x[1] : w.x[3];
      const uint32_t recv0 = __shfl_xor_sync(0xffffffffu, send0, 1);
      const uint32_t recv1 = __shfl_xor_sync(0xffffffffu, send1, 1);
      const uint32_t words[4] = {odd ? recv0 : w.x[0], odd ? recv1 : w.x[1],
                                 odd ? w.x[2] : recv0, odd ? w.x[3] : recv1};
      CUTE_UNROLL
      for (int v = 0; v < 4; ++v) {
        const int e = acc_layout(v, m, n);
        if (words[v] < rng.threshold) bits |= KeepBits(1) << e;
      }
    }
    return bits;
  }

  // acc_s: S (in), P Z (out); acc_dp: dP (in), dS (out); both (MMA, MMA_M, MMA_N) fragments of
  // the S / dP gemm, coordinates in tScS. See the file comment.
  template <bool kMasked, class TensorAcc, class TensorC, int kNRows>
  __forceinline__ __device__ static void scores_to_grads(TensorAcc& acc_s, TensorAcc& acc_dp,
                                                         TensorC const& tScS, int m0, int n0,
                                                         VisibilityMask const& mask, int offset,
                                                         float alibi_coef,
                                                         float const (&lse2)[kNRows],
                                                         float const (&dsum)[kNRows],
                                                         KeepBits keep_bits,
                                                         BwdArgsSm80 const& args) {
    Tensor s = make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout()));     // (rows, keys)
    Tensor dp = make_tensor(acc_dp.data(), acc_layout_rowcol(acc_dp.layout()));  // (rows, keys)
    Tensor c = make_tensor(tScS.data(), acc_layout_rowcol(tScS.layout()));
    static_assert(decltype(size<0>(s))::value == kNRows);
    // Coordinates as this thread's first element plus compile-time offsets (see common/score_mod_tile.cuh).
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
        float dpz = dp(mi, ni);
        float pz = pr;
        if constexpr (kHasDropout) {
          const int e = s.layout()(mi, ni);  // register index, as in dropout_keep_bits
          const bool keep = (keep_bits >> e) & 1;
          dpz = keep ? dpz * args.rp_dropout : 0.f;
          pz = keep ? pr : 0.f;
        }
        float ds = pr * (dpz - dsum[mi]);
        if constexpr (kHasSoftcap) ds *= dscore;
        s(mi, ni) = pz;
        dp(mi, ni) = ds;
      }
    }
  }
};

}  // namespace flashattn::sm80
