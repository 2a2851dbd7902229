// The SM80-path FlashAttention-2 forward kernel: Kernel<Mainloop, Epilogue, TileScheduler>.
//
// Interface (the one a second arch's kernel implements too): the host fills Arguments
// (FwdArgumentsSm80: the params and the family's extras), Kernel::to_underlying_arguments turns
// them into the Params the kernel reads (FwdArgsSm80: derived values computed once on the host),
// Kernel::grid_shape sizes the grid, and the kernel's CTAs loop over the work tiles the
// TileScheduler hands out (initial_work, next_work), with one SharedStorage.
//
// Schedule: one CTA of kNWarps warps per (query block of kBlockM rows, query head, sequence):
// the SM80 schedulers hand each CTA one tile, no persistence. For its tile the CTA
//   1. reads its sequence's geometry (SeqlenInfo: dense, varlen, seqused_k) and leaves if its
//      query block starts past the sequence end (varlen grids are sized by the longest sequence);
//   2. asks the shared VisibilityMask which keys any of its rows can see, [n_lo, n_hi), and
//      turns that into key blocks [n_block_min, n_block_max); an empty range (seqlen_k = 0, or a
//      window that misses every key) writes O = 0, LSE = +inf and ends;
//   3. runs the main loop (mainloop_fwd_sm80.cuh) over those blocks, last block first;
//   4. normalizes O by the softmax sum (with attention sinks, by the sum and the sink's term:
//      add_sink, common/online_softmax.cuh) and stores O and the LSE (epilogue_fwd_sm80.cuh).
// Query blocks are handed out from the last one down: with a causal mask the last blocks have
// the most keys, and starting them first shortens the tail of the grid.
//
// The split-capable kernels (Features::kSplit) add, before step 2:
//  - paged K/V: the block-table entries the sequence uses are checked (pages_in_range);
//  - the KV-cache hooks: K/V batch row kv_batch_idx[bidb]; keys from k_leftpad[bidb], so the
//    sequence's s_k is seqused_k[bidb] - k_leftpad[bidb] and key index j counts from the pad;
//  - split s of num_splits takes the s-th of num_splits equal chunks of the CTA's visible key
//    blocks [n_block_min, n_block_max) and writes an fp32 partial (O_s normalized by its own l_s,
//    LSE_s; -inf when the chunk is empty) that the combine kernel merges by LSE; with
//    args.cluster_combine (sm_90, contiguous K/V) the splits of a tile are one thread-block
//    cluster and merge through distributed shared memory instead (EpilogueFwdSm80::
//    merge_in_cluster). Every CTA of such a cluster reaches the merge, empty splits included: it
//    has two cluster barriers. The paged kernels do not contain the merge: inlined there it
//    raised the main loop's register pressure past the limit (48-80 bytes spilled, paged decode
//    2-3 % slower at >= 16k keys).

#include <cute/tensor.hpp>

#include "common/mask.h"
#include "common/seqlen.h"
#include "sm80/epilogue_fwd_sm80.cuh"
#include "sm80/fwd_args_sm80.h"
#include "sm80/mainloop_fwd_sm80.cuh"
#include "common/online_softmax.cuh"
#include "sm80/tile_size_sm80.h"

namespace flashattn::sm80 {

using namespace cute;

// A tile of work: (query block, head, sequence[, split]), or none (valid = false: the CTA is done).
struct WorkTileSm80 {
  BlockCoordSm80 blk;
  bool valid = false;
  __forceinline__ __device__ bool is_valid() const { return valid; }

