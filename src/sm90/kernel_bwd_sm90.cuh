// The Hopper (sm_90a) backward kernel: Kernel<Mainloop, Epilogue>, warp-specialized.
//
// Schedule: one CTA per (key block of kBlockN keys, query head, sequence), grid
// (num_n_blocks, h, b), one CTA per SM (shared memory and registers are sized for one). Key block
// 0 goes first: under a causal mask it is seen by the most query rows (the longest CTA).
// A CTA is 1 + 2 warpgroups:
//  - warpgroup 0, the producer, drops to kLoadRegisters registers (setmaxnreg); one thread of
//    its warp 0 issues every load (mainloop_bwd_sm90.cuh): K and V once (one transaction
//    barrier), then for each query block m that sees the key block, Q[m] with its lse_log2 rows
//    and dO[m] with its D rows into two kStages-deep mbarrier pipelines; the other warps exit;
//  - warpgroups 1 and 2, the consumers, rise to kMmaRegisters; warpgroup w owns keys
//    [64 w, 64 w + 64) of the block and holds their dK and dV in registers for the whole loop.
//    Per step they run the five GEMMs on the tensor cores (wgmma), the element-wise work between
//    them, one named barrier (both warpgroups' dS written), and add the step's dQ partial to the
//    fp32 dq_accum in global memory with red.global.add (MainloopBwdSm90::mma has the step).
// At the end the consumers scale dK by softmax_scale and store dK, dV from registers
// (EpilogueBwdSm90). A CTA whose keys no query row sees (causal with s_q < s_k, windows, seqlen_q
// = 0) loads nothing and stores zeros.
// Before it: the preprocess (D = rowsum(dO * O), lse_log2, dq_accum zeroed); after it: the
// postprocess (dQ = softmax_scale * dq_accum; GQA: the dK / dV group sums). launch_bwd_sm90.cuh.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/array.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "common/accumulator.cuh"
#include "sm90/kernel_traits_bwd_sm90.cuh"
#include "sm90/mainloop_bwd_sm90.cuh"

namespace flashattn::sm90 {

using namespace cute;

// dK, dV from the consumers' registers to global memory; rows past seqlen_k and columns past d
// are never written.
//  - h == h_k: rounded to the dtype and stored as 32-bit pairs straight from the accumulators;
//  - GQA / MQA: fp32 per query head into dk_accum / dv_accum ([b * seqlen_k, h, kHeadDim]),
//    summed over each kv head's group in head order by the postprocess (deterministic).
template <class Traits>
struct EpilogueBwdSm90 {
  using Element = typename Traits::Element;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  using Args = BwdArgsSm90<Traits>;

  template <class TensordKV>
  __forceinline__ __device__ void store(Args const& args, BwdWorkSm90 const& w, TensordKV& tdKrdK,
                                        TensordKV& tdVrdV, int tid) const {
    const BwdParams& p = args.p;
    const int n0 = w.n_block * kBlockN;
    const int rows_left = p.seqlen_k - n0;
    typename Traits::TiledMmadKV tiled_mma;
    Tensor c = tiled_mma.get_thread_slice(tid).partition_C(
        make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));  // (MMA, 1, 1): (key, col)
    static_assert(decltype(size(tdKrdK))::value % 2 == 0);
    CUTE_UNROLL
    for (int i = 0; i < size(tdKrdK); ++i) tdKrdK(i) *= p.softmax_scale;
    if (args.dk_accum == nullptr) {
      Element* dk = static_cast<Element*>(p.dk_ptr) + int64_t(w.bidb) * p.dk_batch_stride +
                    int64_t(n0) * p.dk_row_stride + int64_t(w.bidh_kv) * p.dk_head_stride;
      Element* dv = static_cast<Element*>(p.dv_ptr) + int64_t(w.bidb) * p.dv_batch_stride +
                    int64_t(n0) * p.dv_row_stride + int64_t(w.bidh_kv) * p.dv_head_stride;
      Tensor rdK = convert_fragment<Element>(tdKrdK);
      Tensor rdV = convert_fragment<Element>(tdVrdV);
      // Values (i, i + 1) are columns 2j, 2j + 1 of one row (the accumulator's pair).
      using Pair = cutlass::AlignedArray<Element, 2>;
      auto pair = [](Element a, Element b) {
        Pair v;
        v[0] = a;
        v[1] = b;
        return v;
      };
      CUTE_UNROLL
      for (int i = 0; i < size(rdK); i += 2) {
        const int r = get<0>(c(i)), col = get<1>(c(i));
        if (r < rows_left && col < p.d) {
          *reinterpret_cast<Pair*>(dk + int64_t(r) * p.dk_row_stride + col) =
              pair(rdK(i), rdK(i + 1));
          *reinterpret_cast<Pair*>(dv + int64_t(r) * p.dv_row_stride + col) =
              pair(rdV(i), rdV(i + 1));
        }
      }
    } else {
      const int64_t row_stride = int64_t(p.h) * kHeadDim;
      const int64_t base =
          (int64_t(w.bidb) * p.seqlen_k + n0) * row_stride + int64_t(w.bidh) * kHeadDim;
      float* dk = args.dk_accum + base;
      float* dv = args.dv_accum + base;
      CUTE_UNROLL
      for (int i = 0; i < size(tdKrdK); i += 2) {
        const int r = get<0>(c(i)), col = get<1>(c(i));
        if (r < rows_left && col < p.d) {
          *reinterpret_cast<float2*>(dk + r * row_stride + col) =
              make_float2(tdKrdK(i), tdKrdK(i + 1));
          *reinterpret_cast<float2*>(dv + r * row_stride + col) =
              make_float2(tdVrdV(i), tdVrdV(i + 1));
        }
      }
    }
  }
};

