// The Hopper forward main loop: the producer's TMA loads and the consumer warpgroups' GEMMs and
// online softmax for one tile (kBlockM query rows of one head). See kernel_fwd_sm90.cuh for the
// CTA's roles and the tile loop.
//
// Key blocks are walked from the last visible one down to the first (as on the SM80 path: the
// partial block and the causal diagonal come first). Pipelines (PipelineTmaAsync, one mbarrier
// pair per stage): K and V, kStages each, advanced in lockstep (K[n] and V[n] share a stage
// index); Q has one transaction barrier and is reloaded per tile.
//
// Producer (one thread), per tile, key blocks n_max - 1 = first, ..., n_min = last:
//   K[first]; wait kQueryEmpty; Q; then K[n - 1], V[n] for each n; V[last]
// (V of a block is issued after K of the next: the consumers need K[n] one step before V[n]);
// before the tile's first V it waits kOEmpty, since the previous tile's O is staged in smem_v.
//
// Consumer warpgroup (64 query rows), per tile, with "||" = in flight on the tensor cores
// while the warpgroup's own threads run the softmax:
//   S = Q K[first]^T; wait; score mods + mask; softmax; P = 16-bit(S)
//   for n = first - 1 down to n_min:
//     [ping-pong turn]  issue S = Q K[n]^T, issue O += P V[n + 1]  [pass the turn]
//     wait S; release K[n]; score mods + mask; online softmax of S    || O += P V[n + 1]
//       [dropout: zero P where the Philox keep mask drops]
//     wait O; release V[n + 1]; O *= exp(m_old - m_new); P = 16-bit(S)
//   [arrive kQueryEmpty: the next tile's Q may load]  O += P V[n_min]; wait; release V[n_min]
// The softmax of block n runs while the P V GEMM of block n + 1 is on the tensor cores, and with
// ping-pong the other warpgroups' GEMMs fill the tensor cores during this one's softmax.
// Blocks that hold an invisible (row, key) pair (causal diagonal, window edges, the key tail)
// run the per-element mask; the others skip it entirely.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "common/accumulator.cuh"
#include "common/descale.h"
#include "common/dropout_tile.cuh"
#include "common/mask.h"
#include "common/online_softmax.cuh"
#include "common/score_mod.h"
#include "common/score_mod_tile.cuh"
#include "common/seqlen.h"
#include "sm90/barriers_sm90.cuh"
#include "sm90/fp8_layout_sm90.h"
#include "sm90/wgmma_sm90.cuh"
#include "sm90/kernel_traits_fwd_sm90.cuh"

namespace flashattn::sm90 {

using namespace cute;
using namespace flashattn::gpu;

// The compile-time feature set of one Hopper forward kernel (everything else is a runtime value).
template <bool kSoftcap_, bool kAlibi_, bool kDropout_ = false>
struct FwdFeaturesSm90 {
  static constexpr bool kSoftcap = kSoftcap_;
  static constexpr bool kAlibi = kAlibi_;
  static constexpr bool kDropout = kDropout_;
  static_assert(!(kDropout && kSoftcap), "dropout is not combined with softcap (flash_attn's rule)");
};

// One tile's geometry, computed the same way by the producer and the consumers.
struct TileWorkSm90 {
  int m_block = 0, bidh = 0, bidb = 0, bidh_kv = 0;
  SeqlenInfo seq;
  VisibilityMask mask;
  int n_block_min = 0, n_block_max = 0;
  bool rows = false;  // some query row of the tile exists (m0 < seqlen_q)
  bool keys = false;  // ... and some key is visible to some row: the tile loads and computes