  // The tile of query block num_m_blocks - 1 - m_from_last (heaviest first), split `split`, head
  // blockIdx.y, sequence blockIdx.z: the SM80 grids' (x, heads, batch) layout.
  // (TileSchedulerSplitSm80 writes the same fields itself; see there.)
  __forceinline__ __device__ static WorkTileSm80 of_grid(FwdArgsSm80 const& args, int m_from_last,
                                                         int split) {
    WorkTileSm80 w;
    w.blk.m_block = args.num_m_blocks - 1 - m_from_last;
    w.blk.split = split;
    w.blk.bidh = int(blockIdx.y);
    w.blk.bidb = int(blockIdx.z);
    w.blk.bidb_kv = w.blk.bidb;
    w.valid = true;
    return w;
  }
};

// The tile schedulers. A CTA starts at initial_work and moves on with next_work until a tile is
// not valid. The SM80 grids have one CTA per tile (kPersistent = false): next_work never has one,
// and the kernel runs the one tile without the loop. A persistent scheduler (a grid of one CTA
// per SM walking the tiles, as TileSchedulerSm90 does) returns the CTA's next tile there.

// grid = (query blocks, heads, batch); heaviest (last) query blocks first.
struct TileSchedulerSm80 {
  static constexpr bool kPersistent = false;
  static dim3 grid_shape(FwdArgsSm80 const& args) {
    return dim3(unsigned(args.num_m_blocks), unsigned(args.p.h), unsigned(args.p.b));
  }
  __forceinline__ __device__ static WorkTileSm80 initial_work(FwdArgsSm80 const& args) {
    return WorkTileSm80::of_grid(args, int(blockIdx.x), 0);
  }
  __forceinline__ __device__ static WorkTileSm80 next_work(FwdArgsSm80 const&, WorkTileSm80 const&) {
    return WorkTileSm80{};
  }
};

// Split-KV: grid = (query blocks * splits, heads, batch); the splits of one query block are
// adjacent in x, heaviest query blocks first as above.
struct TileSchedulerSplitSm80 {
  static constexpr bool kPersistent = false;
  static dim3 grid_shape(FwdArgsSm80 const& args) {
    return dim3(unsigned(args.num_m_blocks * args.num_splits), unsigned(args.p.h),
                unsigned(args.p.b));
  }
  __forceinline__ __device__ static WorkTileSm80 initial_work(FwdArgsSm80 const& args) {
    // Field by field, query block before split: of_grid's arguments would compute them in the
    // other order, which reorders the kernel's first instructions.
    WorkTileSm80 w;
    w.blk.m_block = args.num_m_blocks - 1 - int(blockIdx.x) / args.num_splits;
    w.blk.split = int(blockIdx.x) % args.num_splits;
    w.blk.bidh = int(blockIdx.y);
    w.blk.bidb = int(blockIdx.z);
    w.blk.bidb_kv = w.blk.bidb;
    w.valid = true;
    return w;
  }
  __forceinline__ __device__ static WorkTileSm80 next_work(FwdArgsSm80 const&, WorkTileSm80 const&) {
    return WorkTileSm80{};
  }
};

// Whether every block-table entry of the pages that sequence bidb's first seqlen_k keys occupy
// is a valid page, [0, num_blocks). The entries are device values that nothing validated on the
// host; a sequence with a bad one is treated as empty (O = 0, LSE = +inf) instead of read out
// of bounds, the rule the KV-cache layer documents (docs/kvcache.md). Every CTA of the sequence
// scans all of its pages (ceil(seqlen_k / page) ints, L2-resident after the first CTA), so the
// CTAs of all its query blocks, heads and splits agree. Called by every thread of the CTA.
__forceinline__ __device__ bool pages_in_range(FwdParams const& p, int bidb, int seqlen_k) {
  const int* row = p.block_table + int64_t(bidb) * p.block_table_batch_stride;
  const int used = (seqlen_k + p.page_block_size - 1) / p.page_block_size;
  bool bad = false;
  for (int j = threadIdx.x; j < used; j += blockDim.x) {
    const int page = row[j];
    bad |= page < 0 || page >= p.num_blocks;
  }
  return __syncthreads_or(bad) == 0;
}

template <class Traits, class Features, class Mainloop, class Epilogue, class TileScheduler>
struct FlashAttnFwdSm80 {
  static constexpr int kNThreads = Traits::kNThreads;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  // 2 CTAs of 4 warps per SM bounds registers to 255 per thread; with 8 warps one CTA fills the
  // same register file.
  static constexpr int kMinBlocksPerSm = Traits::kNWarps == 4 ? 2 : 1;

