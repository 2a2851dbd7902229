// The launch heuristics of the GPU forward, as pure functions of numbers the host layer reads
// from the device (SM count, shared memory per SM, occupancy), so that every one has CPU unit
// tests (tests/cpp/cpu/test_heuristics.cpp) and every arch's launch code asks the same place:
//  - the split-KV count (choose_num_splits, and fwd_num_splits_sm80 for the SM80 split tiles);
//  - the split count the thread-block-cluster merge runs with (cluster_merge_splits);
//  - the size of a persistent grid (persistent_grid_size).
// Head-dim rounding and the tile per device are part of each arch's tile policy
// (round_head_dim_sm80 and tile_size_fwd_split_for_sm80 in src/sm80/tile_size_sm80.h,
// round_head_dim_sm90 in src/sm90/tile_size_sm90.h): they say which kernels exist. The tests of
// this file cover them too, with the device numbers of the A100 and the H100.
#pragma once

#include <cstdint>

#include "sm80/tile_size_sm80.h"

namespace flashattn::heuristics {

// Split-KV count for one forward call. `requested`: params.num_splits (1 = no split, 0 =
// heuristic, 2..128 explicit). ctas = b * h * query blocks, n_blocks = key blocks of the longest
// sequence, cta_slots = SMs * resident CTAs per SM.
//  - Never more splits than key blocks, and no trailing all-empty splits: s splits of
//    ceil(n_blocks / s) blocks each cover n_blocks in ceil(n_blocks / ceil(n_blocks / s)).
//  - Heuristic: no split once the grid already fills 80% of the slots (splitting only adds the
//    partial writes and the combine). Otherwise the split count whose last wave is fullest:
//    efficiency(s) = waves / ceil(waves) with waves = ctas * s / cta_slots, taking the smallest s
//    within 85% of the best efficiency (fewer splits = less partial traffic), counting only
//    split counts that change the chunk length (others run the same blocks per CTA). The
//    FlashAttention-2 heuristic, which is what serving decode shapes (b * h_k small, s_k long)
//    need: e.g. b = 8, h = 32, 1 query block: 256 CTAs on 264 slots -> no split; b = 1,
//    h = 8: 8 CTAs -> splits that fill the GPU.
constexpr int choose_num_splits(int requested, int64_t ctas, int n_blocks, int cta_slots) {
  constexpr int kMaxSplits = 128;
  if (requested == 1 || n_blocks <= 1) return 1;
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  auto covering = [&](int s) { return int(ceil_div(n_blocks, ceil_div(n_blocks, s))); };
  if (requested > 1) return covering(requested < n_blocks ? requested : n_blocks);
  if (cta_slots <= 0 || ctas <= 0 || double(ctas) >= 0.8 * cta_slots) return 1;
  int max_splits = kMaxSplits < n_blocks ? kMaxSplits : n_blocks;
  max_splits = max_splits < cta_slots ? max_splits : cta_slots;
  auto efficiency = [&](int s) {
    const double waves = double(ctas) * s / cta_slots;
    const double full = double(int64_t(waves) + (double(int64_t(waves)) < waves ? 1 : 0));
    return waves / full;
  };
  auto eligible = [&](int s) { return s == 1 || ceil_div(n_blocks, s) != ceil_div(n_blocks, s - 1); };
  double best = 0;
  for (int s = 1; s <= max_splits; ++s)
    if (eligible(s) && efficiency(s) > best) best = efficiency(s);
  for (int s = 1; s <= max_splits; ++s)
    if (eligible(s) && efficiency(s) >= 0.85 * best) return covering(s);
  return 1;
}

// The split count of an SM80-path forward (requested as in choose_num_splits) at head-dim kernel
// hd on a device with num_sms SMs of smem_per_sm bytes of shared memory: splitting runs the
// split-capable kernels, so their tile on this device (the policy's or the compact one) decides
// the grid. num_sms is read only for the heuristic (requested == 0).
constexpr int fwd_num_splits_sm80(int requested, int b, int h, int seqlen_q, int seqlen_k, int hd,
                                  int smem_per_sm, int num_sms) {
  if (requested == 1) return 1;
  const sm80::TileSizeSm80 tile = sm80::tile_size_fwd_split_for_sm80(hd, smem_per_sm);
  const int m_blocks = (seqlen_q + tile.block_m - 1) / tile.block_m;
  const int n_blocks = (seqlen_k + tile.block_n - 1) / tile.block_n;
  return choose_num_splits(requested, int64_t(b) * h * m_blocks, n_blocks,
                           num_sms * sm80::fwd_ctas_per_sm_sm80(tile));
}

// The splits of a query tile merge inside one thread-block cluster when every cluster of the grid
// can be resident at once (a second wave of clusters costs more than the combine launch saves:
// docs/kvcache.md). The heuristic's count (heuristic_count: params.num_splits == 0) may drop for
// that while each split keeps at most kMaxBlocksToLower key blocks, e.g. 4 -> 3 for the 64 tiles
// of a b = 8, h_k = 8 decode of up to 12k keys on the H100: there the saved combine launch is
// worth more than a quarter of the CTAs (measured: +4 % at 4k, +2 % at 8k, even at 16k, -0.5 % at
// 32k-128k with 3 splits, where the read dominates). An explicit count is kept.
// max_active_clusters(size): how many clusters of `size` CTAs can be resident at once.
// Returns the split count, and in *merge whether the cluster merge runs with it.
struct ClusterMergeChoice {
  int splits = 1;
  bool merge = false;
};
template <class MaxActiveClusters>
ClusterMergeChoice cluster_merge_splits(int splits, bool heuristic_count, int64_t clusters,
                                        int n_blocks, MaxActiveClusters&& max_active_clusters) {
  constexpr int kMaxBlocksToLower = 32;
  ClusterMergeChoice c;
  c.splits = splits;
  if (heuristic_count) {
    while (c.splits > 2 && clusters > max_active_clusters(c.splits) &&
           (n_blocks + c.splits - 2) / (c.splits - 1) <= kMaxBlocksToLower)
      --c.splits;
  }
  c.merge = clusters <= max_active_clusters(c.splits);
  if (!c.merge) c.splits = splits;
  return c;
}

// A persistent grid: one CTA per SM, fewer when there are fewer tiles. 0 when num_sms could not
// be read (the caller reports it).
constexpr int persistent_grid_size(int64_t tiles, int num_sms) {
  if (num_sms <= 0) return 0;
  return int(tiles < num_sms ? tiles : num_sms);
}

}  // namespace flashattn::heuristics
