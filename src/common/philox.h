// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) and the
// dropout keep-mask derived from it. The GPU kernels, the CPU backend and the CPU reference all
// call dropout_keep(), so a mask drawn on the GPU can be regenerated exactly on the CPU, and the
// backward pass regenerates the forward's mask instead of storing it.
//
// Counter layout (documented contract; changing it changes every dropout result):
//   key      = (lo32(seed), hi32(seed))
//   counter  = (c0, c1, c2, c3) with
//              c0 = j / 4                       key (column) group of 4 within the sequence
//              c1 = i                           query row within the sequence
//              c3:c2 = offset + (bidb * h + bidh)   64-bit: batch and query head
//   word     = output[j % 4]
//   keep     = word < threshold, threshold = min(2^32 - 1, floor((1 - p) * 2^32))
// A caller that launches several dropout calls advances offset by b * h between them, so the
// calls use disjoint counters.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace flashattn {

struct Philox4 {
  uint32_t x[4];
};

FA_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  *hi = uint32_t(p >> 32);
  return uint32_t(p);
}

FA_HD Philox4 philox4x32_10(Philox4 ctr, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    uint32_t lo0 = mulhilo32(kM0, ctr.x[0], &hi0);
    uint32_t lo1 = mulhilo32(kM1, ctr.x[2], &hi1);
    Philox4 next;
    next.x[0] = hi1 ^ ctr.x[1] ^ key0;
    next.x[1] = lo1;
    next.x[2] = hi0 ^ ctr.x[3] ^ key1;
    next.x[3] = lo0;
    ctr = next;
    key0 += kW0;
    key1 += kW1;
  }
  return ctr;
}

// Threshold on a uniform 32-bit word that keeps with probability 1 - p.
FA_HD uint32_t dropout_threshold(float p_dropout) {
  double keep = (1.0 - double(p_dropout)) * 4294967296.0;
  return keep >= 4294967295.0 ? 0xFFFFFFFFu : uint32_t(keep);
}

struct DropoutRng {
  uint64_t seed = 0;
  uint64_t offset = 0;
  uint32_t threshold = 0xFFFFFFFFu;

  // The four words for keys 4*j4 .. 4*j4+3 of row i of (batch, head) bh = bidb * h + bidh.
  FA_HD Philox4 words(uint64_t bh, int i, int j4) const {
    uint64_t c23 = offset + bh;
    Philox4 ctr{{uint32_t(j4), uint32_t(i), uint32_t(c23), uint32_t(c23 >> 32)}};
    return philox4x32_10(ctr, uint32_t(seed), uint32_t(seed >> 32));
  }
  FA_HD bool keep(uint64_t bh, int i, int j) const {
    return words(bh, i, j >> 2).x[j & 3] < threshold;
  }
};

}  // namespace flashattn