  struct SharedStorage {
    typename Mainloop::SharedStorage mainloop;
  };
  static constexpr int kSmemSize = int(sizeof(SharedStorage));
  // Whether this kernel contains the split merge through thread-block clusters (see the header).
  // The merge stages a split's partial in the main loop's shared memory, so a tile whose partial
  // is larger (the d = 256 compact one, tile_size_fwd_64x32_rows_sm80, which runs on GPUs without
  // clusters) merges through the combine kernel only.
  static constexpr bool kClusterMerge =
      Features::kSplit && !Features::kPaged &&
      sizeof(typename Epilogue::ClusterPartial) <= sizeof(SharedStorage);
  // A cluster's CTAs meet at cluster barriers once per tile: they must walk the same tiles.
  static_assert(!(kClusterMerge && TileScheduler::kPersistent),
                "the cluster merge assumes one tile per CTA");

  using Arguments = FwdArgumentsSm80;
  using Params = FwdArgsSm80;

  // Host: the kernel's Params from the launch's Arguments (fwd_args_sm80.h).
  static Params to_underlying_arguments(Arguments const& arguments) {
    return to_underlying_arguments_sm80<kBlockM, kBlockN>(arguments);
  }
  static dim3 grid_shape(Params const& params) { return TileScheduler::grid_shape(params); }

  __forceinline__ __device__ void operator()(Params const& args, char* smem) const {
    SharedStorage& storage = *reinterpret_cast<SharedStorage*>(smem);
    if constexpr (!TileScheduler::kPersistent) {
      // One tile per CTA, always valid: the tile without the loop, which the compiler would
      // otherwise rotate and schedule differently.
      run_tile(args, storage, smem, TileScheduler::initial_work(args).blk);
    } else {
      for (WorkTileSm80 work = TileScheduler::initial_work(args); work.is_valid();
           work = TileScheduler::next_work(args, work)) {
        run_tile(args, storage, smem, work.blk);
        // The next tile's first copies overwrite shared memory this tile's last reads use.
        __syncthreads();
      }
    }
  }

  // Steps 1-4 of the schedule (file comment) for one work tile.
  __forceinline__ __device__ void run_tile(Params const& args, SharedStorage& storage, char* smem,
                                           BlockCoordSm80 blk) const {
    const FwdParams& p = args.p;
    SeqlenInfo seq = SeqlenInfo::make(p, blk.bidb);
    const int m0 = blk.m_block * kBlockM;
    if (m0 >= seq.seqlen_q) return;
    bool split_partial = false;  // this CTA writes an fp32 partial for the combine
    if constexpr (Features::kSplit) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      // The combine kernel (a programmatic dependent launch on sm_90) may be scheduled once
      // every CTA of this grid has started; it waits for this grid's completion before reading.
      // Triggering at the start, not the end, lets its launch overlap this grid's last CTAs
      // without taking an SM slot from any CTA of this grid.
      asm volatile("griddepcontrol.launch_dependents;");
#endif
      if (args.kv_batch_idx != nullptr) blk.bidb_kv = args.kv_batch_idx[blk.bidb];
      if (args.k_leftpad != nullptr) {
        const int leftpad = args.k_leftpad[blk.bidb];
        seq.k_row0 += leftpad;
        seq.seqlen_k -= leftpad;
      }
      split_partial = args.num_splits > 1;
      if constexpr (Features::kPaged) {
        if (!pages_in_range(p, blk.bidb, seq.seqlen_k)) seq.seqlen_k = 0;
      }
    }

