// Dropout on a P tile in registers, with the keep mask of the shared Philox stream
// (src/common/philox.h), so the CPU reference regenerates the exact mask. Written against the
// (rows, columns) view of accumulator.cuh, so it serves the SM80 kernels (mma.sync m16n8k16) and
// the Hopper kernels (wgmma m64nNk16, where a warpgroup's whole key block is one MMA_N index)
// alike: both give lane q = lane % 4 of a quad the same two columns of each n8 block.
//
// Counter layout (fixed by philox.h): one Philox-4x32-10 call gives the four words of keys
// 4 * j4 .. 4 * j4 + 3 of query row i; key j keeps iff word[j % 4] < threshold.
// In either accumulator, lane q = lane % 4 of a quad holds columns 8 * nb + 2q, 8 * nb + 2q + 1 of
// each n8 block nb, i.e. words 2 * (q & 1) + {0, 1} of key group 2 * nb + (q >> 1). So every key
// group is needed by exactly two lanes (q and q ^ 1), and per pair of n8 blocks a quad needs four
// groups. Each lane computes ONE of them (lane q: block 2 * pair + (q & 1), its own half q >> 1)
// and the two lanes of a pair swap their 4 keep bits with one shuffle per row: half the Philox
// work of every lane drawing its own words, for 1 shuffle per row (all pairs' nibbles packed in
// one 32-bit word).
#pragma once

#include <cute/tensor.hpp>

#include <cstdint>

#include "common/philox.h"
#include "common/accumulator.cuh"

namespace flashattn::gpu {

using namespace cute;

// acc_s: (MMA, MMA_M, MMA_N) probabilities (fp32 or 16-bit) of the tile whose top-left element is (m0, n0) of the
// sequence (n0 a multiple of 8); coord: the tile's identity tensor partitioned like acc_s;
// bh = bidb * h + bidh. Dropped entries become 0 (the 1 / (1 - p) scale is applied to O once).
template <class TensorS, class TensorC>
__forceinline__ __device__ void apply_dropout(TensorS& acc_s, TensorC const& coord, int m0, int n0,
                                              DropoutRng const& rng, uint64_t bh) {
  using Value = typename TensorS::value_type;  // fp32 or the 16-bit P
  Tensor s = make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout()));  // (rows, keys)
  Tensor c = make_tensor(coord.data(), acc_layout_rowcol(coord.layout()));
  constexpr int kNBlocks = decltype(size<1, 1>(s))::value;  // n8 blocks per tile row
  static_assert(kNBlocks % 2 == 0 && kNBlocks / 2 <= 8, "pairs of n8 blocks, 4 bits each in 32");
  const int odd = (threadIdx.x % 32) & 1;  // q & 1: which block of a pair this lane draws for
  CUTE_UNROLL
  for (int mi = 0; mi < size<0>(s); ++mi) {
    const int i = m0 + get<0>(c(mi, 0));
    uint32_t own = 0;  // nibble per pair: keep bits of the key group this lane draws
    // Not unrolled: one Philox call in flight at a time. Unrolled, ptxas interleaves the calls
    // of a row for ILP and their states (4 words + 2 keys each) spilled O at d = 128.
#pragma unroll 1
    for (int pair = 0; pair < kNBlocks / 2; ++pair) {
      // Column 8 * nb + 2q of block nb = 2 * pair + odd lies in the group this lane draws.
      const int j4 = (n0 + get<1>(c(mi, 2 * (2 * pair + odd)))) >> 2;
      // The seed is made opaque per call so that the 20 round keys are recomputed inside each
      // call (one IADD per round) instead of being hoisted out of the key-block loop: held
      // across the loop they cost 20 registers next to O and S and spilled (d = 128).
      DropoutRng r = rng;
      asm volatile("" : "+l"(r.seed));
      const Philox4 w = r.words(bh, i, j4);
      const uint32_t bits = uint32_t(w.x[0] < rng.threshold) |
                            (uint32_t(w.x[1] < rng.threshold) << 1) |
                            (uint32_t(w.x[2] < rng.threshold) << 2) |
                            (uint32_t(w.x[3] < rng.threshold) << 3);
      own |= bits << (4 * pair);
    }
    const uint32_t other = __shfl_xor_sync(0xffffffffu, own, 1);
    // Block 2 * pair's group was drawn by the even lane of the pair, 2 * pair + 1's by the odd
    // one; this lane's two words in either group are 2 * odd and 2 * odd + 1.
    const uint32_t even_blocks = odd ? other : own;
    const uint32_t odd_blocks = odd ? own : other;
    CUTE_UNROLL
    for (int pair = 0; pair < kNBlocks / 2; ++pair) {
      const int shift = 4 * pair + 2 * odd;
      const uint32_t keep_even = even_blocks >> shift;
      const uint32_t keep_odd = odd_blocks >> shift;
      CUTE_UNROLL
      for (int e = 0; e < 2; ++e) {
        if (!((keep_even >> e) & 1u)) s(mi, e + 2 * (2 * pair)) = Value(0.f);
        if (!((keep_odd >> e) & 1u)) s(mi, e + 2 * (2 * pair + 1)) = Value(0.f);
      }
    }
  }
}

}  // namespace flashattn::gpu
