// Launch of the SM80-path forward: picks the tile policy for the head dim, the compile-time
// features from the params, derives the kernel arguments, raises the dynamic shared-memory limit
// when the tile needs more than 48 KB, and launches on p.stream.
// Three kernel families, each explicitly instantiated in its own generated TU per (dtype, head
// dim) (cmake/kernels.cmake), so the plain kernels stay exactly what they were:
//  - run_fwd_sm80:         plain (softcap x ALiBi: 4 kernels; 8 where the head dim also has
//                          compact tiles for GPUs with less shared memory);
//  - run_fwd_split_sm80:   split-capable, contiguous or paged K/V, KV-cache hooks (8 kernels),
//                          merged in thread-block clusters or by the combine launch
//                          (cuda/launch_common.h: scratch, combine, cluster launch and sizing);
//  - run_fwd_dropout_sm80: dropout (x ALiBi: 2 kernels; flash_attn has no softcap + dropout).
#pragma once

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include <cstdint>
#include <type_traits>

#include "api/heuristics.h"
#include "cuda/cuda_check.h"
#include "cuda/dispatch.h"
#include "cuda/launch_common.h"
#include "sm80/epilogue_fwd_sm80.cuh"
#include "sm80/fwd_args_sm80.h"
#include "sm80/fwd_sm80.h"
#include "sm80/kernel_fwd_sm80.cuh"
#include "sm80/kernel_traits_sm80.cuh"
#include "sm80/mainloop_fwd_sm80.cuh"
#include "sm80/tile_size_sm80.h"

