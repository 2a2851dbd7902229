// Epilogue of the SM80-path forward: O (already normalized by l in registers) converted to the
// 16-bit dtype, staged through shared memory so that global stores are 16-byte vectors covering
// whole row segments (the MMA accumulator layout would give scattered 4-byte stores), and the
// LSE written by the one lane of each quad that owns column 0 of a row. Rows past seqlen_q and
// columns past d are never written; neither is anything outside this CTA's (rows, head) tile.
// Split-KV CTAs instead write their fp32 partial O_s and LSE_s (store_partial) into the scratch
// that the combine kernel reads.
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

  // Split-KV partial of this CTA's rows: O_s (normalized by the split's own l_s) in fp32 and
  // LSE_s, with -inf for a row that saw no key in this split (the combine's "empty" marker; the
  // row's O_s is then never read). Stored straight from the accumulator: each thread's column
  // pairs are 8-byte stores (a quad covers 32 contiguous bytes); the partials are a small part
  // of a split CTA's traffic, so no smem staging.
  template <class TensorO, int kNRows>
  __forceinline__ __device__ void store_partial(FwdArgsSm80 const& args, SeqlenInfo const& seq,
                                                BlockCoordSm80 const& blk, TensorO const& acc_o,
                                                float const (&lse)[kNRows]) const {
    const FwdParams& p = args.p;
    const int m0 = blk.m_block * kBlockM;
    const int rows_left = seq.seqlen_q - m0;
    TiledMma tiled_mma;
    auto thr_mma = tiled_mma.get_thread_slice(threadIdx.x);
    Tensor tOcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    Tensor c = make_tensor(tOcO.data(), acc_layout_rowcol(tOcO.layout()));    // (rows, d)
    Tensor o = make_tensor(acc_o.data(), acc_layout_rowcol(acc_o.layout()));  // (rows, d)
    static_assert(decltype(size<0>(c))::value == kNRows);
    const int64_t row0 = partial_row0(args, seq, blk) + m0;
    float* o_base = args.o_partial +
        ((int64_t(blk.split) * args.partial_rows + row0) * p.h + blk.bidh) * int64_t(p.d);
    const int64_t o_row_pitch = int64_t(p.h) * p.d;
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      const int r = get<0>(c(mi, 0));
      if (r >= rows_left) continue;
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(o); ni += 2) {
        const int col = get<1>(c(mi, ni));  // even; col + 1 is its pair (d % 8 == 0)
        if (col < p.d) {
          *reinterpret_cast<float2*>(o_base + r * o_row_pitch + col) =
              make_float2(o(mi, ni), o(mi, ni + 1));
        }
      }
    }
    float* lse_base = partial_lse_base(args, seq, blk) + m0;
    if (get<1>(c(0, 0)) == 0) {  // the quad lane holding column 0
      CUTE_UNROLL
      for (int mi = 0; mi < kNRows; ++mi) {
        const int r = get<0>(c(mi, 0));
        if (r < rows_left) lse_base[r] = lse[mi] == INFINITY ? -INFINITY : lse[mi];
      }
    }
  }

  // A split whose chunk of keys is empty for this CTA: LSE_s = -inf for its rows (O_s unread).
  __forceinline__ __device__ void store_empty_partial(FwdArgsSm80 const& args,
                                                      SeqlenInfo const& seq,
                                                      BlockCoordSm80 const& blk) const {
    const int m0 = blk.m_block * kBlockM;
    const int rows_left = seq.seqlen_q - m0;
    float* lse_base = partial_lse_base(args, seq, blk) + m0;
    for (int r = threadIdx.x; r < kBlockM && r < rows_left; r += blockDim.x) lse_base[r] = -INFINITY;
  }

 private:
  // Row of this sequence's first query in the partial O: [splits, b * seqlen_q | total_q, h, d].
  __forceinline__ __device__ static int64_t partial_row0(FwdArgsSm80 const& args,
                                                         SeqlenInfo const& seq,
                                                         BlockCoordSm80 const& blk) {
    return args.p.cu_seqlens_q != nullptr ? seq.q_row0 : int64_t(blk.bidb) * args.p.seqlen_q;
  }
  // LSE_s of this (sequence, head)'s first query: the LSE layout (dense [b, h, s_q], varlen
  // [h, total_q]) per split, splits h * partial_rows apart.
  __forceinline__ __device__ static float* partial_lse_base(FwdArgsSm80 const& args,
                                                            SeqlenInfo const& seq,
                                                            BlockCoordSm80 const& blk) {
    const FwdParams& p = args.p;
    const int64_t idx = p.cu_seqlens_q != nullptr
        ? int64_t(blk.bidh) * args.partial_rows + seq.q_row0
        : (int64_t(blk.bidb) * p.h + blk.bidh) * p.seqlen_q;
    return args.lse_partial + int64_t(blk.split) * p.h * args.partial_rows + idx;
  }

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