  template <int kBlockM, int kBlockN, class Args>
  __forceinline__ __device__ static TileWorkSm90 make(Args const& args, int tile) {
    TileWorkSm90 w;
    const TileCoordSm90 c = args.scheduler.coord(tile);
    w.m_block = c.m_block;
    w.bidh = c.bidh;
    w.bidb = c.bidb;
    w.bidh_kv = c.bidh / args.h_h_k_ratio;
    const FwdParams& p = args.p;
    w.seq = SeqlenInfo::make(p, c.bidb);
    const int m0 = c.m_block * kBlockM;
    w.rows = m0 < w.seq.seqlen_q;
    w.mask = VisibilityMask::make(w.seq.seqlen_q, w.seq.seqlen_k, p.is_causal, p.window_size_left,
                                  p.window_size_right);
    if (!w.rows) return w;
    int n_lo = 0, n_hi = 0;
    w.mask.key_range(m0, min(m0 + kBlockM, w.seq.seqlen_q), &n_lo, &n_hi);
    w.keys = n_hi > n_lo;
    w.n_block_min = n_lo / kBlockN;
    w.n_block_max = (n_hi + kBlockN - 1) / kBlockN;
    return w;
  }
};

// The score units of one tile (common/online_softmax.cuh): the launch's, or with FP8 those of the
// softmax scale times the tile's (sequence, kv head) q and k descales, which multiply into the
// scores before the score modifiers (docs/fp8.md); o_scale multiplies the normalized O (dropout's
// 1 / (1 - p), FP8's v descale).
struct TileUnitsSm90 {
  float unit, unit_log2, softcap_prescale, o_scale;
};

// P to the 8-bit A operand of the P V wgmma. The fp32 S accumulator holds, per thread and 8-key
// block j, (row r: keys 8j + 2t, 8j + 2t + 1; row r + 8: the same keys), t = lane % 4; the e4m3
// A fragment of each 32-key slice wants 4 consecutive k per 32-bit register (row r: k 4t .. 4t + 3,
// row r + 8: the same, then k 16 + 4t .. for both rows). Rather than move values between lanes,
// each register packs the thread's own values of two neighbouring blocks (fp8_pack_order):
//   k 4t + e  (e = 0..3) holds key 8 (e / 2) + 2t + e % 2 of the slice's first 16 keys,
// likewise for k 16 + 4t + e, and the V^T scratch stores the keys of every 32-key group in that
// order (fp8_key_of_slot, fp8_layout_sm90.h). P V sums over the keys, so the order is free.
template <class TensorS, class TensorP>
__forceinline__ __device__ void convert_p_fp8(TensorS const& tSrS, TensorP& tOrP) {
  static_assert(decltype(size(tSrS))::value == decltype(size(tOrP))::value);
  static_assert(decltype(size(tSrS))::value % 16 == 0);
  using Converter = cutlass::NumericArrayConverter<cutlass::float_e4m3_t, float, 4,
                                                   cutlass::FloatRoundStyle::round_to_nearest>;
  uint32_t* out = reinterpret_cast<uint32_t*>(raw_pointer_cast(tOrP.data()));
  auto pack = [&](int i0, int i1, int i2, int i3) {
    cutlass::Array<float, 4> in;
    in[0] = tSrS(i0);
    in[1] = tSrS(i1);
    in[2] = tSrS(i2);
    in[3] = tSrS(i3);
    const cutlass::Array<cutlass::float_e4m3_t, 4> q = Converter::convert(in);
    return reinterpret_cast<uint32_t const&>(q);
  };
  CUTE_UNROLL
  for (int s = 0; s < size(tSrS) / 16; ++s) {
    CUTE_UNROLL
    for (int r = 0; r < 4; ++r) {  // register 4s + r: bytes 4r .. 4r + 3 of the slice
      out[4 * s + r] = pack(16 * s + fp8_pack_order(4 * r), 16 * s + fp8_pack_order(4 * r + 1),
                            16 * s + fp8_pack_order(4 * r + 2), 16 * s + fp8_pack_order(4 * r + 3));
    }
  }
}

template <class Traits, class Features>
struct MainloopFwdSm90 {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kStages = Traits::kStages;
  static constexpr int kMmaWarpGroups = Traits::kMmaWarpGroups;
  static constexpr int kMmaThreads = Traits::kMmaThreads;
  using Args = FwdArgsSm90<Traits>;
  using PipelineKV = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename PipelineKV::PipelineState;
  using ScoreMod = ScoreModTile<Features::kSoftcap, Features::kAlibi>;
  static constexpr bool kFp8 = Traits::kFp8;
  // FP8 quantizes 256 exp(s - m): docs/fp8.md, the emulation's kFp8PScale.
  static constexpr int kPLog2Scale = kFp8 ? 8 : 0;

