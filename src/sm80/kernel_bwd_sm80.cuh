// The SM80-path FlashAttention-2 backward kernel: Kernel<Mainloop, Epilogue, TileScheduler>.
//
// Schedule: one CTA of 8 warps per (key block of kBlockN keys, query head, sequence). The CTA
//   1. reads its sequence's geometry (SeqlenInfo) and leaves if its key block starts past the
//      sequence's keys (varlen grids are sized by the longest sequence);
//   2. inverts the shared VisibilityMask to find the query rows that see any of its keys and
//      turns them into query blocks [m_block_min, m_block_max); if there are none (seqlen_q = 0,
//      a window that misses the block, keys past seqused_k) the gradients of its keys are zero;
//   3. runs the main loop (mainloop_bwd_sm80.cuh): dK, dV accumulate in registers, dQ partials go
//      to the fp32 dq_accum with atomics;
//   4. scales dK by softmax_scale and stores dK, dV (epilogue below): straight into dk/dv when
//      every kv head has one query head, else as fp32 per query head for the GQA reduction.
// Key blocks are handed out from the first one: with a causal mask (bottom-right aligned) the
// first key blocks are seen by the most query rows, so the longest CTAs start first.
#pragma once

#include <cute/tensor.hpp>

#include "common/mask.h"
#include "common/seqlen.h"
#include "sm80/bwd_args_sm80.h"
#include "sm80/mainloop_bwd_sm80.cuh"

namespace flashattn::sm80 {

using namespace cute;

struct TileSchedulerBwdSm80 {
  static dim3 grid_shape(BwdArgsSm80 const& args) {
    return dim3(unsigned(args.num_n_blocks), unsigned(args.p.h), unsigned(args.p.b));
  }
  __forceinline__ __device__ static BwdBlockCoordSm80 block_coord(BwdArgsSm80 const&) {
    BwdBlockCoordSm80 c;
    c.n_block = int(blockIdx.x);
    c.bidh = int(blockIdx.y);
    c.bidb = int(blockIdx.z);
    return c;
  }
};

// dK, dV from registers to global memory; rows past the sequence's keys and columns past d are
// never written.
//  - h == h_k (dk / dv in the dtype): staged through shared memory (the K and V buffers, free
//    once the main loop is done), then written as whole 16-byte row segments, 8 per 128-byte
//    line. Straight from the accumulators each warp store would cover 8 rows x 16 bytes, 8 lines
//    per instruction, 64 such stores per thread at d = 128: the LSU cycles of that alone are
//    ~2 us per CTA, paid at every CTA's end with nothing to overlap it (1 CTA per SM).
//  - GQA (fp32 per query head, reduced by the postprocess): straight from the accumulators, as
//    64-bit pairs.
template <class Traits>
struct EpilogueBwdSm80 {
  using Element = typename Traits::Element;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  using GmemTiledCopyStore = decltype(make_tiled_copy(
      Copy_Atom<UniversalCopy<cute::uint128_t>, Element>{}, typename Traits::GmemLayoutAtom{},
      Layout<Shape<_1, Int<Traits::kGmemElemsPerLoad>>>{}));

  // One (kBlockN x kHeadDim) gradient tile: accumulators (already in the dtype) -> smem_tile ->
  // dst rows [0, rows_left), columns [0, d).
  template <class TensorR>
  __forceinline__ __device__ static void store_tile(TensorR const& r, Element* smem_tile,
                                                    Element* dst, int64_t row_stride,
                                                    int rows_left, int d) {
    typename Traits::TiledMmadKV tiled_mma;
    Tensor s = make_tensor(make_smem_ptr(smem_tile), typename Traits::SmemLayoutKV{});
    auto smem_tiled_copy = make_tiled_copy_C(typename Traits::SmemCopyAtomPdS{}, tiled_mma);
    auto smem_thr_copy = smem_tiled_copy.get_thread_slice(threadIdx.x);
    copy(smem_tiled_copy, smem_thr_copy.retile_S(r), smem_thr_copy.partition_D(s));
    __syncthreads();
    GmemTiledCopyStore gmem_tiled_copy;
    auto gmem_thr_copy = gmem_tiled_copy.get_thread_slice(threadIdx.x);
    Tensor g = make_tensor(make_gmem_ptr(dst), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                           make_stride(row_stride, _1{}));
    Tensor tS = gmem_thr_copy.partition_S(s);  // (CPY, CPY_N, CPY_D)
    Tensor tG = gmem_thr_copy.partition_D(g);
    Tensor tC =
        gmem_thr_copy.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
    Tensor tR = make_fragment_like(tS);
    copy(gmem_tiled_copy, tS, tR);
    CUTE_UNROLL
    for (int m = 0; m < size<1>(tG); ++m) {
      if (get<0>(tC(0, m, 0)) >= rows_left) continue;
      CUTE_UNROLL
      for (int k = 0; k < size<2>(tG); ++k)  // d % 8 == 0: a 16-byte chunk is in or out whole
        if (get<1>(tC(0, m, k)) < d) copy(gmem_tiled_copy, tR(_, m, k), tG(_, m, k));
    }
  }

