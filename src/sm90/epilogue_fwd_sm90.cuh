// Epilogue of the Hopper forward, per consumer warpgroup (its 64 query rows): O (normalized in
// registers) converted to the 16-bit dtype, staged through this warpgroup's rows of smem_q with
// stmatrix, read back as 16-byte row vectors and stored to global memory with predicates (rows
// past seqlen_q and columns past d are never written, so varlen neighbours and padding stay
// untouched); the LSE goes straight from registers, by the lane of each quad that owns column 0.
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
  using Element = typename Traits::Element;
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
  // LSE in acc_layout_rowcol order. smem_q: no warpgroup reads Q any more for this tile (each
  // warpgroup's last S GEMM completed before its softmax), and each writes only its own rows.
  template <class TensorO>
  __forceinline__ __device__ void store(Args const& args, TileWorkSm90 const& w,
                                        TensorO const& tOrO, float const (&lse)[2],
                                        Element* smem_q, int wg, int tid_wg) const {
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

    Tensor sO = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQ{});
    Tensor sO_wg = local_tile(sO, Shape<_64, Int<kHeadDim>>{}, make_coord(wg, _0{}));  // (64, d)
    Tensor rO = convert_fragment<Element>(tOrO);
    auto smem_copy = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, tiled_mma_o);
    auto smem_thr_copy = smem_copy.get_thread_slice(tid_wg);
    copy(smem_copy, smem_thr_copy.retile_S(rO), smem_thr_copy.partition_D(sO_wg));
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
  }

  // A tile whose rows see no key (seqlen_k = 0, or a window left of every key): O = 0 and
  // LSE = +inf for this warpgroup's rows, without any load.
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
      *lse_row(args, w, m0 + tid_wg) = INFINITY;
  }
};

}  // namespace flashattn::sm90
