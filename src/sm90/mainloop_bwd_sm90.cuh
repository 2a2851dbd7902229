// The main loop of the Hopper backward, per CTA (one key block of kBlockN keys, one query head,
// one sequence): the producer's TMA loads and the consumer warpgroups' GEMMs and element-wise
// work. Roles and the schedule of the whole kernel: kernel_bwd_sm90.cuh.
//
// Per query block m (a "step"), each consumer warpgroup (its 64 keys), "||" = in flight together:
//   wait Q[m] (+ its LSE row block); issue S^T = K Q^T
//   wait dO[m] (+ its D row block);  issue dP^T = V dO^T
//   wait S^T; mask (boundary tiles only); P^T = exp2(S^T * scale_log2 - lse_log2)  || dP^T
//   wait dP^T; dS^T = P^T (dP^T - D)
//   issue dV += P^T dO                                  (A = P^T from registers)
//   dS^T -> 16 bits -> dS buffer (m % 2); fence; barrier kBwdDsFull (both warpgroups wrote)
//   issue dQ = dS K; issue dK += dS^T Q                 (A = dS^T from registers)
//   wait dV, dQ; release dO[m]; red.global.add.v4 of the dQ partial into dq_accum   || dK
//   wait dK; release Q[m]
// Rows past seqlen_q and keys past seqlen_k arrive as zeros (TMA fills outside the tensor); the
// padded lse_log2 = +inf of such rows gives P = dS = 0 there, and their dQ rows (exact zeros) land
// in the padding of the last dq_accum tile. softmax_scale is applied once at the end (dK in the
// epilogue, dQ in the postprocess), so dS is the gradient with respect to scale * q.k.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include <cmath>

#include "common/accumulator.cuh"
#include "common/mask.h"
#include "sm90/barriers_bwd_sm90.cuh"
#include "sm90/kernel_traits_bwd_sm90.cuh"
#include "sm90/wgmma_sm90.cuh"

namespace flashattn::sm90 {

using namespace cute;
using namespace flashattn::gpu;

// One CTA's work: which key block, head and sequence, and the query blocks that see its keys.
struct BwdWorkSm90 {
  int n_block = 0, bidh = 0, bidb = 0, bidh_kv = 0;
  VisibilityMask mask;
  int m_block_min = 0, m_block_max = 0;  // empty range: the CTA's dK, dV are zeros

  // The query rows that see at least one key of [n_begin, n_end): VisibilityMask inverted. Row i
  // sees key j iff col_begin(i) <= j < col_end(i), and both limits grow with i.
  template <int kBlockM, int kBlockN>
  __forceinline__ __device__ static BwdWorkSm90 make(BwdParams const& p, int h_h_k_ratio) {
    BwdWorkSm90 w;
    w.n_block = int(blockIdx.x);
    w.bidh = int(blockIdx.y);
    w.bidb = int(blockIdx.z);
    w.bidh_kv = w.bidh / h_h_k_ratio;
    w.mask = VisibilityMask::make(p.seqlen_q, p.seqlen_k, p.is_causal, p.window_size_left,
                                  p.window_size_right);
    const int n_begin = w.n_block * kBlockN;
    const int n_end = min(n_begin + kBlockN, p.seqlen_k);
    int lo = 0, hi = p.seqlen_q;
    // col_end(i) > n_begin  <=>  i + off + right + 1 > n_begin
    if (w.mask.window_right >= 0) lo = max(lo, n_begin - w.mask.offset() - w.mask.window_right);
    // col_begin(i) < n_end  <=>  i + off - left < n_end
    if (w.mask.window_left >= 0) hi = min(hi, n_end - w.mask.offset() + w.mask.window_left);
    if (lo < hi && n_begin < n_end) {
      w.m_block_min = lo / kBlockM;
      w.m_block_max = (hi + kBlockM - 1) / kBlockM;
    }
    return w;
  }
};

template <class Traits>
struct MainloopBwdSm90 {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kStages = Traits::kStages;
  static constexpr int kMmaThreads = Traits::kMmaThreads;
  using Args = BwdArgsSm90<Traits>;
  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename Pipeline::PipelineState;