  __forceinline__ __device__ static TileUnitsSm90 units(Args const& args, TileWorkSm90 const& w) {
    if constexpr (kFp8) {
      const FwdParams& p = args.p;
      const float qk = Fp8Descale::q(p).at(w.bidb, w.bidh_kv, w.bidh, 0) *
                       Fp8Descale::k(p).at(w.bidb, w.bidh_kv, w.bidh_kv, 0);
      const ScoreUnits u = ScoreUnits::of(p.softmax_scale * qk, p.softcap);
      return {u.unit, u.unit_log2, u.softcap_prescale,
              Fp8Descale::v(p).at(w.bidb, w.bidh_kv, w.bidh_kv, 0)};
    } else {
      return {args.unit, args.unit_log2, args.softcap_prescale, args.rp_dropout};
    }
  }

  // 1024-byte alignment: the 128-byte swizzle repeats every 1 KB, and TMA and wgmma apply it to
  // absolute shared-memory addresses.
  struct TensorStorage {
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutQ>, 1024> smem_q;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutKV>, 1024> smem_k;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutKV>, 1024> smem_v;
  };
  struct PipelineStorage {
    typename PipelineKV::SharedStorage pipeline_k;
    typename PipelineKV::SharedStorage pipeline_v;
    cutlass::arch::ClusterTransactionBarrier barrier_q;
    // The next tile index, producer -> consumers, double-buffered: slot k % 2 carries the tile
    // after the CTA's k-th; tile_full[s] completes when the producer wrote slot s, tile_empty[s]
    // when every consumer thread has read it.
    cutlass::arch::ClusterBarrier tile_full[2];
    cutlass::arch::ClusterBarrier tile_empty[2];
    int tile_slot[2];
  };

  // ---- Producer ---------------------------------------------------------------------------