  // rows_left: keys of this block inside the sequence's k/v rows (seqused_k included: keys past
  // it are stored as the zeros their accumulators hold). smem_k / smem_v: the main loop's K and V
  // buffers, for the staging.
  template <class TensordK, class TensordV>
  __forceinline__ __device__ void store(BwdArgsSm80 const& args, SeqlenInfo const& seq,
                                        BwdBlockCoordSm80 const& blk, int rows_left,
                                        TensordK& acc_dk, TensordV& acc_dv, Element* smem_k,
                                        Element* smem_v) const {
    const BwdParams& p = args.p;
    const bool varlen = p.cu_seqlens_q != nullptr;
    const int n0 = blk.n_block * kBlockN;
    typename Traits::TiledMmadKV tiled_mma;
    auto thr_mma = tiled_mma.get_thread_slice(threadIdx.x);
    Tensor c = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
    static_assert(decltype(size<0>(acc_dk))::value % 2 == 0);
    CUTE_UNROLL
    for (int i = 0; i < size(acc_dk); ++i) acc_dk(i) *= p.softmax_scale;
    if (p.p_dropout > 0.f) {
      // dV accumulated (P Z)^T dO: the kept probabilities' 1 / (1 - p), applied once.
      CUTE_UNROLL
      for (int i = 0; i < size(acc_dv); ++i) acc_dv(i) *= args.rp_dropout;
    }

    if (args.dk_accum == nullptr) {
      const int bidh_kv = blk.bidh / args.h_h_k_ratio;
      Element* dk = static_cast<Element*>(p.dk_ptr) +
          seq.k_offset(p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, blk.bidb, n0, bidh_kv, varlen);
      Element* dv = static_cast<Element*>(p.dv_ptr) +
          seq.k_offset(p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, blk.bidb, n0, bidh_kv, varlen);
      __syncthreads();  // every warp is done reading sK and sV
      store_tile(convert_fragment<Element>(acc_dk), smem_k, dk, p.dk_row_stride, rows_left, p.d);
      store_tile(convert_fragment<Element>(acc_dv), smem_v, dv, p.dv_row_stride, rows_left, p.d);
    } else {
      const int64_t row_stride = int64_t(p.h) * args.d_accum;
      const int64_t base = (accum_row0_k(p, seq, blk.bidb) + n0) * row_stride +
                           int64_t(blk.bidh) * args.d_accum;
      float* dk = args.dk_accum + base;
      float* dv = args.dv_accum + base;
      CUTE_UNROLL
      for (int i = 0; i < size(acc_dk); i += 2) {
        const int r = get<0>(c(i)), col = get<1>(c(i));
        if (r < rows_left && col < p.d) {
          *reinterpret_cast<float2*>(dk + r * row_stride + col) = make_float2(acc_dk(i), acc_dk(i + 1));
          *reinterpret_cast<float2*>(dv + r * row_stride + col) = make_float2(acc_dv(i), acc_dv(i + 1));
        }
      }
    }
  }
};

template <class Traits, class Mainloop, class Epilogue, class TileScheduler>
struct FlashAttnBwdSm80 {
  static constexpr int kNThreads = Traits::kNThreads;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  // dK + dV alone take 128 fp32 registers per thread at d = 128: one CTA of 8 warps per SM.
  static constexpr int kMinBlocksPerSm = 1;

  struct SharedStorage {
    typename Mainloop::SharedStorage mainloop;
  };
  static constexpr int kSmemSize = int(sizeof(SharedStorage));

  __forceinline__ __device__ void operator()(BwdArgsSm80 const& args, char* smem) const {
    SharedStorage& storage = *reinterpret_cast<SharedStorage*>(smem);
    const BwdBlockCoordSm80 blk = TileScheduler::block_coord(args);
    const BwdParams& p = args.p;
    const SeqlenInfo seq = SeqlenInfo::make(p, blk.bidb);
    // Every k/v row of the sequence gets a gradient, also those past seqused_k (zeros).
    const int seqlen_k_rows = seq.rows_k;
    const int n0 = blk.n_block * kBlockN;
    if (n0 >= seqlen_k_rows) return;

    typename Traits::TiledMmadKV tiled_mma;
    Tensor acc_dk = partition_fragment_C(tiled_mma, Shape<Int<kBlockN>, Int<kHeadDim>>{});  // (MMA, MMA_N, MMA_D)
    Tensor acc_dv = partition_fragment_C(tiled_mma, Shape<Int<kBlockN>, Int<kHeadDim>>{});  // (MMA, MMA_N, MMA_D)
    clear(acc_dk);
    clear(acc_dv);

    if (n0 < seq.seqlen_k && seq.seqlen_q > 0) {
      const VisibilityMask mask = VisibilityMask::make(seq.seqlen_q, seq.seqlen_k, p.is_causal,
                                                       p.window_size_left, p.window_size_right);
      int m_lo = 0, m_hi = 0;
      query_range(mask, n0, min(n0 + kBlockN, seq.seqlen_k), &m_lo, &m_hi);
      if (m_lo < m_hi) {
        Mainloop{}.run(args, storage.mainloop, seq, blk, mask, m_lo / kBlockM,
                       (m_hi + kBlockM - 1) / kBlockM, acc_dk, acc_dv);
      }
    }
    Epilogue{}.store(args, seq, blk, seqlen_k_rows - n0, acc_dk, acc_dv,
                     storage.mainloop.smem_k.data(), storage.mainloop.smem_v.data());
  }
};

template <class Kernel>
__global__ void __launch_bounds__(Kernel::kNThreads, Kernel::kMinBlocksPerSm)
    flash_bwd_sm80_kernel(CUTE_GRID_CONSTANT BwdArgsSm80 const args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) char smem[];
  Kernel{}(args, smem);
#endif
}

}  // namespace flashattn::sm80