  // 1024-byte alignment: the 128-byte swizzle repeats every 1 KB, and TMA and wgmma apply it to
  // absolute shared-memory addresses.
  struct TensorStorage {
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutQ>, 1024> smem_q;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutQ>, 1024> smem_do;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutK>, 1024> smem_k;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutK>, 1024> smem_v;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutdS>, 1024> smem_ds;
    cute::array_aligned<float, kStages * kBlockM, 16> smem_lse;   // lse_log2 of each Q stage
    cute::array_aligned<float, kStages * kBlockM, 16> smem_dsum;  // D of each dO stage
  };
  struct PipelineStorage {
    typename Pipeline::SharedStorage pipeline_q;   // Q[m] and its lse_log2 rows
    typename Pipeline::SharedStorage pipeline_do;  // dO[m] and its D rows
    cutlass::arch::ClusterTransactionBarrier barrier_kv;
  };

  // ---- Producer ---------------------------------------------------------------------------

  // Every TMA load of the CTA, issued by one thread: K and V once, then Q[m] and dO[m] (with
  // their row statistics by bulk copy onto the same barriers) for each query block, as fast as
  // the consumers free the stages.
  __forceinline__ __device__ void load(Args const& args, TensorStorage& ts, PipelineStorage& ps,
                                       Pipeline& pipeline_q, Pipeline& pipeline_do,
                                       BwdWorkSm90 const& w) const {
    Tensor mQ = args.tma_q.get_tma_tensor(args.shape_q)(_, _, w.bidh, w.bidb);     // (rows, d)
    Tensor mdO = args.tma_do.get_tma_tensor(args.shape_q)(_, _, w.bidh, w.bidb);   // (rows, d)
    Tensor mK = args.tma_k.get_tma_tensor(args.shape_k)(_, _, w.bidh_kv, w.bidb);  // (rows, d)
    Tensor mV = args.tma_v.get_tma_tensor(args.shape_k)(_, _, w.bidh_kv, w.bidb);  // (rows, d)
    Tensor gQ =
        local_tile(mQ, Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(_, _0{}));  // (M, d, m)
    Tensor gdO =
        local_tile(mdO, Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(_, _0{}));  // (M, d, m)
    Tensor gK = local_tile(mK, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(w.n_block, _0{}));
    Tensor gV = local_tile(mV, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(w.n_block, _0{}));
    Tensor sQ = make_tensor(make_smem_ptr(ts.smem_q.data()), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(ts.smem_do.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ts.smem_k.data()), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(ts.smem_v.data()), typename Traits::SmemLayoutK{});
    auto q_part = tma_partition(args.tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ),
                                group_modes<0, 2>(gQ));
    auto do_part = tma_partition(args.tma_do, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sdO),
                                 group_modes<0, 2>(gdO));
    auto k_part = tma_partition(args.tma_k, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sK),
                                group_modes<0, 2>(gK));
    auto v_part = tma_partition(args.tma_v, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sV),
                                group_modes<0, 2>(gV));
    Tensor tQgQ = get<0>(q_part);     // (TMA, m)
    Tensor tQsQ = get<1>(q_part);     // (TMA, stages)
    Tensor tdOgdO = get<0>(do_part);  // (TMA, m)
    Tensor tdOsdO = get<1>(do_part);  // (TMA, stages)
    const int64_t stats_row0 = (int64_t(w.bidb) * args.p.h + w.bidh) * args.num_m_blocks * kBlockM;
    float const* lse_rows = args.lse_log2 + stats_row0;
    float const* dsum_rows = args.dsum + stats_row0;

    // K and V stay for the whole CTA; Q and dO are read by this CTA once per query block, and
    // by every other key block's CTA of the head: keep all of them in L2.
    ps.barrier_kv.arrive_and_expect_tx(2 * Traits::kTmaBytesK);
    copy(args.tma_k.with(reinterpret_cast<uint64_t&>(ps.barrier_kv), 0,
                         TMA::CacheHintSm90::EVICT_LAST),
         get<0>(k_part), get<1>(k_part));
    copy(args.tma_v.with(reinterpret_cast<uint64_t&>(ps.barrier_kv), 0,
                         TMA::CacheHintSm90::EVICT_LAST),
         get<0>(v_part), get<1>(v_part));

    PipelineState write = cutlass::make_producer_start_state<Pipeline>();
