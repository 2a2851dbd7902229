// Epilogue of the Hopper forward, per consumer warpgroup (its 64 query rows): O (normalized in
// registers) converted to the 16-bit dtype and staged with stmatrix in smem_v (free once every
// warpgroup's last P V GEMM is done; smem_q is already receiving the next tile's Q), then
//  - dense outputs: one TMA store of the warpgroup's 64 x d tile, issued by one thread (the
//    descriptor's bounds clip rows past seqlen_q and columns past d); the thread waits only until
//    the TMA engine has read the staged tile, not for the global write;
//  - varlen outputs: read back as 16-byte row vectors and stored with predicates (rows past
//    seqlen_q belong to the next sequence and are never written).
// The LSE goes straight from registers, by the lane of each quad that owns column 0. Afterwards
// the warpgroup arrives on kOEmpty: the producer may load the next tile's V over the staged O.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include <cmath>

#include "common/accumulator.cuh"
#include "common/seqlen.h"
#include "sm90/barriers_sm90.cuh"
#include "sm90/kernel_traits_fwd_sm90.cuh"
#include "sm90/mainloop_fwd_sm90.cuh"

namespace flashattn::sm90 {

using namespace cute;

template <class Traits>
struct EpilogueFwdSm90 {
  using Element = typename Traits::ElementOut;  // of o
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte vectors per row
  using Args = FwdArgsSm90<Traits>;

  __forceinline__ __device__ static Element* o_row(Args const& args, TileWorkSm90 const& w, int r) {
    const FwdParams& p = args.p;
    return static_cast<Element*>(p.o_ptr) +
           w.seq.q_offset(p.o_batch_stride, p.o_row_stride, p.o_head_stride, w.bidb, r, w.bidh,
                          p.cu_seqlens_q != nullptr);
  }
  __forceinline__ __device__ static float* lse_row(Args const& args, TileWorkSm90 const& w, int r) {
    const FwdParams& p = args.p;
    return p.cu_seqlens_q != nullptr
        ? p.softmax_lse_ptr + int64_t(w.bidh) * p.total_q + w.seq.q_row0 + r
        : p.softmax_lse_ptr + (int64_t(w.bidb) * p.h + w.bidh) * p.seqlen_q + r;
  }

  // tOrO: this warpgroup's normalized O (64 x kHeadDim, wgmma accumulator layout); lse: its rows'
  // LSE in acc_layout_rowcol order; smem_v: the V buffers, where O is staged.
  template <class TensorO>
  __forceinline__ __device__ void store(Args const& args, TileWorkSm90 const& w,
                                        TensorO const& tOrO, float const (&lse)[2],
                                        Element* smem_v, int wg, int tid_wg) const {
    const FwdParams& p = args.p;
    const int m0 = w.m_block * kBlockM + wg * 64;
    const int rows_left = w.seq.seqlen_q - m0;
    typename Traits::TiledMmaO tiled_mma_o;

    if (p.softmax_lse_ptr != nullptr) {
      Tensor tOcO = tiled_mma_o.get_thread_slice(tid_wg).partition_C(
          make_identity_tensor(Shape<_64, Int<kHeadDim>>{}));
      Tensor c = make_tensor(tOcO.data(), acc_layout_rowcol(tOcO.layout()));  // (rows, d)
      static_assert(decltype(size<0>(c))::value == 2);
      if (get<1>(c(0, 0)) == 0) {
        CUTE_UNROLL
        for (int mi = 0; mi < 2; ++mi) {
          const int r = get<0>(c(mi, 0));
          if (r < rows_left) *lse_row(args, w, m0 + r) = lse[mi];
        }
      }
    }

    Tensor sO_wg = make_tensor(make_smem_ptr(smem_v + wg * 64 * kHeadDim),
                               typename Traits::SmemLayoutOWg{});  // (64, d)
    Tensor rO = convert_fragment<Element>(tOrO);
    auto smem_copy = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, tiled_mma_o);
    auto smem_thr_copy = smem_copy.get_thread_slice(tid_wg);
    // Every warpgroup's last P V GEMM (the last reader of smem_v) is done.
    named_barrier_sync(kEpilogue, Traits::kMmaThreads);
    copy(smem_copy, smem_thr_copy.retile_S(rO), smem_thr_copy.partition_D(sO_wg));

    if (args.o_by_tma) {
      cutlass::arch::fence_view_async_shared();  // stmatrix (generic proxy) -> TMA (async proxy)
      named_barrier_sync(kWarpGroup + wg, 128);
      if (tid_wg == 0) {
        Tensor mO = args.tma_o.get_tma_tensor(args.shape_o)(_, _, w.bidh, w.bidb);  // (s_q, d)
        Tensor gO = local_tile(mO, Shape<_64, Int<kHeadDim>>{},
                               make_coord(w.m_block * Traits::kMmaWarpGroups + wg, _0{}));
        auto o_part = tma_partition(args.tma_o, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sO_wg),
                                    group_modes<0, 2>(gO));
        copy(args.tma_o, get<1>(o_part), get<0>(o_part));
        tma_store_arrive();
        tma_store_wait<0>();  // the staged tile has been read (smem_v may be overwritten)
      }
    } else {
      named_barrier_sync(kWarpGroup + wg, 128);
      // 16-byte vectors: a row's kChunks vectors go to kChunks consecutive threads (coalesced);
      // inside a 128-byte swizzle span the 8 vectors of a row are 8 different bank groups.
      for (int i = tid_wg; i < 64 * kChunks; i += 128) {
        const int r = i / kChunks, col = (i % kChunks) * 8;
        if (r < rows_left && col < p.d) {
          *reinterpret_cast<uint4*>(o_row(args, w, m0 + r) + col) =
              *reinterpret_cast<uint4 const*>(&sO_wg(r, col));
        }
      }
      // These generic-proxy reads of smem_v come before the next tile's TMA writes into it.
      cutlass::arch::fence_view_async_shared();
    }
    named_barrier_arrive(kOEmpty, Traits::kMmaThreads + 32);
  }

  // A tile whose rows see no key (seqlen_k = 0, or a window left of every key): O = 0 and
  // LSE = +inf for this warpgroup's rows (the head's sink, which is then the whole denominator,
  // with sinks), without any load.
  __forceinline__ __device__ void store_empty(Args const& args, TileWorkSm90 const& w, int wg,
                                              int tid_wg) const {
    const FwdParams& p = args.p;
    const int m0 = w.m_block * kBlockM + wg * 64;
    const int rows_left = w.seq.seqlen_q - m0;
    for (int i = tid_wg; i < 64 * kChunks; i += 128) {
      const int r = i / kChunks, col = (i % kChunks) * 8;
      if (r < rows_left && col < p.d)
        *reinterpret_cast<uint4*>(o_row(args, w, m0 + r) + col) = make_uint4(0, 0, 0, 0);
    }
    if (p.softmax_lse_ptr != nullptr && tid_wg < 64 && tid_wg < rows_left)
      *lse_row(args, w, m0 + tid_wg) = p.sinks != nullptr ? p.sinks[w.bidh] : INFINITY;
  }
};

}  // namespace flashattn::sm90
