// The Hopper (sm_90a) forward kernel: Kernel<Mainloop, Epilogue, TileScheduler>, warp-specialized
// and persistent.
//
// Schedule: a grid of min(tiles, SMs) CTAs, one per SM (shared memory and registers are sized
// for one). CTA c runs tile c first, then whatever tile its producer takes next from the shared
// counter (TileSchedulerSm90: list scheduling in its order); the producer passes each index to
// the consumers through shared memory (PipelineStorage::tile_slot).
// A CTA is 1 + kMmaWarpGroups warpgroups:
//  - warpgroup 0, the producer, drops to kLoadRegisters registers (setmaxnreg); its warp 0
//    issues every TMA load of Q, K and V (thread 0) into the pipelines of mainloop_fwd_sm90.cuh,
//    the other three warps exit;
//  - warpgroups 1.., the consumers, rise to kMmaRegisters registers; each owns 64 query rows of
//    the tile, runs its GEMMs on the tensor cores (wgmma), its online softmax, and its epilogue
//    (epilogue_fwd_sm90.cuh).
// The producer runs ahead of the consumers by the pipeline depth, across tile boundaries: the
// next tile's Q (once every warpgroup's last S GEMM is done) and first K blocks load while the
// consumers finish the current tile and store its O; its first V waits until that O, staged in
// the V buffers, has been read out (barriers_sm90.cuh).
// Attention sinks join each finished row's denominator in the epilogue (add_sink), not the
// mainloop. Tiles whose rows see no key store O = 0, LSE = +inf (the sink, with sinks) and load
// nothing; tiles past a sequence's
// end (varlen grids are sized by the longest sequence) are skipped by every role alike.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "common/online_softmax.cuh"
#include "sm90/barriers_sm90.cuh"
#include "sm90/epilogue_fwd_sm90.cuh"
#include "sm90/kernel_traits_fwd_sm90.cuh"
#include "sm90/mainloop_fwd_sm90.cuh"

namespace flashattn::sm90 {

using namespace cute;

template <class Traits, class Features>
struct FlashAttnFwdSm90 {
  using Mainloop = MainloopFwdSm90<Traits, Features>;
  using Epilogue = EpilogueFwdSm90<Traits>;
  using Args = FwdArgsSm90<Traits>;
  using PipelineKV = typename Mainloop::PipelineKV;
  static constexpr int kNThreads = Traits::kNThreads;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;

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

    if (threadIdx.x == 0) {
      storage.pipelines.barrier_q.init(1);
      for (int i = 0; i < 2; ++i) {
        storage.pipelines.tile_full[i].init(1);
        storage.pipelines.tile_empty[i].init(Traits::kMmaThreads);
      }
    }
    typename PipelineKV::Params pipeline_params;
    pipeline_params.role = warp_group == 0 ? PipelineKV::ThreadCategory::Producer
                                           : PipelineKV::ThreadCategory::Consumer;
    pipeline_params.transaction_bytes = Traits::kTmaBytesKV;
    pipeline_params.is_leader = threadIdx.x == 0;
    pipeline_params.num_consumers = Traits::kMmaThreads;
    // The constructors initialize the barriers (warp 0) and fence the initialization.
    PipelineKV pipeline_k(storage.pipelines.pipeline_k, pipeline_params, Shape<_1, _1, _1>{});
    PipelineKV pipeline_v(storage.pipelines.pipeline_v, pipeline_params, Shape<_1, _1, _1>{});
    __syncthreads();