#pragma unroll 1
    for (int m = w.m_block_min; m < w.m_block_max; ++m) {
      const int s = write.index();
      pipeline_q.producer_acquire(write);
      uint64_t* bar_q = pipeline_q.producer_get_barrier(write);
      copy(args.tma_q.with(*bar_q, 0, TMA::CacheHintSm90::EVICT_LAST), tQgQ(_, m), tQsQ(_, s));
      SM90_BULK_COPY_G2S::copy(lse_rows + m * kBlockM, bar_q, ts.smem_lse.data() + s * kBlockM,
                               Traits::kRowStatBytes);
      pipeline_do.producer_acquire(write);
      uint64_t* bar_do = pipeline_do.producer_get_barrier(write);
      copy(args.tma_do.with(*bar_do, 0, TMA::CacheHintSm90::EVICT_LAST), tdOgdO(_, m),
           tdOsdO(_, s));
      SM90_BULK_COPY_G2S::copy(dsum_rows + m * kBlockM, bar_do, ts.smem_dsum.data() + s * kBlockM,
                               Traits::kRowStatBytes);
      ++write;
    }
  }

  // ---- Consumers --------------------------------------------------------------------------

  // The steps of one CTA for consumer thread tid (of kMmaThreads): accumulates the unscaled
  // dK = sum dS^T Q and dV = sum P^T dO of its 64 keys, adds each step's dQ partial to dq_accum.
  template <class TensordKV>
  __forceinline__ __device__ void mma(Args const& args, TensorStorage& ts, PipelineStorage& ps,
                                      Pipeline& pipeline_q, Pipeline& pipeline_do,
                                      BwdWorkSm90 const& w, TensordKV& tdKrdK, TensordKV& tdVrdV,
                                      int tid) const {
    typename Traits::TiledMmaSdP tiled_mma_sdp;
    typename Traits::TiledMmadKV tiled_mma_dkv;
    typename Traits::TiledMmadQ tiled_mma_dq;
    auto thr_sdp = tiled_mma_sdp.get_thread_slice(tid);
    auto thr_dkv = tiled_mma_dkv.get_thread_slice(tid);
    auto thr_dq = tiled_mma_dq.get_thread_slice(tid);

    Tensor sQ = make_tensor(make_smem_ptr(ts.smem_q.data()), typename Traits::SmemLayoutQ{});
    Tensor sQt = make_tensor(make_smem_ptr(ts.smem_q.data()), typename Traits::SmemLayoutQt{});
    Tensor sdO = make_tensor(make_smem_ptr(ts.smem_do.data()), typename Traits::SmemLayoutQ{});
    Tensor sdOt = make_tensor(make_smem_ptr(ts.smem_do.data()), typename Traits::SmemLayoutQt{});
    Tensor sK = make_tensor(make_smem_ptr(ts.smem_k.data()), typename Traits::SmemLayoutK{});
    Tensor sKt = make_tensor(make_smem_ptr(ts.smem_k.data()), typename Traits::SmemLayoutKt{});
    Tensor sV = make_tensor(make_smem_ptr(ts.smem_v.data()), typename Traits::SmemLayoutK{});
    Tensor sdS = make_tensor(make_smem_ptr(ts.smem_ds.data()), typename Traits::SmemLayoutdS{});
    Tensor sdSt = make_tensor(make_smem_ptr(ts.smem_ds.data()), typename Traits::SmemLayoutdSt{});

    Tensor tSrK = thr_sdp.partition_fragment_A(sK);      // (MMA, 1, K) descriptors
    Tensor tSrQ = thr_sdp.partition_fragment_B(sQ);      // (MMA, 1, K, stages)
    Tensor tdPrV = thr_sdp.partition_fragment_A(sV);     // (MMA, 1, K)
    Tensor tdPrdO = thr_sdp.partition_fragment_B(sdO);   // (MMA, 1, K, stages)
    Tensor tdVrdO = thr_dkv.partition_fragment_B(sdOt);  // (MMA, N, K, stages)
    Tensor tdKrQ = thr_dkv.partition_fragment_B(sQt);    // (MMA, N, K, stages)
    Tensor tdQrdS = thr_dq.partition_fragment_A(sdS);    // (MMA, M, K, 2)
    Tensor tdQrK = thr_dq.partition_fragment_B(sKt);     // (MMA, N, K)
    Tensor tScS = thr_sdp.partition_C(make_identity_tensor(Shape<Int<kBlockN>, Int<kBlockM>>{}));
    Tensor cS = make_tensor(tScS.data(), acc_layout_rowcol(tScS.layout()));  // (keys, queries)

    // dS^T registers -> the (keys, queries) view of a dS buffer: each thread's pairs of adjacent
    // queries are contiguous there (MN-major), one 32-bit store each.
    auto r2s_ds = make_tiled_copy_C(
        Copy_Atom<AutoVectorizingCopyWithAssumedAlignment<32>, Element>{}, tiled_mma_sdp);
    auto thr_r2s_ds = r2s_ds.get_thread_slice(tid);
    Tensor tdSsdS = thr_r2s_ds.partition_D(sdSt);  // (CPY, CPY_N, CPY_M, 2)

    clear(tdKrdK);
    clear(tdVrdV);
    // An empty query range leaves dK = dV = 0; K and V were not even loaded.
    if (w.m_block_min >= w.m_block_max) return;
    ps.barrier_kv.wait(0);

    const int n0 = w.n_block * kBlockN;
    const int seqlen_q = args.p.seqlen_q;
    float* dq_tiles = args.dq_accum + (int64_t(w.bidb) * args.p.h + w.bidh) * args.num_m_blocks *
                                          (kBlockM * kHeadDim);
    constexpr int kCols = decltype(size<1>(cS))::value;  // query columns of this thread
    const int row0 = get<0>(cS(0, 0)), col0 = get<1>(cS(0, 0));
    PipelineState read;
    auto consumer_wait = [](Pipeline& pipeline, PipelineState const& state) {
      auto token = pipeline.consumer_try_wait(state);
      pipeline.consumer_wait(state, token);
    };

#pragma unroll 1
    for (int m = w.m_block_min; m < w.m_block_max; ++m) {
      const int s = read.index();
      const int ds_buf = (m - w.m_block_min) & 1;
      const int m0 = m * kBlockM;
      Tensor tSrS = partition_fragment_C(tiled_mma_sdp, Shape<Int<kBlockN>, Int<kBlockM>>{});
      Tensor tdPrdP = partition_fragment_C(tiled_mma_sdp, Shape<Int<kBlockN>, Int<kBlockM>>{});
      consumer_wait(pipeline_q, read);
      wgmma_issue</*kZeroInit=*/true, /*kRegsA=*/false>(tiled_mma_sdp, tSrK, tSrQ(_, _, _, s), tSrS);
      consumer_wait(pipeline_do, read);
      wgmma_issue</*kZeroInit=*/true, /*kRegsA=*/false>(tiled_mma_sdp, tdPrV, tdPrdO(_, _, _, s), tdPrdP);

      // Each element's (key, query) is this thread's first coordinate plus a compile-time offset:
      // everything per element is written against the offsets (immediates), with the runtime part
      // folded into one value per column; otherwise the compiler keeps one register per element.
      float const* lse_s = ts.smem_lse.data() + s * kBlockM + col0;
      float const* dsum_s = ts.smem_dsum.data() + s * kBlockM + col0;
      warpgroup_wait<1>();                                                     // S^T done
      Tensor sc = make_tensor(tSrS.data(), acc_layout_rowcol(tSrS.layout()));  // (keys, queries)
      // Boundary tiles (causal diagonal, window edges, the key block past seqlen_k) mask; the
      // rest take the loop without compares. Rows past seqlen_q need no mask (lse_log2 = +inf).
      if (!w.mask.tile_fully_visible(m0, min(m0 + kBlockM, seqlen_q), n0, n0 + kBlockN)) {
        CUTE_UNROLL
        for (int ni = 0; ni < kCols; ++ni) {
          const int query = m0 + col0 + (get<1>(cS(0, ni)) - col0);
          // Keys [lo, hi) of the block, counted from this thread's first row, are visible.
          const int lo = w.mask.col_begin(query) - n0 - row0;
          const int hi = w.mask.col_end(query) - n0 - row0;
          CUTE_UNROLL
          for (int mi = 0; mi < size<0>(sc); ++mi) {
            const int dr = get<0>(cS(mi, 0)) - row0;
            if (dr < lo || dr >= hi) sc(mi, ni) = -INFINITY;
          }
        }
      }
      CUTE_UNROLL
      for (int ni = 0; ni < kCols; ++ni) {
        const float lse = lse_s[get<1>(cS(0, ni)) - col0];
        CUTE_UNROLL
        for (int mi = 0; mi < size<0>(sc); ++mi)
          sc(mi, ni) = exp2f(sc(mi, ni) * args.scale_log2 - lse);
      }
      warpgroup_wait<0>();  // dP^T done
      Tensor dpc = make_tensor(tdPrdP.data(), acc_layout_rowcol(tdPrdP.layout()));
      CUTE_UNROLL
      for (int ni = 0; ni < kCols; ++ni) {
        const float dsum = dsum_s[get<1>(cS(0, ni)) - col0];
        CUTE_UNROLL
        for (int mi = 0; mi < size<0>(dpc); ++mi) dpc(mi, ni) = sc(mi, ni) * (dpc(mi, ni) - dsum);
      }

      Tensor rP = convert_fragment<Element>(tSrS);
      Tensor tdVrP = make_tensor(rP.data(), acc_as_a_operand(rP.layout()));
      wgmma_issue</*kZeroInit=*/false, /*kRegsA=*/true>(tiled_mma_dkv, tdVrP, tdVrdO(_, _, _, s), tdVrdV);

      Tensor rdS = convert_fragment<Element>(tdPrdP);
      copy(r2s_ds, thr_r2s_ds.retile_S(rdS), tdSsdS(_, _, _, ds_buf));
      cutlass::arch::fence_view_async_shared();  // generic-proxy stores -> wgmma (async proxy)
      named_barrier_sync(kBwdDsFull, kMmaThreads);

      Tensor tdQrdQ = partition_fragment_C(tiled_mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});
      wgmma_issue</*kZeroInit=*/true, /*kRegsA=*/false>(tiled_mma_dq, tdQrdS(_, _, _, ds_buf), tdQrK,
                                                  tdQrdQ);
      Tensor tdKrdS = make_tensor(rdS.data(), acc_as_a_operand(rdS.layout()));
      wgmma_issue</*kZeroInit=*/false, /*kRegsA=*/true>(tiled_mma_dkv, tdKrdS, tdKrQ(_, _, _, s), tdKrdK);

      warpgroup_wait<1>();  // dV and dQ done (batches complete in issue order)
      warpgroup_fence_operand(rP);
      pipeline_do.consumer_release(read);
      // Fire-and-forget reductions (REDG), 16 bytes each, drained behind the dK GEMM.
      float* dq_tile = dq_tiles + int64_t(m) * (kBlockM * kHeadDim);
      static_assert(decltype(size(tdQrdQ))::value == Traits::kDqValues);
      CUTE_UNROLL
      for (int i = 0; i < Traits::kDqValues; i += 4) {
        float* dst = dq_tile + Args::dq_accum_index(tid, i);
        asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "f"(tdQrdQ(i)),
                     "f"(tdQrdQ(i + 1)), "f"(tdQrdQ(i + 2)), "f"(tdQrdQ(i + 3))
                     : "memory");
      }
      warpgroup_wait<0>();  // dK done
      warpgroup_fence_operand(rdS);
      pipeline_q.consumer_release(read);
      ++read;
    }
  }
};

}  // namespace flashattn::sm90