  // The TMA loads of one tile, issued by thread 0 of the CTA; the rest of warp 0 only joins the
  // kQueryEmpty barrier (a named barrier counts whole warps).
  // after_q runs (on the whole warp) once Q is issued: the producer takes its next tile there, an
  // atomic whose latency the tile's loads then hide.
  template <class AfterQ>
  __forceinline__ __device__ void load(Args const& args, TensorStorage& ts, PipelineStorage& ps,
                                       PipelineKV& pipeline_k, PipelineKV& pipeline_v,
                                       PipelineState& write, TileWorkSm90 const& w, bool leader,
                                       AfterQ&& after_q) const {
    const bool varlen = args.p.cu_seqlens_q != nullptr;
    const int bidb_q = varlen ? 0 : w.bidb;
    Tensor mQ = args.tma_q.get_tma_tensor(args.shape_q)(_, _, w.bidh, bidb_q);     // (rows, d)
    Tensor mK = args.tma_k.get_tma_tensor(args.shape_kv)(_, _, w.bidh_kv, bidb_q);  // (rows, d)
    Tensor mV = args.tma_v.get_tma_tensor(args.shape_v)(_, _, w.bidh_kv, bidb_q);  // 16-bit: (rows, d)
    Tensor gQ = local_tile(domain_offset(make_coord(int(w.seq.q_row0), _0{}), mQ),
                           Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(w.m_block, _0{}));
    Tensor gK = local_tile(domain_offset(make_coord(int(w.seq.k_row0), _0{}), mK),
                           Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, _0{}));  // (N, d, n)
    // (N, d, n) tiles of V; FP8: (d, N, n) tiles of V^T (dense only, so no row offset).
    auto gV = [&] {
      if constexpr (kFp8) {
        return local_tile(mV, Shape<Int<kHeadDim>, Int<kBlockN>>{}, make_coord(_0{}, _));
      } else {
        return local_tile(domain_offset(make_coord(int(w.seq.k_row0), _0{}), mV),
                          Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, _0{}));
      }
    }();
    Tensor sQ = make_tensor(make_smem_ptr(ts.smem_q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ts.smem_k.data()), typename Traits::SmemLayoutKV{});
    using SmemLayoutVLoad =
        std::conditional_t<kFp8, typename Traits::SmemLayoutVt, typename Traits::SmemLayoutKV>;
    Tensor sV = make_tensor(make_smem_ptr(ts.smem_v.data()), SmemLayoutVLoad{});
    auto q_part = tma_partition(args.tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ),
                                group_modes<0, 2>(gQ));
    auto k_part = tma_partition(args.tma_k, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sK),
                                group_modes<0, 2>(gK));
    auto v_part = tma_partition(args.tma_v, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sV),
                                group_modes<0, 2>(gV));
    Tensor tQgQ = get<0>(q_part);  // (TMA)
    Tensor tQsQ = get<1>(q_part);  // (TMA)
    Tensor tKgK = get<0>(k_part);  // (TMA, n)
    Tensor tKsK = get<1>(k_part);  // (TMA, stages)
    Tensor tVgV = get<0>(v_part);
    Tensor tVsV = get<1>(v_part);

    // K / V are read by every query block of the head: keep them in L2; Q is read once.
    auto load_k = [&](int n, PipelineState const& state) {
      pipeline_k.producer_acquire(state);
      copy(args.tma_k.with(*pipeline_k.producer_get_barrier(state), 0, TMA::CacheHintSm90::EVICT_LAST),
           tKgK(_, n), tKsK(_, state.index()));
    };
    auto load_v = [&](int n, PipelineState const& state) {
      pipeline_v.producer_acquire(state);
      copy(args.tma_v.with(*pipeline_v.producer_get_barrier(state), 0, TMA::CacheHintSm90::EVICT_LAST),
           tVgV(_, n), tVsV(_, state.index()));
    };

    int n = w.n_block_max - 1;
    if (leader) load_k(n, write);
    // K of the first block goes out before the wait: it does not touch smem_q, where the
    // consumers may still be staging the previous tile's O.
    named_barrier_sync(kQueryEmpty, kMmaThreads + 32);
    if (leader) {
      ps.barrier_q.arrive_and_expect_tx(Traits::kTmaBytesQ);
      copy(args.tma_q.with(reinterpret_cast<uint64_t&>(ps.barrier_q), 0,
                           TMA::CacheHintSm90::EVICT_FIRST),
           tQgQ, tQsQ);
    }
    after_q();
    // The first V of the tile overwrites the O the consumers staged for the previous tile.
    bool first_v = true;
    auto wait_o_read = [&] {
      if (first_v) named_barrier_sync(kOEmpty, kMmaThreads + 32);
      first_v = false;
    };
