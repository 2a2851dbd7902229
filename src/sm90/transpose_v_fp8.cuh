// The FP8 forward's V^T scratch (docs/fp8.md): 8-bit wgmma reads its shared-memory operands
// K-major only, and in P V the reduction runs over the keys, so the kernel needs V with the keys
// contiguous. This kernel writes, once per forward call,
//   vt[b][hk][c][slot] = V[b][key][hk][c],   slot = the key's place in its 32-key group,
// for c < d and slots 0 .. keys_pad - 1 (keys_pad = s_k rounded up to 32: TMA rows of whole
// 16 bytes, whole groups). Slots of keys past the sequence (the padding, keys >= seqused_k) hold
// zeros, so no key block needs its tail cleared (P is 0 there, and 0 * 0 is 0 where 0 * NaN is
// not). Within each group of 32 the keys are stored in the order the P fragment holds them
// (fp8_layout_sm90.h): slot 4t + e holds key 8 (e / 2) + 2t + e % 2, and slot 16 + 4t + e the
// same plus 16.
//
// Cost: V is read and its transpose written once, 2 s_k h_k d bytes per sequence, against the
// forward's 4 s_q s_k h d FLOPs: under 1 % of the kernel at s = 16k, more at short sequences
// (FlashAttention-3 transposes in shared memory inside the kernel instead; docs/fp8.md).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "flashattn/params.h"
#include "sm90/fp8_layout_sm90.h"

namespace flashattn::sm90 {

struct TransposeVFp8Args {
  const uint8_t* v = nullptr;  // e4m3 bytes, p.v_ptr
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;  // elements (= bytes)
  const int* seqused_k = nullptr;
  int seqlen_k = 0, h_k = 0, d = 0;
  int64_t keys_pad = 0;  // multiple of 32
  uint8_t* vt = nullptr;  // [b][h_k][d][keys_pad]
};

constexpr int kTransposeKeys = 64;      // keys per CTA
constexpr int kTransposeThreads = 256;

// One CTA per (64 keys, kv head, sequence): 16-byte loads of V rows into shared memory, then
// 16-byte stores of 16 slots of one V^T row per thread.
template <int kHeadDim>
__global__ void __launch_bounds__(kTransposeThreads)
    transpose_v_fp8_kernel(TransposeVFp8Args const a) {
  constexpr int kPitch = kHeadDim + 16;  // 16-byte aligned rows, offset banks between rows
  __shared__ __align__(16) uint8_t tile[kTransposeKeys * kPitch];
  const int key0 = int(blockIdx.x) * kTransposeKeys;
  const int hk = int(blockIdx.y), b = int(blockIdx.z);
  const int used = a.seqused_k != nullptr ? min(a.seqused_k[b], a.seqlen_k) : a.seqlen_k;
  const int chunks = a.d / 16;  // d % 16 == 0 (route)
  for (int i = threadIdx.x; i < kTransposeKeys * chunks; i += kTransposeThreads) {
    const int r = i / chunks, c = i % chunks;
    const int key = key0 + r;
    uint4 x = make_uint4(0, 0, 0, 0);
    if (key < used) {
      x = *reinterpret_cast<const uint4*>(a.v + int64_t(b) * a.v_batch_stride +
                                          int64_t(key) * a.v_row_stride +
                                          int64_t(hk) * a.v_head_stride + 16 * c);
    }
    *reinterpret_cast<uint4*>(&tile[r * kPitch + 16 * c]) = x;
  }
  __syncthreads();
  // Thread i: row c = i / 4 of V^T, slots 16 (i % 4) .. + 15 of this CTA's 64.
  for (int i = threadIdx.x; i < a.d * 4; i += kTransposeThreads) {
    const int c = i / 4, s0 = 16 * (i % 4);
    if (key0 + s0 >= a.keys_pad) continue;
    uint32_t w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t word = 0;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int slot = s0 + 4 * j + e;
        const int key = 32 * (slot / 32) + fp8_key_of_slot(slot % 32);
        word |= uint32_t(tile[key * kPitch + c]) << (8 * e);
      }
      w[j] = word;
    }
    *reinterpret_cast<uint4*>(a.vt + ((int64_t(b) * a.h_k + hk) * a.d + c) * a.keys_pad + key0 +
                              s0) = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

}  // namespace flashattn::sm90