template <class Traits>
struct FlashAttnBwdSm90 {
  using Mainloop = MainloopBwdSm90<Traits>;
  using Epilogue = EpilogueBwdSm90<Traits>;
  using Args = BwdArgsSm90<Traits>;
  using Pipeline = typename Mainloop::Pipeline;
  static constexpr int kNThreads = Traits::kNThreads;

  struct SharedStorage {
    typename Mainloop::TensorStorage tensors;
    typename Mainloop::PipelineStorage pipelines;
  };
  static constexpr int kSmemSize = int(sizeof(SharedStorage));
  static_assert(kSmemSize <= 227 * 1024, "one CTA's shared memory");

  __forceinline__ __device__ void operator()(Args const& args, char* smem) const {
    SharedStorage& storage = *reinterpret_cast<SharedStorage*>(smem);
    const int warp_group = __shfl_sync(0xffffffffu, int(threadIdx.x) / 128, 0);
    const int warp_in_group = __shfl_sync(0xffffffffu, (int(threadIdx.x) / 32) % 4, 0);

    if (threadIdx.x == 0) storage.pipelines.barrier_kv.init(1);
    typename Pipeline::Params pipeline_params;
    pipeline_params.role =
        warp_group == 0 ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
    pipeline_params.transaction_bytes = Traits::kTmaBytesQ;
    pipeline_params.is_leader = threadIdx.x == 0;
    pipeline_params.num_consumers = Traits::kMmaThreads;
    // The constructors initialize the barriers (warp 0) and fence the initialization.
    Pipeline pipeline_q(storage.pipelines.pipeline_q, pipeline_params, Shape<_1, _1, _1>{});
    Pipeline pipeline_do(storage.pipelines.pipeline_do, pipeline_params, Shape<_1, _1, _1>{});
    __syncthreads();

    const BwdWorkSm90 w =
        BwdWorkSm90::make<Traits::kBlockM, Traits::kBlockN>(args.p, args.h_h_k_ratio);
    Mainloop mainloop;
    if (warp_group == 0) {
      cutlass::arch::warpgroup_reg_dealloc<Traits::kLoadRegisters>();
      if (warp_in_group != 0 || threadIdx.x != 0) return;
      if (w.m_block_min >= w.m_block_max) return;
      cute::prefetch_tma_descriptor(args.tma_q.get_tma_descriptor());
      cute::prefetch_tma_descriptor(args.tma_do.get_tma_descriptor());
      cute::prefetch_tma_descriptor(args.tma_k.get_tma_descriptor());
      cute::prefetch_tma_descriptor(args.tma_v.get_tma_descriptor());
      mainloop.load(args, storage.tensors, storage.pipelines, pipeline_q, pipeline_do, w);
    } else {
      cutlass::arch::warpgroup_reg_alloc<Traits::kMmaRegisters>();
      const int tid = int(threadIdx.x) - 128;
      typename Traits::TiledMmadKV tiled_mma_dkv;
      Tensor tdKrdK =
          partition_fragment_C(tiled_mma_dkv, Shape<Int<Traits::kBlockN>, Int<Traits::kHeadDim>>{});
      Tensor tdVrdV =
          partition_fragment_C(tiled_mma_dkv, Shape<Int<Traits::kBlockN>, Int<Traits::kHeadDim>>{});
      mainloop.mma(args, storage.tensors, storage.pipelines, pipeline_q, pipeline_do, w, tdKrdK,
                   tdVrdV, tid);
      Epilogue{}.store(args, w, tdKrdK, tdVrdV, tid);
    }
  }
};

template <class Kernel>
__global__ void __launch_bounds__(Kernel::kNThreads, 1)
    flash_bwd_sm90_kernel(CUTE_GRID_CONSTANT typename Kernel::Args const args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) char smem[];
  Kernel{}(args, smem);
#endif
}

}  // namespace flashattn::sm90