#pragma unroll 1
    for (; n > w.n_block_min; --n) {
      PipelineState state_v = write;
      ++write;
      if (leader) load_k(n - 1, write);
      wait_o_read();
      if (leader) load_v(n, state_v);
    }
    wait_o_read();
    if (leader) load_v(w.n_block_min, write);
    ++write;
  }

  // ---- Consumers --------------------------------------------------------------------------

  // The GEMMs and online softmax of one tile for consumer warpgroup wg (threads tid_wg of 128):
  // accumulates this warpgroup's O (unnormalized) and softmax state.
  template <class TensorO, class Softmax>
  __forceinline__ __device__ void mma(Args const& args, TensorStorage& ts, PipelineKV& pipeline_k,
                                      PipelineKV& pipeline_v, PipelineState& read,
                                      TileWorkSm90 const& w, TileUnitsSm90 const& units,
                                      TensorO& tOrO, Softmax& softmax, int wg, int tid_wg) const {
    const FwdParams& p = args.p;
    typename Traits::TiledMmaS tiled_mma_s;
    typename Traits::TiledMmaO tiled_mma_o;
    auto thr_mma_s = tiled_mma_s.get_thread_slice(tid_wg);
    auto thr_mma_o = tiled_mma_o.get_thread_slice(tid_wg);
    Tensor sQ = make_tensor(make_smem_ptr(ts.smem_q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ts.smem_k.data()), typename Traits::SmemLayoutKV{});
    Tensor sV = make_tensor(make_smem_ptr(ts.smem_v.data()), typename Traits::SmemLayoutKV{});
    Tensor sVt = make_tensor(make_smem_ptr(ts.smem_v.data()), typename Traits::SmemLayoutVt{});
    Tensor sQ_wg = local_tile(sQ, Shape<_64, Int<kHeadDim>>{}, make_coord(wg, _0{}));  // (64, d)
    Tensor tSrQ = thr_mma_s.partition_fragment_A(sQ_wg);  // (MMA, 1, K) descriptors
    Tensor tSrK = thr_mma_s.partition_fragment_B(sK);     // (MMA, 1, K, stages)
    Tensor tOrV = thr_mma_o.partition_fragment_B(sVt);    // (MMA, 1, N / 16, stages)
    Tensor tScS = thr_mma_s.partition_C(make_identity_tensor(Shape<_64, Int<kBlockN>>{}));

    const int m0 = w.m_block * kBlockM + wg * 64;  // this warpgroup's first query row
    // Rows past the sequence end are never stored; they are left out of the "fully visible"
    // test so that the last row block still takes the unmasked path.
    const int m_end = min(m0 + 64, w.seq.seqlen_q);
    auto needs_mask = [&](int n) {
      return m_end <= m0 || !w.mask.tile_fully_visible(m0, m_end, n * kBlockN, (n + 1) * kBlockN);
    };
    ScoreMod score_mod;
    score_mod.offset = w.seq.seqlen_k - w.seq.seqlen_q;
    if constexpr (Features::kSoftcap) score_mod.softcap_prescale = units.softcap_prescale;
    if constexpr (Features::kAlibi) {
      const float slope = p.alibi_slopes[w.bidb * p.alibi_slopes_batch_stride + w.bidh];
      score_mod.alibi_coef = -slope / units.unit;
    }
    // Dropout: the Philox stream of (sequence, query head) bh = bidb * h + bidh, as on every
    // other path, so the CPU reference regenerates the same keep mask.
    DropoutRng rng;
    uint64_t dropout_bh = 0;
    if constexpr (Features::kDropout) {
      rng.seed = p.philox_seed;
      rng.offset = p.philox_offset;
      rng.threshold = args.dropout_threshold;
      dropout_bh = uint64_t(w.bidb) * uint64_t(p.h) + uint64_t(w.bidh);
    }
    auto score_mods_and_softmax = [&](auto& tSrS, int n) {
      if (needs_mask(n)) {
        score_mod.template apply<true>(tSrS, tScS, m0, n * kBlockN, w.mask);
        softmax.template update</*kCheckInf=*/true>(tSrS);
      } else {
        score_mod.template apply<false>(tSrS, tScS, m0, n * kBlockN, w.mask);
        softmax.template update</*kCheckInf=*/false>(tSrS);
      }
      // After the row sums took the un-dropped P (the LSE is the un-dropped one); its Philox
      // work runs while the previous block's P V GEMM is on the tensor cores.
      if constexpr (Features::kDropout) apply_dropout(tSrS, tScS, m0, n * kBlockN, rng, dropout_bh);
    };

    // The key block holding the sequence end: V rows past it may be anything (see
    // FwdArgsSm90::kv_tail_in_tensor); zero them in shared memory before the P V GEMM reads them.
    // Every consumer warpgroup writes the same zeros, each before its own GEMM.
    auto zero_v_tail = [&](int n, int stage) {
      if constexpr (kFp8) return;  // the V^T scratch holds zeros past every sequence's keys
      const int valid = w.seq.seqlen_k - n * kBlockN;
      if (!args.kv_tail_in_tensor || valid >= kBlockN) return;
      constexpr int kChunks = kHeadDim / 8;  // 16-byte vectors per row
      Tensor sVs = sV(_, _, stage);
      for (int i = tid_wg; i < (kBlockN - valid) * kChunks; i += 128) {
        *reinterpret_cast<uint4*>(&sVs(valid + i / kChunks, (i % kChunks) * 8)) = make_uint4(0, 0, 0, 0);
      }
      cutlass::arch::fence_view_async_shared();  // generic-proxy stores -> wgmma (async proxy)
      named_barrier_sync(kWarpGroup + wg, 128);
    };

    auto turn_wait = [&] {
      if constexpr (Traits::kPingPong) named_barrier_sync(kTurn + wg, 256);
    };
    auto turn_pass = [&] {
      if constexpr (Traits::kPingPong) {
        named_barrier_arrive(kTurn + (wg + 1 == kMmaWarpGroups ? 0 : wg + 1), 256);
      }
    };

    auto consumer_wait = [](PipelineKV& pipeline, PipelineState const& state) {
      auto token = pipeline.consumer_try_wait(state);
      pipeline.consumer_wait(state, token);
    };

    int n = w.n_block_max - 1;
    const int n_first = n;
    Tensor tSrS = partition_fragment_C(tiled_mma_s, Shape<_64, Int<kBlockN>>{});
    consumer_wait(pipeline_k, read);
    wgmma_issue</*kZeroInit=*/true, /*kRegsA=*/false>(tiled_mma_s, tSrQ, tSrK(_, _, _, read.index()), tSrS);
    warpgroup_wait<0>();
    pipeline_k.consumer_release(read);
    score_mods_and_softmax(tSrS, n);
    // P as the A operand of P V: 16-bit, S converted in place and viewed as the A fragment;
    // FP8, repacked into the A fragment (convert_p_fp8).
    auto make_p = [&] {
      if constexpr (kFp8) {
        Tensor p8 = make_tensor<Element>(
            shape(thr_mma_o.partition_A(make_identity_tensor(Shape<_64, Int<kBlockN>>{}))));
        convert_p_fp8(tSrS, p8);
        return p8;
      } else {
        return convert_fragment<Element>(tSrS);
      }
    };
    Tensor rP = make_p();
    auto p_layout = [&] {
      if constexpr (kFp8) {
        return rP.layout();
      } else {
        return acc_as_a_operand(rP.layout());
      }
    };
    Tensor tOrP = make_tensor(rP.data(), p_layout());
    clear(tOrO);

#pragma unroll 1
    for (--n; n >= w.n_block_min; --n) {
      PipelineState read_v = read;  // V of block n + 1 shares K[n + 1]'s stage
      ++read;
      consumer_wait(pipeline_k, read);
      turn_wait();
      wgmma_issue</*kZeroInit=*/true, /*kRegsA=*/false>(tiled_mma_s, tSrQ, tSrK(_, _, _, read.index()), tSrS);
      consumer_wait(pipeline_v, read_v);
      if (n + 1 == n_first) zero_v_tail(n + 1, read_v.index());
      wgmma_issue</*kZeroInit=*/false, /*kRegsA=*/true>(tiled_mma_o, tOrP, tOrV(_, _, _, read_v.index()), tOrO);
      turn_pass();
      warpgroup_wait<1>();  // S done (the P V batch was committed after it)
      pipeline_k.consumer_release(read);
      score_mods_and_softmax(tSrS, n);
      warpgroup_wait<0>();  // O += P V[n + 1] done: P and V[n + 1] are free
      pipeline_v.consumer_release(read_v);
      softmax.rescale_o(tOrO);
      if constexpr (kFp8) {
        convert_p_fp8(tSrS, rP);
      } else {
        Tensor rP_next = convert_fragment<Element>(tSrS);
        CUTE_UNROLL
        for (int i = 0; i < size(rP); ++i) rP(i) = rP_next(i);
      }
    }

    // Every S GEMM of this warpgroup is done: smem_q may take the next tile's Q.
    named_barrier_arrive(kQueryEmpty, kMmaThreads + 32);
    consumer_wait(pipeline_v, read);
    if (w.n_block_min == n_first) zero_v_tail(n_first, read.index());
    wgmma_issue</*kZeroInit=*/false, /*kRegsA=*/true>(tiled_mma_o, tOrP, tOrV(_, _, _, read.index()), tOrO);
    warpgroup_wait<0>();
    pipeline_v.consumer_release(read);
    ++read;
  }
};

}  // namespace flashattn::sm90
