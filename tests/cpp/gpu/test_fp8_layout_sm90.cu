// The FP8 forward's P layout argument (src/sm90/fp8_layout_sm90.h), checked on the host against
// CuTe's own wgmma fragment layouts, so it runs (and must pass) on machines without a GPU.
//
// The kernel packs the fp32 S accumulator of each thread into the e4m3 A fragment of the P V
// wgmma without moving values between lanes (convert_p_fp8), and the V^T scratch stores each
// 32-key group in the order that packing implies (fp8_key_of_slot). For P V to be the product the
// kernel means, every A-fragment element must hold P at the same query row it has in S, and at a
// key equal to the one whose V row the scratch put at that element's k slot. CLayout_64xN (the
// fp32 accumulator) and ALayout_64x32 (the 8-bit register A operand) give (thread, value) -> (row,
// column) for both; the check walks every thread and value of a 128-key block.
#include <gtest/gtest.h>

#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>

#include <set>
#include <utility>

#include "sm90/fp8_layout_sm90.h"

namespace flashattn::sm90 {
namespace {

using namespace cute;

TEST(Fp8LayoutSm90, PackedPMeetsTheKeyOrderOfTheVtScratch) {
  constexpr int kBlockN = 128;  // the FP8 tiles' key block (tile_size_fwd_sm90_fp8)
  using CLayout = GMMA::CLayout_64xN<kBlockN>;  // (thread, value) -> row + 64 * key
  using ALayout = GMMA::ALayout_64x32;          // (thread, value) -> row + 64 * k, one k32 slice
  static_assert(size<1>(CLayout{}) == kBlockN / 2, "64 x 128 fp32 over 128 threads");
  static_assert(size<1>(ALayout{}) == 16, "16 e4m3 values per thread per k32 slice");
  std::set<std::pair<int, int>> seen;  // (row, key) pairs P V consumes
  for (int t = 0; t < 128; ++t) {
    for (int s = 0; s < kBlockN / 32; ++s) {
      for (int v = 0; v < 16; ++v) {
        const int acc = 16 * s + fp8_pack_order(v);  // the S value A byte v of slice s takes
        const int c = CLayout{}(t, acc);
        const int row_s = c % 64, key = c / 64;
        const int a = ALayout{}(t, v);
        const int row_a = a % 64, k = a / 64;  // k slot within the slice
        ASSERT_EQ(row_a, row_s) << "thread " << t << " slice " << s << " byte " << v;
        ASSERT_EQ(32 * s + fp8_key_of_slot(k), key)
            << "thread " << t << " slice " << s << " byte " << v << ": slot " << k;
        seen.insert({row_s, key});
      }
    }
  }
  EXPECT_EQ(seen.size(), size_t(64) * kBlockN) << "every (row, key) of the block exactly once";
}

// fp8_key_of_slot is a permutation of each 32-key group, so the scratch holds every key once.
TEST(Fp8LayoutSm90, KeyOrderIsAPermutation) {
  std::set<int> keys;
  for (int slot = 0; slot < 32; ++slot) keys.insert(fp8_key_of_slot(slot));
  EXPECT_EQ(keys.size(), 32u);
  EXPECT_EQ(*keys.begin(), 0);
  EXPECT_EQ(*keys.rbegin(), 31);
}

}  // namespace
}  // namespace flashattn::sm90