    Mainloop mainloop;
    if (warp_group == 0) {
      cutlass::arch::warpgroup_reg_dealloc<Traits::kLoadRegisters>();
      if (warp_in_group != 0) return;
      const bool leader = threadIdx.x == 0;
      if (leader) {
        cute::prefetch_tma_descriptor(args.tma_q.get_tma_descriptor());
        if (args.has_kv) {
          cute::prefetch_tma_descriptor(args.tma_k.get_tma_descriptor());
          cute::prefetch_tma_descriptor(args.tma_v.get_tma_descriptor());
        }
      }
      auto write = cutlass::make_producer_start_state<PipelineKV>();
      int tile = blockIdx.x;
#pragma unroll 1
      for (int k = 0; tile < args.scheduler.num_tiles; ++k) {
        const TileWorkSm90 w = TileWorkSm90::make<kBlockM, kBlockN>(args, tile);
        int next = 0;
        // Take the next tile and hand it to the consumers (slot k % 2, its (k / 2)-th use).
        auto take_next = [&] {
          int v = 0;
          if (leader) v = atomicAdd(args.tile_counter, 1);
          next = __shfl_sync(0xffffffffu, v, 0) + int(gridDim.x);
          if (leader) {
            const int slot = k & 1;
            storage.pipelines.tile_empty[slot].wait(((k >> 1) & 1) ^ 1);
            storage.pipelines.tile_slot[slot] = next;
            storage.pipelines.tile_full[slot].arrive();
          }
        };
        if (w.keys) {
          mainloop.load(args, storage.tensors, storage.pipelines, pipeline_k, pipeline_v, write, w,
                        leader, take_next);
        } else {
          take_next();
        }
        tile = next;
      }
    } else {
      cutlass::arch::warpgroup_reg_alloc<Traits::kMmaRegisters>();
      const int wg = warp_group - 1;
      const int tid_wg = threadIdx.x % 128;
      Epilogue epilogue;
      if (tid_wg == 0 && wg == 0 && args.o_by_tma)
        cute::prefetch_tma_descriptor(args.tma_o.get_tma_descriptor());
      named_barrier_arrive(kQueryEmpty, Traits::kMmaThreads + 32);  // the first Q may load
      named_barrier_arrive(kOEmpty, Traits::kMmaThreads + 32);      // and the first V
      if constexpr (Traits::kPingPong) {
        if (wg == 0) named_barrier_arrive(kTurn, 256);  // warpgroup 0 takes the first turn
      }
      typename Mainloop::PipelineState read;
      int q_phase = 0;
      int tile = blockIdx.x;
#pragma unroll 1
      for (int k = 0; tile < args.scheduler.num_tiles; ++k) {
        const TileWorkSm90 w = TileWorkSm90::make<kBlockM, kBlockN>(args, tile);
        if (w.keys) {
          storage.pipelines.barrier_q.wait(q_phase);
          q_phase ^= 1;
          const TileUnitsSm90 units = Mainloop::units(args, w);
          OnlineSoftmax<2, Mainloop::kPLog2Scale> softmax(units.unit_log2);
          Tensor tOrO = partition_fragment_C(typename Traits::TiledMmaO{},
                                             Shape<_64, Int<Traits::kHeadDim>>{});
          mainloop.mma(args, storage.tensors, pipeline_k, pipeline_v, read, w, units, tOrO,
                       softmax, wg, tid_wg);
          float lse[2];
          softmax.template finalize_scaled<Features::kDropout || Traits::kFp8>(
              tOrO, units.unit, lse, units.o_scale);
          if (args.p.sinks != nullptr) add_sink(tOrO, args.p.sinks[w.bidh], lse);
          epilogue.store(args, w, tOrO, lse,
                         reinterpret_cast<typename Traits::ElementOut*>(storage.tensors.smem_v.data()),
                         wg, tid_wg);
        } else if (w.rows) {
          epilogue.store_empty(args, w, wg, tid_wg);
        }
        const int slot = k & 1;
        storage.pipelines.tile_full[slot].wait((k >> 1) & 1);
        tile = storage.pipelines.tile_slot[slot];
        storage.pipelines.tile_empty[slot].arrive();
      }
    }
  }
};

template <class Kernel>
__global__ void __launch_bounds__(Kernel::kNThreads, 1)
    flash_fwd_sm90_kernel(CUTE_GRID_CONSTANT typename Kernel::Args const args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) char smem[];
  Kernel{}(args, smem);
#endif
}

}  // namespace flashattn::sm90
