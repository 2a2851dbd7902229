// Epilogue of the SM80-path forward: O (already normalized by l in registers) converted to the
// 16-bit dtype, staged through shared memory so that global stores are 16-byte vectors covering
// whole row segments (the MMA accumulator layout would give scattered 4-byte stores), and the
// LSE written by the one lane of each quad that owns column 0 of a row. Rows past seqlen_q and
// columns past d are never written; neither is anything outside this CTA's (rows, head) tile.
// Split-KV CTAs instead write their fp32 partial O_s and LSE_s (store_partial) into the scratch
// that the combine kernel reads, or, on sm_90, merge them inside the thread-block cluster that
// the splits of one tile form (merge_in_cluster): no global scratch, no second kernel.
#pragma once

#include <cute/tensor.hpp>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/lse_merge.h"
#include "common/numeric.h"
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

  // acc_o: (MMA, MMA_M, MMA_N) normalized O; lse[i]: LSE of the i-th row this thread owns (in the
  // acc_layout_rowcol order). smem_o: kBlockM x kHeadDim elements no warp reads any more.
  template <class TensorO, int kNRows>
  __forceinline__ __device__ void store(FwdArgsSm80 const& args, SeqlenInfo const& seq,
                                        BlockCoordSm80 const& blk, TensorO const& acc_o,
                                        float const (&lse)[kNRows], Element* smem_o) const {
    const FwdParams& p = args.p;
    const int tid = threadIdx.x;
    const int m0 = blk.m_block * kBlockM;
    const int rows_left = seq.seqlen_q - m0;

    if (p.softmax_lse_ptr != nullptr) {
      TiledMma tiled_mma;
      auto thr_mma = tiled_mma.get_thread_slice(tid);
      Tensor tOcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
      Tensor c = make_tensor(tOcO.data(), acc_layout_rowcol(tOcO.layout()));  // (rows, d)
      static_assert(decltype(size<0>(c))::value == kNRows);
      float* lse_base = lse_out_base(args, seq, blk);
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
  // LSE = +inf (with a sink: LSE = the sink, which then takes the whole row), without touching
  // K or V.
  __forceinline__ __device__ void store_empty(FwdArgsSm80 const& args, SeqlenInfo const& seq,
                                              BlockCoordSm80 const& blk, Element* smem_o) const {
    const FwdParams& p = args.p;
    const int m0 = blk.m_block * kBlockM;
    const int rows_left = seq.seqlen_q - m0;
    if (p.softmax_lse_ptr != nullptr) {
      float o_scale;
      const float lse = p.sinks != nullptr ? lse_with_sink(INFINITY, p.sinks[blk.bidh], &o_scale)
                                           : INFINITY;
      float* lse_base = lse_out_base(args, seq, blk);
      for (int r = threadIdx.x; r < kBlockM && r < rows_left; r += blockDim.x) lse_base[r] = lse;
    }
    Tensor sO = make_tensor(make_smem_ptr(smem_o), typename Traits::SmemLayoutO{});
    for (int i = threadIdx.x; i < size(sO); i += blockDim.x) sO(i) = Element(0.f);
    __syncthreads();
    store_rows_from_smem(args, seq, blk, sO);
  }

  // Split-KV partial of this CTA's rows into the scratch the combine kernel reads: O_s
  // (normalized by the split's own l_s) in fp32 and LSE_s (store_partial_rows). Stored straight
  // from the accumulator: the partials are a small part of a split CTA's traffic, so no smem
  // staging.
  template <class TensorO, int kNRows>
  __forceinline__ __device__ void store_partial(FwdArgsSm80 const& args, SeqlenInfo const& seq,
                                                BlockCoordSm80 const& blk, TensorO const& acc_o,
                                                float const (&lse)[kNRows]) const {
    const FwdParams& p = args.p;
    const int m0 = blk.m_block * kBlockM;
    const int64_t row0 = partial_row0(args, seq, blk) + m0;
    float* o_base = args.o_partial +
        ((int64_t(blk.split) * args.partial_rows + row0) * p.h + blk.bidh) * int64_t(p.d);
    const int64_t o_row_pitch = int64_t(p.h) * p.d;
    float* lse_base = partial_lse_base(args, seq, blk) + m0;
    store_partial_rows(
        acc_o, lse, seq.seqlen_q - m0, p.d,
        [&](int r, int col, float2 v) {
          *reinterpret_cast<float2*>(o_base + r * o_row_pitch + col) = v;
        },
        [&](int r, float l) { lse_base[r] = l; });
  }

  // ---- Split-KV merged inside a thread-block cluster (args.cluster_combine, sm_90) ----------
  // The num_splits CTAs of one (query block, head, sequence) are one cluster (cluster rank =
  // split). Each leaves its partial in its own shared memory (the main loop's buffers, free
  // by then); after a cluster barrier, CTA `rank` merges rows rank, rank + num_splits, ...,
  // reading every split's LSE_s and O_s through distributed shared memory, with the combine
  // kernel's rules (src/cuda/combine.cu: max, one log, weights by merge_weight), and stores O and
  // the LSE as store() does (the sink, if any, joins the merged LSE there). A second barrier
  // keeps each CTA's shared memory alive until its peers have read it. For a decode step this
  // removes the combine launch and the partials' round trip through L2.
  static constexpr int kMaxClusterSplits = 8;  // the portable cluster size (merge_in_cluster's sum
                                               // is written for exactly 8 terms)
  // fp32 row pitch of the staged O_s: a warp's float2 stores cover 8 rows x 32 bytes, and the
  // 8-float pad spreads those rows over the banks (2-way conflicts instead of 8-way).
  static constexpr int kPartialPitch = kHeadDim + 8;
  struct ClusterPartial {
    float o[kBlockM * kPartialPitch];           // O_s, rows < rows_left, cols < d
    float lse[kBlockM];                         // LSE_s, -inf = no key in this split
    float weight[kBlockM * kMaxClusterSplits];  // merge weights of this CTA's rows
  };

  template <class TensorO, int kNRows>
  __forceinline__ __device__ void write_cluster_partial(SeqlenInfo const& seq,
                                                        BlockCoordSm80 const& blk,
                                                        TensorO const& acc_o,
                                                        float const (&lse)[kNRows], int d,
                                                        void* smem) const {
    ClusterPartial& part = *static_cast<ClusterPartial*>(smem);
    __syncthreads();  // every warp is past its last read of the main loop's buffers
    store_partial_rows(
        acc_o, lse, seq.seqlen_q - blk.m_block * kBlockM, d,
        [&](int r, int col, float2 v) {
          *reinterpret_cast<float2*>(&part.o[r * kPartialPitch + col]) = v;
        },
        [&](int r, float l) { part.lse[r] = l; });
  }

  // A split with no key for this CTA's rows: LSE_s = -inf (its O_s is never read).
  __forceinline__ __device__ void write_cluster_empty(void* smem) const {
    ClusterPartial& part = *static_cast<ClusterPartial*>(smem);
    __syncthreads();
    for (int r = threadIdx.x; r < kBlockM; r += blockDim.x) part.lse[r] = -INFINITY;
  }

  __forceinline__ __device__ void merge_in_cluster(FwdArgsSm80 const& args, SeqlenInfo const& seq,
                                                   BlockCoordSm80 const& blk, void* smem) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    ClusterPartial& part = *static_cast<ClusterPartial*>(smem);
    const FwdParams& p = args.p;
    const int ns = args.num_splits, rank = blk.split;
    const int m0 = blk.m_block * kBlockM;
    const int rows = min(kBlockM, seq.seqlen_q - m0);
    const int my_rows = rows > rank ? (rows - rank + ns - 1) / ns : 0;
    cluster_barrier();  // every split's partial is in its shared memory

    // Per row: the merged LSE (written out) and each split's weight (kept for the O pass).
    float* lse_base = p.softmax_lse_ptr != nullptr ? lse_out_base(args, seq, blk) : nullptr;
    for (int lr = threadIdx.x; lr < my_rows; lr += blockDim.x) {
      const int r = rank + lr * ns;
      float l[kMaxClusterSplits];
      float max_lse = -INFINITY;
      CUTE_UNROLL
      for (int s = 0; s < kMaxClusterSplits; ++s) {
        l[s] = s < ns ? cluster_load(cluster_map(&part.lse[r], s)) : -INFINITY;
        max_lse = fmaxf(max_lse, l[s]);
      }
      float total = -INFINITY;  // every split empty: stays -inf (reported as +inf)
      if (max_lse != -INFINITY) {
        // The combine kernel's sum: lane s holds split s's term and a shuffle butterfly (xor 16,
        // 8, 4, 2, 1) adds them; with at most 8 splits that is this order, so a merge here and
        // one in the combine kernel give the same bits (tested paged vs contiguous).
        float e[kMaxClusterSplits];
        CUTE_UNROLL
        for (int s = 0; s < kMaxClusterSplits; ++s) e[s] = __expf(l[s] - max_lse);
        const float sum = ((e[0] + e[4]) + (e[2] + e[6])) + ((e[1] + e[5]) + (e[3] + e[7]));
        total = max_lse + __logf(sum);
      }
      // The sink joins once, as the combine kernel adds it (same function, same bits); -inf
      // (no sink) is logaddexp's identity.
      if (p.sinks != nullptr) total = logaddexp(total, p.sinks[blk.bidh]);
      CUTE_UNROLL
      for (int s = 0; s < kMaxClusterSplits; ++s)
        part.weight[lr * kMaxClusterSplits + s] = merge_weight(l[s], total);
      if (lse_base != nullptr) lse_base[r] = finalize_lse(total);
    }
    __syncthreads();

    // O = sum_s weight_s O_s, 4 columns per thread and step; an empty split (weight 0) is never
    // read (its O_s may hold anything).
    Element* o_base = static_cast<Element*>(p.o_ptr) +
        seq.q_offset(p.o_batch_stride, p.o_row_stride, p.o_head_stride, blk.bidb, m0, blk.bidh,
                     p.cu_seqlens_q != nullptr);
    constexpr int kChunks = kHeadDim / 4;
    for (int idx = threadIdx.x; idx < my_rows * kChunks; idx += blockDim.x) {
      const int lr = idx / kChunks, col = (idx % kChunks) * 4;
      if (col >= p.d) continue;
      const int r = rank + lr * ns;
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int s = 0; s < ns; ++s) {
        const float w = part.weight[lr * kMaxClusterSplits + s];
        if (w != 0.f) {
          const float4 v = cluster_load4(cluster_map(&part.o[r * kPartialPitch + col], s));
          acc.x += w * v.x, acc.y += w * v.y, acc.z += w * v.z, acc.w += w * v.w;
        }
      }
      // Rounded by the same functions as the combine kernel's stores (common/numeric.h).
      auto to16 = [](float v) {
        return std::is_same_v<Element, cutlass::half_t> ? float_to_fp16(v) : float_to_bf16(v);
      };
      struct alignas(8) Four { uint16_t e[4]; } out;
      out.e[0] = to16(acc.x), out.e[1] = to16(acc.y), out.e[2] = to16(acc.z), out.e[3] = to16(acc.w);
      *reinterpret_cast<Four*>(o_base + int64_t(r) * p.o_row_stride + col) = out;
    }
    cluster_barrier();  // peers are done reading this CTA's shared memory
#endif
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
  // A split's partial from this thread's accumulator values, rows < rows_left only: each fp32
  // column pair (col, col + 1) of O with col < d goes to store_pair(r, col, v) (8-byte stores, a
  // quad covers 32 contiguous bytes), and each row's LSE_s, from the quad lane holding column 0,
  // to store_lse(r, lse) with -inf for a row that saw no key in the split (the combine's "empty"
  // marker; finalize() reports it as +inf).
  template <class TensorO, int kNRows, class StorePair, class StoreLse>
  __forceinline__ __device__ static void store_partial_rows(TensorO const& acc_o,
                                                            float const (&lse)[kNRows],
                                                            int rows_left, int d,
                                                            StorePair store_pair,
                                                            StoreLse store_lse) {
    TiledMma tiled_mma;
    auto thr_mma = tiled_mma.get_thread_slice(threadIdx.x);
    Tensor tOcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    Tensor c = make_tensor(tOcO.data(), acc_layout_rowcol(tOcO.layout()));    // (rows, d)
    Tensor o = make_tensor(acc_o.data(), acc_layout_rowcol(acc_o.layout()));  // (rows, d)
    static_assert(decltype(size<0>(c))::value == kNRows);
    const bool owns_col0 = get<1>(c(0, 0)) == 0;
    CUTE_UNROLL
    for (int mi = 0; mi < kNRows; ++mi) {
      const int r = get<0>(c(mi, 0));
      if (r >= rows_left) continue;
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(o); ni += 2) {
        const int col = get<1>(c(mi, ni));  // even; col + 1 is its pair (d % 8 == 0)
        if (col < d) store_pair(r, col, make_float2(o(mi, ni), o(mi, ni + 1)));
      }
      if (owns_col0) store_lse(r, lse[mi] == INFINITY ? -INFINITY : lse[mi]);
    }
  }

  // The LSE of this CTA's first row: dense [b, h, s_q]; varlen [h, total_q].
  __forceinline__ __device__ static float* lse_out_base(FwdArgsSm80 const& args,
                                                        SeqlenInfo const& seq,
                                                        BlockCoordSm80 const& blk) {
    const FwdParams& p = args.p;
    const int m0 = blk.m_block * kBlockM;
    return p.cu_seqlens_q != nullptr
        ? p.softmax_lse_ptr + int64_t(blk.bidh) * p.total_q + seq.q_row0 + m0
        : p.softmax_lse_ptr + (int64_t(blk.bidb) * p.h + blk.bidh) * p.seqlen_q + m0;
  }
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
