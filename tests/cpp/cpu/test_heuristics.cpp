// The launch heuristics of api/heuristics.h, tested without a GPU: the split-KV count, the split
// count of the thread-block-cluster merge, the persistent grid, and the per-device tile and
// head-dim rounding they start from, with the numbers of the A100 (108 SMs, 164 KB of shared
// memory per SM) and the H100 (132 SMs, 228 KB).
#include <gtest/gtest.h>

#include <algorithm>

#include "api/heuristics.h"
#include "sm80/tile_size_sm80.h"

namespace flashattn {
namespace {

using heuristics::choose_num_splits;

constexpr int kA100Sms = 108, kA100Smem = 164 * 1024;
constexpr int kH100Sms = 132, kH100Smem = 228 * 1024;

TEST(SplitHeuristic, ExplicitCountsAreClampedToKeyBlocks) {
  EXPECT_EQ(choose_num_splits(1, 1, 1000, 264), 1);
  EXPECT_EQ(choose_num_splits(7, 1, 1, 264), 1);         // one key block: nothing to split
  EXPECT_EQ(choose_num_splits(128, 1, 3, 264), 3);       // never more splits than blocks
  EXPECT_EQ(choose_num_splits(2, 1, 1000, 264), 2);
  EXPECT_EQ(choose_num_splits(128, 1, 1000, 264), 125);  // 8 blocks each: 125 cover 1000
  for (int n = 1; n <= 300; ++n)
    for (int s : {2, 3, 7, 64, 128}) {
      const int got = choose_num_splits(s, 4, n, 264);
      const int per = (n + got - 1) / got;
      EXPECT_GE(got, 1);
      EXPECT_LE(got, std::min(s, n));
      EXPECT_EQ((n + per - 1) / per, got) << "a trailing split would be empty: n=" << n << " s=" << s;
    }
}

TEST(SplitHeuristic, SplitsOnlySmallGrids) {
  const int slots = kH100Sms * 2;
  EXPECT_EQ(choose_num_splits(0, 8 * 32, 2048, slots), 1);  // decode b=8 h=32: a full wave
  EXPECT_EQ(choose_num_splits(0, 4096, 256, slots), 1);     // training shapes never split
  const int small = choose_num_splits(0, 8, 2048, slots);   // b=1, h=8 decode, 128k keys
  EXPECT_GT(small, 8);
  EXPECT_LE(small, 128);
  EXPECT_EQ(choose_num_splits(0, 8, 1, slots), 1);
  EXPECT_LE(choose_num_splits(0, 2, 5, slots), 5);
  EXPECT_EQ(choose_num_splits(0, 8, 2048, 0), 1);  // no SM count: no split
}

TEST(SplitHeuristic, HeuristicCountsCoverTheKeysWithoutEmptySplits) {
  for (int64_t ctas : {1, 3, 8, 40, 100, 200})
    for (int n = 1; n <= 400; n += 7) {
      const int got = choose_num_splits(0, ctas, n, kA100Sms * 2);
      const int per = (n + got - 1) / got;
      EXPECT_GE(got, 1);
      EXPECT_LE(got, std::min(128, n));
      EXPECT_EQ((n + per - 1) / per, got) << "ctas=" << ctas << " n=" << n;
      // Only grids below 80% of the CTA slots are split.
      if (got > 1) EXPECT_LT(double(ctas), 0.8 * kA100Sms * 2) << "ctas=" << ctas << " n=" << n;
    }
}

TEST(SplitHeuristic, Sm80CountFollowsTheDevicesSplitTile) {
  // d = 256: the A100 runs the compact split tile (32 keys per block), the H100 the policy's (64),
  // so the same explicit request clamps to twice the key blocks on the A100.
  ASSERT_EQ(sm80::tile_size_fwd_split_for_sm80(256, kA100Smem).block_n, 32);
  ASSERT_EQ(sm80::tile_size_fwd_split_for_sm80(256, kH100Smem).block_n, 64);
  EXPECT_EQ(heuristics::fwd_num_splits_sm80(128, 1, 8, 1, 1024, 256, kA100Smem, 0), 32);
  EXPECT_EQ(heuristics::fwd_num_splits_sm80(128, 1, 8, 1, 1024, 256, kH100Smem, 0), 16);
  EXPECT_EQ(heuristics::fwd_num_splits_sm80(1, 1, 8, 1, 1 << 17, 128, kH100Smem, kH100Sms), 1);
  // Heuristic (requested 0): a b = 1, h = 8 decode over 128k keys fills the GPU; training shapes
  // (b = 4, h = 16, 4k queries: 1024 CTAs of 64 rows) do not split.
  const int decode = heuristics::fwd_num_splits_sm80(0, 1, 8, 1, 1 << 17, 128, kH100Smem, kH100Sms);
  EXPECT_GT(decode, 8);
  EXPECT_LE(decode, 128);
  EXPECT_EQ(heuristics::fwd_num_splits_sm80(0, 4, 16, 4096, 4096, 128, kH100Smem, kH100Sms), 1);
}

// Resident clusters on the H100 for two CTAs per SM (cudaOccupancyMaxActiveClusters).
int h100_clusters(int size) {
  switch (size) {
    case 2: return 132;
    case 3: return 79;
    case 4: return 62;
    default: return size <= 8 ? 30 : 0;
  }
}

TEST(ClusterMerge, HeuristicCountDropsWhenEveryClusterThenFits) {
  // b = 8, h_k = 8 decode: 64 tiles. Up to 12k keys (96 blocks of 128) 4 -> 3 splits, where all
  // 64 clusters of 3 are resident (79) and each split keeps <= 32 key blocks.
  heuristics::ClusterMergeChoice c = heuristics::cluster_merge_splits(4, true, 64, 96, h100_clusters);
  EXPECT_TRUE(c.merge);
  EXPECT_EQ(c.splits, 3);
  // 16k keys: 3 splits would each take 43 blocks, so the count stays and the combine runs.
  c = heuristics::cluster_merge_splits(4, true, 64, 128, h100_clusters);
  EXPECT_FALSE(c.merge);
  EXPECT_EQ(c.splits, 4);
}

TEST(ClusterMerge, ExplicitCountIsKept) {
  heuristics::ClusterMergeChoice c = heuristics::cluster_merge_splits(4, false, 64, 96, h100_clusters);
  EXPECT_FALSE(c.merge);  // 64 clusters of 4 > 62 resident
  EXPECT_EQ(c.splits, 4);
  c = heuristics::cluster_merge_splits(4, false, 62, 96, h100_clusters);
  EXPECT_TRUE(c.merge);
  EXPECT_EQ(c.splits, 4);
  // A failed occupancy query (0 clusters) never merges.
  c = heuristics::cluster_merge_splits(2, true, 1, 8, [](int) { return 0; });
  EXPECT_FALSE(c.merge);
  EXPECT_EQ(c.splits, 2);
}

TEST(PersistentGrid, OneCtaPerSmAtMost) {
  EXPECT_EQ(heuristics::persistent_grid_size(1, kH100Sms), 1);
  EXPECT_EQ(heuristics::persistent_grid_size(131, kH100Sms), 131);
  EXPECT_EQ(heuristics::persistent_grid_size(int64_t(1) << 40, kH100Sms), kH100Sms);
  EXPECT_EQ(heuristics::persistent_grid_size(100, 0), 0);  // unreadable SM count
}

TEST(HeadDimRounding, Sm80RoundsUpToACompiledKernel) {
  EXPECT_EQ(sm80::round_head_dim_sm80(8), 32);
  EXPECT_EQ(sm80::round_head_dim_sm80(32), 32);
  EXPECT_EQ(sm80::round_head_dim_sm80(40), 64);
  EXPECT_EQ(sm80::round_head_dim_sm80(96), 96);
  EXPECT_EQ(sm80::round_head_dim_sm80(100), 128);
  EXPECT_EQ(sm80::round_head_dim_sm80(200), 256);
  EXPECT_EQ(sm80::round_head_dim_sm80(257), 0);  // no kernel
}

}  // namespace
}  // namespace flashattn