    const VisibilityMask mask = VisibilityMask::make(seq.seqlen_q, seq.seqlen_k, p.is_causal,
                                                     p.window_size_left, p.window_size_right);
    int n_lo = 0, n_hi = 0;
    mask.key_range(m0, min(m0 + kBlockM, seq.seqlen_q), &n_lo, &n_hi);
    Epilogue epilogue;
    // A split CTA with no key to process: an empty partial (LSE_s = -inf).
    auto finish_empty_split = [&]() {
      if constexpr (kClusterMerge) {
        if (args.cluster_combine) {
          epilogue.write_cluster_empty(smem);
          epilogue.merge_in_cluster(args, seq, blk, smem);
          return;
        }
      }
      epilogue.store_empty_partial(args, seq, blk);
    };
    if (n_hi <= n_lo) {
      if (split_partial) {
        finish_empty_split();
      } else {
        epilogue.store_empty(args, seq, blk, storage.mainloop.smem_q.data());
      }
      return;
    }
    int n_block_min = n_lo / kBlockN;
    int n_block_max = (n_hi + kBlockN - 1) / kBlockN;
    if (split_partial) {
      // Equal chunks of the visible blocks; trailing splits may be empty (LSE_s = -inf).
      const int per_split = (n_block_max - n_block_min + args.num_splits - 1) / args.num_splits;
      n_block_min += blk.split * per_split;
      n_block_max = min(n_block_max, n_block_min + per_split);
      if (n_block_max <= n_block_min) {
        finish_empty_split();
        return;
      }
    }

    typename Traits::TiledMma tiled_mma;
    Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});  // (MMA, MMA_M, MMA_N)
    clear(acc_o);
    constexpr int kNRows = 2 * decltype(size<1>(acc_o))::value;
    OnlineSoftmax<kNRows> softmax(args.unit_log2);

    Mainloop{}.run(args, storage.mainloop, seq, blk, mask, n_block_min, n_block_max, acc_o, softmax);

    float lse[kNRows];
    if constexpr (Features::kDropout) {
      softmax.template finalize_scaled</*kScaled=*/true>(acc_o, args.unit, lse, args.rp_dropout);
    } else {
      softmax.finalize(acc_o, args.unit, lse);
    }
    // The sink joins whole rows here; a split's partial leaves it to the merge (the cluster
    // merge or the combine kernel), which adds it once. A runtime branch on the pointer, after
    // the main loop: no kernel variant, and no register the main loop needs.
    if (p.sinks != nullptr && !split_partial) add_sink(acc_o, p.sinks[blk.bidh], lse);
    if constexpr (kClusterMerge) {
      if (split_partial && args.cluster_combine) {
        epilogue.write_cluster_partial(seq, blk, acc_o, lse, p.d, smem);
        epilogue.merge_in_cluster(args, seq, blk, smem);
        return;
      }
    }
    if (split_partial) {
      epilogue.store_partial(args, seq, blk, acc_o, lse);
    } else {
      epilogue.store(args, seq, blk, acc_o, lse, storage.mainloop.smem_q.data());
    }
  }
};

// kMinSmemPerSm: the host launches this kernel only on GPUs with at least this much shared
// memory per SM (run_fwd_on_device_tile_sm80: a family's policy tile, which the host swaps for
// its compact one below that). Where no GPU that runs this arch's code has that much, nothing can
// launch it, and its body is left out of that arch's code: on sm_80 (164 KB at most on 8.x parts)
// the d = 128 plain policy (2 x 99 KB) and the d = 256 split-capable and dropout policies.
template <class Kernel, int kMinSmemPerSm = 0>
__global__ void __launch_bounds__(Kernel::kNThreads, Kernel::kMinBlocksPerSm)
    flash_fwd_sm80_kernel(CUTE_GRID_CONSTANT FwdArgsSm80 const args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (!arch_may_launch_sm80(__CUDA_ARCH__, kMinSmemPerSm)) {
    __trap();
  } else {
    extern __shared__ __align__(128) char smem[];
    Kernel{}(args, smem);
  }
#endif
}

}  // namespace flashattn::sm80