namespace flashattn::sm80 {

template <DType kDtype>
using ElementOf = std::conditional_t<kDtype == DType::kFloat16, cutlass::half_t, cutlass::bfloat16_t>;

// The tile policies of tile_size_sm80.h: one per kernel family, and the plain family's compact
// one for GPUs with less shared memory.
enum class FwdTilePolicy {
  kPlain,
  kPlainCompact,
  kPlainCompactAlibi,
  kSplit,
  kSplitCompact,
  kDropout,
  kDropoutCompact
};

constexpr TileSizeSm80 fwd_tile_of(FwdTilePolicy policy, int head_dim) {
  switch (policy) {
    case FwdTilePolicy::kPlainCompact: return tile_size_fwd_compact_sm80(head_dim, false);
    case FwdTilePolicy::kPlainCompactAlibi: return tile_size_fwd_compact_sm80(head_dim, true);
    case FwdTilePolicy::kSplit: return tile_size_fwd_split_sm80(head_dim);
    case FwdTilePolicy::kSplitCompact: return tile_size_fwd_split_compact_sm80(head_dim);
    case FwdTilePolicy::kDropout: return tile_size_fwd_dropout_sm80(head_dim);
    case FwdTilePolicy::kDropoutCompact: return tile_size_fwd_dropout_compact_sm80(head_dim);
    default: return tile_size_fwd_sm80(head_dim);
  }
}

// Kernel traits of a tile policy entry.
template <DType kDtype, int kHeadDim, FwdTilePolicy kPolicy = FwdTilePolicy::kPlain>
struct FwdTraitsFor {
  static constexpr TileSizeSm80 kTile = fwd_tile_of(kPolicy, kHeadDim);
  using type = FwdKernelTraitsSm80<kHeadDim, kTile.block_m, kTile.block_n, kTile.n_warps,
                                   ElementOf<kDtype>, kTile.padded_kv, kTile.kv_stages,
                                   kTile.skip_rescale, kTile.warps_n, kTile.q_in_regs,
                                   kTile.padded_q, kTile.qk_chunks_ahead, kTile.fresh_kv_addr,
                                   kTile.fresh_score_coords>;
};
template <DType kDtype, int kHeadDim, FwdTilePolicy kPolicy = FwdTilePolicy::kPlain>
using FwdTraitsOf = typename FwdTraitsFor<kDtype, kHeadDim, kPolicy>::type;

// The forward kernel of a tile, a feature set and a tile scheduler.
template <class Traits, class Features, class TileScheduler>
using FwdKernelSm80 = FlashAttnFwdSm80<Traits, Features, MainloopFwdSm80<Traits, Features>,
                                       EpilogueFwdSm80<Traits>, TileScheduler>;

// Shared memory of one CTA of a forward kernel (the plain one's is the same for every score mod).
template <class Traits, class Features = FwdFeaturesSm80<false, false>,
          class TileScheduler = TileSchedulerSm80>
constexpr int fwd_kernel_smem_bytes() {
  return FwdKernelSm80<Traits, Features, TileScheduler>::kSmemSize;
}

// Whether the split-capable kernels of Traits contain the merge through thread-block clusters.
template <class Traits>
constexpr bool fwd_split_cluster_merge_sm80() {
  return FwdKernelSm80<Traits, FwdFeaturesSm80<false, false, false, true>,
                       TileSchedulerSplitSm80>::kClusterMerge;
}

// kMinSmemPerSm: the shared memory per SM below which the caller never launches this kernel
// (flash_fwd_sm80_kernel leaves its body out of the archs that cannot have it).
template <class Traits, class Features, class TileScheduler, int kMinSmemPerSm = 0>
Status launch_fwd_kernel_sm80(const FwdArgsSm80& args) {
  using Kernel = FwdKernelSm80<Traits, Features, TileScheduler>;
  // With cluster_combine the num_splits CTAs of a tile are adjacent in x
  // (TileSchedulerSplitSm80): one cluster.
  return cuda::launch_kernel(&flash_fwd_sm80_kernel<Kernel, kMinSmemPerSm>,
                             Kernel::grid_shape(args), Kernel::kNThreads, Kernel::kSmemSize,
                             args.p.stream, args.cluster_combine ? args.num_splits : 1,
                             "flash_fwd_sm80_kernel", args);
}

// How many clusters of `size` CTAs of the split kernel of Traits can be resident at once
// (cuda::max_active_clusters). Every split-family kernel of one tile has the same block shape,
// shared memory and register bound, so the plain one stands for all.
template <class Traits, int kMinSmemPerSm>
int fwd_max_active_clusters_sm80(int size) {
  using Kernel =
      FwdKernelSm80<Traits, FwdFeaturesSm80<false, false, false, true>, TileSchedulerSplitSm80>;
  return cuda::max_active_clusters<Kernel, EpilogueFwdSm80<Traits>::kMaxClusterSplits>(
      &flash_fwd_sm80_kernel<Kernel, kMinSmemPerSm>, Kernel::kNThreads, Kernel::kSmemSize, size);
}

// The plain kernel with the given score mods (also the entry of benchmarks/cpp/tile_sweep_sm80).
template <class Traits, bool kHasSoftcap, bool kHasAlibi, int kMinSmemPerSm = 0>
Status launch_fwd_sm80(const FwdArgsSm80& args) {
  return launch_fwd_kernel_sm80<Traits, FwdFeaturesSm80<kHasSoftcap, kHasAlibi>, TileSchedulerSm80,
                                kMinSmemPerSm>(args);
}

// The Params of the kernels of tile Traits from the launch's Arguments (every kernel of one tile
// derives them the same way: Kernel::to_underlying_arguments).
template <class Traits>
FwdArgsSm80 fwd_params_sm80(const FwdArgumentsSm80& arguments) {
  return FwdKernelSm80<Traits, FwdFeaturesSm80<false, false>,
                       TileSchedulerSm80>::to_underlying_arguments(arguments);
}

// The tile one kernel family runs on this device, handed to run_fwd_on_device_tile_sm80's callback.
template <class Traits_, int kMinSmemPerSm_>
struct FwdTileChoiceSm80 {
  using Traits = Traits_;
  static constexpr int kMinSmemPerSm = kMinSmemPerSm_;
};

// Runs run(FwdTileChoiceSm80<...>{}) with the family's policy tile (Traits) where its CTAs per SM
// (kSmemPerSm bytes with the per-CTA reserve) fit in the device's shared memory per SM, else with
// its compact tile (tile_size_sm80.h says why each exists). The policy's kernels learn kSmemPerSm,
// so archs on which no GPU has that much leave them out (flash_fwd_sm80_kernel).
template <class Traits, class CompactTraits, int kSmemPerSm, class Run>
Status run_fwd_on_device_tile_sm80(Run&& run) {
  if constexpr (std::is_same_v<Traits, CompactTraits>) {
    return run(FwdTileChoiceSm80<Traits, 0>{});
  } else {
    if (kSmemPerSm > cuda::device_smem_per_sm()) return run(FwdTileChoiceSm80<CompactTraits, 0>{});
    return run(FwdTileChoiceSm80<Traits, kSmemPerSm>{});
  }
}

// The plain kernels, with ALiBi on AlibiTraits' tile (the compact policy's ALiBi kernels take
// their own, tile_size_fwd_compact_sm80) and every other score mod on Traits'.
template <class Traits, class AlibiTraits = Traits, int kMinSmemPerSm = 0>
Status run_fwd_plain_sm80(const FwdParams& p) {
  static_assert(Traits::kBlockM == AlibiTraits::kBlockM, "one query block count for both tiles");
  FwdArgsSm80 args = fwd_params_sm80<Traits>({p});
  if (args.num_m_blocks == 0 || p.b == 0 || p.h == 0) return Status::ok_status();

  const bool has_softcap = p.softcap > 0.f;
  if (p.alibi_slopes != nullptr) {
    return has_softcap ? launch_fwd_sm80<AlibiTraits, true, true, kMinSmemPerSm>(args)
                       : launch_fwd_sm80<AlibiTraits, false, true, kMinSmemPerSm>(args);
  }
  return has_softcap ? launch_fwd_sm80<Traits, true, false, kMinSmemPerSm>(args)
                     : launch_fwd_sm80<Traits, false, false, kMinSmemPerSm>(args);
}

// The plain family: the policy's tile, or the compact ones (ALiBi has its own) where the CTAs per
// SM the policy is built for (fwd_ctas_per_sm_sm80) do not fit in the device's shared memory per
// SM, 1 KB of which is reserved per CTA on SM80+ (tile_size_fwd_compact_sm80).
template <DType kDtype, int kHeadDim>
Status run_fwd_sm80(const FwdParams& p) {
  using Traits = FwdTraitsOf<kDtype, kHeadDim>;
  using CompactTraits = FwdTraitsOf<kDtype, kHeadDim, FwdTilePolicy::kPlainCompact>;
  using CompactAlibiTraits = FwdTraitsOf<kDtype, kHeadDim, FwdTilePolicy::kPlainCompactAlibi>;
  constexpr int kSmemPerSm = fwd_ctas_per_sm_sm80(tile_size_fwd_sm80(kHeadDim)) *
                             (fwd_kernel_smem_bytes<Traits>() + 1024);
  return run_fwd_on_device_tile_sm80<Traits, CompactTraits, kSmemPerSm>([&](auto choice) {
    using T = typename decltype(choice)::Traits;
    using AlibiT = std::conditional_t<std::is_same_v<T, CompactTraits>, CompactAlibiTraits, T>;
    return run_fwd_plain_sm80<T, AlibiT, decltype(choice)::kMinSmemPerSm>(p);
  });
}

template <class Traits, bool kPaged, int kMinSmemPerSm = 0>
Status launch_fwd_split_sm80(const FwdArgsSm80& args) {
  const bool has_softcap = args.p.softcap > 0.f;
  const bool has_alibi = args.p.alibi_slopes != nullptr;
  using Sched = TileSchedulerSplitSm80;
  using SoftcapAlibi = FwdFeaturesSm80<true, true, kPaged, true>;
  using Softcap = FwdFeaturesSm80<true, false, kPaged, true>;
  using Alibi = FwdFeaturesSm80<false, true, kPaged, true>;
  using NoMod = FwdFeaturesSm80<false, false, kPaged, true>;
  if (has_softcap) {
    return has_alibi ? launch_fwd_kernel_sm80<Traits, SoftcapAlibi, Sched, kMinSmemPerSm>(args)
                     : launch_fwd_kernel_sm80<Traits, Softcap, Sched, kMinSmemPerSm>(args);
  }
  return has_alibi ? launch_fwd_kernel_sm80<Traits, Alibi, Sched, kMinSmemPerSm>(args)
                   : launch_fwd_kernel_sm80<Traits, NoMod, Sched, kMinSmemPerSm>(args);
}

template <class Traits, int kMinSmemPerSm = 0>
Status run_fwd_split_tile_sm80(const FwdParams& p, const int* kv_batch_idx, const int* k_leftpad,
                               int num_splits) {
  using Epilogue = EpilogueFwdSm80<Traits>;
  FwdArgsSm80 args = fwd_params_sm80<Traits>({p, kv_batch_idx, k_leftpad, num_splits});
  if (args.num_m_blocks == 0 || p.b == 0 || p.h == 0) return Status::ok_status();
  const bool paged = p.block_table != nullptr;
  args.partial_rows = cuda::split_partial_rows(p);
  if (args.num_splits == 1) {
    return paged ? launch_fwd_split_sm80<Traits, true, kMinSmemPerSm>(args)
                 : launch_fwd_split_sm80<Traits, false, kMinSmemPerSm>(args);
  }

  if (int64_t(args.num_m_blocks) * args.num_splits > 0x7fffffff)
    return Status::not_supported("split-KV grid too large (query blocks * num_splits >= 2^31)");

  // sm_90, contiguous K/V (kernel_fwd_sm80.cuh says why not paged): the splits of a tile merge
  // inside a thread-block cluster when every cluster fits at once (heuristics::
  // cluster_merge_splits, which may lower the heuristic's count for that).
  if (!paged && fwd_split_cluster_merge_sm80<Traits>() &&
      args.num_splits <= Epilogue::kMaxClusterSplits && cuda::device_runs_sm90_kernels()) {
    const heuristics::ClusterMergeChoice choice = heuristics::cluster_merge_splits(
        args.num_splits, p.num_splits == 0, int64_t(args.num_m_blocks) * p.h * p.b,
        (p.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN,
        [](int size) { return fwd_max_active_clusters_sm80<Traits, kMinSmemPerSm>(size); });
    if (choice.merge) {
      args.num_splits = choice.splits;
      args.cluster_combine = true;
      return launch_fwd_split_sm80<Traits, false, kMinSmemPerSm>(args);
    }
  }

  // Otherwise fp32 partials in scratch, merged by the combine kernel.
  return cuda::run_split_with_combine(p, args.num_splits, [&](const cuda::SplitPartials& parts) {
    args.o_partial = parts.o;
    args.lse_partial = parts.lse;
    return paged ? launch_fwd_split_sm80<Traits, true, kMinSmemPerSm>(args)
                 : launch_fwd_split_sm80<Traits, false, kMinSmemPerSm>(args);
  });
}

// The split-capable family on the device's tile (tile_size_fwd_split_for_sm80 decides the same
// way, for the dispatch's split count).
template <DType kDtype, int kHeadDim>
Status run_fwd_split_sm80(const FwdParams& p, const int* kv_batch_idx, const int* k_leftpad,
                          int num_splits) {
  using Traits = FwdTraitsOf<kDtype, kHeadDim, FwdTilePolicy::kSplit>;
  using CompactTraits = FwdTraitsOf<kDtype, kHeadDim, FwdTilePolicy::kSplitCompact>;
  static_assert(fwd_split_smem_bytes_sm80(tile_size_fwd_split_sm80(kHeadDim), kHeadDim) ==
                    fwd_kernel_smem_bytes<Traits, FwdFeaturesSm80<false, false, true, true>,
                                          TileSchedulerSplitSm80>(),
                "fwd_split_smem_bytes_sm80 is the paged split kernel's shared memory");
  constexpr int kSmemPerSm = fwd_split_smem_per_sm_sm80(kHeadDim);
  return run_fwd_on_device_tile_sm80<Traits, CompactTraits, kSmemPerSm>([&](auto choice) {
    using T = typename decltype(choice)::Traits;
    return run_fwd_split_tile_sm80<T, decltype(choice)::kMinSmemPerSm>(p, kv_batch_idx, k_leftpad,
                                                                      num_splits);
  });
}

template <class Traits, int kMinSmemPerSm = 0>
Status run_fwd_dropout_tile_sm80(const FwdParams& p) {
  FwdArgsSm80 args = fwd_params_sm80<Traits>({p});  // dropout_threshold, rp_dropout from p
  if (args.num_m_blocks == 0 || p.b == 0 || p.h == 0) return Status::ok_status();
  using Sched = TileSchedulerSm80;
  return p.alibi_slopes != nullptr
      ? launch_fwd_kernel_sm80<Traits, FwdFeaturesSm80<false, true, false, false, true>, Sched,
                               kMinSmemPerSm>(args)
      : launch_fwd_kernel_sm80<Traits, FwdFeaturesSm80<false, false, false, false, true>, Sched,
                               kMinSmemPerSm>(args);
}

// The dropout family: the policy's tile where its CTAs per SM fit, else the compact one (d = 256:
// tile_size_fwd_dropout_compact_sm80).
template <DType kDtype, int kHeadDim>
Status run_fwd_dropout_sm80(const FwdParams& p) {
  using Traits = FwdTraitsOf<kDtype, kHeadDim, FwdTilePolicy::kDropout>;
  using CompactTraits = FwdTraitsOf<kDtype, kHeadDim, FwdTilePolicy::kDropoutCompact>;
  constexpr int kSmemPerSm =
      fwd_ctas_per_sm_sm80(tile_size_fwd_dropout_sm80(kHeadDim)) *
      (fwd_kernel_smem_bytes<Traits, FwdFeaturesSm80<false, false, false, false, true>>() + 1024);
  return run_fwd_on_device_tile_sm80<Traits, CompactTraits, kSmemPerSm>([&](auto choice) {
    using T = typename decltype(choice)::Traits;
    return run_fwd_dropout_tile_sm80<T, decltype(choice)::kMinSmemPerSm>(p);
  });
}

}  // namespace flashattn::sm80
