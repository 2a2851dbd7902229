// Epilogue of the SM80-path forward: O (already normalized by l in registers) converted to the
// 16-bit dtype, staged through shared memory so that global stores are 16-byte vectors covering
// whole row segments (the MMA accumulator layout would give scattered 4-byte stores), and the
// LSE written by the one lane of each quad that owns column 0 of a row. Rows past seqlen_q and
// columns past d are never written; neither is anything outside this CTA's (rows, head) tile.
#pragma once

#include <cute/tensor.hpp>

#include <cmath>

#include "common/seqlen.h"
#include "sm80/fwd_args_sm80.h"
#include "sm80/mainloop_fwd_sm80.cuh"
#include "sm80/utils_sm80.cuh"

namespace flashattn::sm80 {

using namespace cute;

template <class Traits>
struct EpilogueFwdSm80 {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kHeadDim = Traits::kHeadDim;
  using TiledMma = typename Traits::TiledMma;

  // acc_o: (MMA, MMA_M, MMA_K) normalized O; lse[i]: LSE of the i-th row this thread owns (in the
  // acc_layout_rowcol order). smem_o: kBlockM x kHeadDim elements no warp reads any more.
  template <class TensorO, int kNRows>
  __forceinline__ __device__ void store(FwdArgsSm80 const& args, SeqlenInfo const& seq,
                                        BlockCoordSm80 const& blk, TensorO const& acc_o,
                                        float const (&lse)[kNRows], Element* smem_o) const {
    const FwdParams& p = args.p;
    const int tid = threadIdx.x;
    const int m0 = blk.m_block * kBlockM;
    const int rows_left = seq.seqlen_q - m0;

    // LSE: dense [b, h, s_q]; varlen [h, total_q].
    if (p.softmax_lse_ptr != nullptr) {
      TiledMma tiled_mma;
      auto thr_mma = tiled_mma.get_thread_slice(tid);
      Tensor tOcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
      Tensor c = make_tensor(tOcO.data(), acc_layout_rowcol(tOcO.layout()));  // (rows, d)
      static_assert(decltype(size<0>(c))::value == kNRows);
      float* lse_base = p.cu_seqlens_q != nullptr
          ? p.softmax_lse_ptr + int64_t(blk.bidh) * p.total_q + seq.q_row0 + m0
          : p.softmax_lse_ptr + (int64_t(blk.bidb) * p.h + blk.bidh) * p.seqlen_q + m0;
      if (get<1>(c(0, 0)) == 0) {  // the quad lane holding column 0
        CUTE_UNROLL
        for (int mi = 0; mi < kNRows; ++mi) {
          const int r = get<0>(c(mi, 0));
          if (r < rows_left) lse_base[r] = lse[mi];
        }
      }
    }

    // O: registers -> smem (MMA layout) -> registers (row-vector layout) -> gmem.
    Tensor sO = make_tensor(make_smem_ptr(smem_o), typename Traits::SmemLayoutO{});
    Tensor rO = convert_fragment<Element>(acc_o);
    auto smem_tiled_copy_o = make_tiled_copy_C(typename Traits::SmemCopyAtomO{}, TiledMma{});
    auto smem_thr_copy_o = smem_tiled_copy_o.get_thread_slice(tid);
    Tensor taccOrO = smem_thr_copy_o.retile_S(rO);
    Tensor taccOsO = smem_thr_copy_o.partition_D(sO);
    __syncthreads();  // every warp is past its last read of sQ (which sO aliases)
    copy(smem_tiled_copy_o, taccOrO, taccOsO);
    __syncthreads();
    store_rows_from_smem(args, seq, blk, sO);
  }

  // A CTA whose rows see no key at all (seqlen_k = 0, or a window left of every key): O = 0,
  // LSE = +inf, without touching K or V.
  __forceinline__ __device__ void store_empty(FwdArgsSm80 const& args, SeqlenInfo const& seq,
                                              BlockCoordSm80 const& blk, Element* smem_o) const {
    const FwdParams& p = args.p;
    const int m0 = blk.m_block * kBlockM;
    const int rows_left = seq.seqlen_q - m0;
    if (p.softmax_lse_ptr != nullptr) {
      float* lse_base = p.cu_seqlens_q != nullptr
          ? p.softmax_lse_ptr + int64_t(blk.bidh) * p.total_q + seq.q_row0 + m0
          : p.softmax_lse_ptr + (int64_t(blk.bidb) * p.h + blk.bidh) * p.seqlen_q + m0;
      for (int r = threadIdx.x; r < kBlockM && r < rows_left; r += blockDim.x) lse_base[r] = INFINITY;
    }
    Tensor sO = make_tensor(make_smem_ptr(smem_o), typename Traits::SmemLayoutO{});
    for (int i = threadIdx.x; i < size(sO); i += blockDim.x) sO(i) = Element(0.f);
    __syncthreads();
    store_rows_from_smem(args, seq, blk, sO);
  }

 private:
  template <class TensorSO>
  __forceinline__ __device__ void store_rows_from_smem(FwdArgsSm80 const& args,
                                                       SeqlenInfo const& seq,
                                                       BlockCoordSm80 const& blk,
                                                       TensorSO const& sO) const {
    const FwdParams& p = args.p;
    const int m0 = blk.m_block * kBlockM;
    Element* o_base = static_cast<Element*>(p.o_ptr) +
        seq.q_offset(p.o_batch_stride, p.o_row_stride, p.o_head_stride, blk.bidb, m0, blk.bidh,
                     p.cu_seqlens_q != nullptr);
    Tensor gO = make_tensor(make_gmem_ptr(o_base), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                            make_stride(p.o_row_stride, _1{}));  // (kBlockM, kHeadDim)
    typename Traits::GmemTiledCopyO gmem_tiled_copy_o;
    auto gmem_thr_copy_o = gmem_tiled_copy_o.get_thread_slice(threadIdx.x);
    Tensor tOsO = gmem_thr_copy_o.partition_S(sO);  // (CPY, CPY_M, CPY_K)
    Tensor tOgO = gmem_thr_copy_o.partition_D(gO);
    Tensor tOcO = gmem_thr_copy_o.partition_D(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    Tensor tOrO = make_tensor<Element>(shape(tOgO));
    copy(gmem_tiled_copy_o, tOsO, tOrO);
    const int rows_left = seq.seqlen_q - m0;
    CUTE_UNROLL
    for (int m = 0; m < size<1>(tOgO); ++m) {
      if (get<0>(tOcO(0, m, 0)) < rows_left) {
        CUTE_UNROLL
        for (int k = 0; k < size<2>(tOgO); ++k) {
          if (get<1>(tOcO(0, m, k)) < p.d) copy(gmem_tiled_copy_o, tOrO(_, m, k), tOgO(_, m, k));
        }
      }
    }
  }
};

}  // namespace flashattn::sm80
