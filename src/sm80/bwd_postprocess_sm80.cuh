// Backward postprocess:
//  - dQ = softmax_scale * dq_accum, rounded to the dtype (dq_accum holds the unscaled fp32 sums
//    of every key block's dS K, one tile per query block in the dQ gemm's accumulator order);
//  - GQA/MQA only: dK, dV of kv head g = the sum over its query heads g * r .. g * r + r - 1 of
//    the fp32 per-query-head gradients, summed in head order (so the result is deterministic),
//    rounded to the dtype once.
// dK / dV: one warp per (row, head); each lane handles 8 consecutive elements (16-byte stores).
#pragma once

#include <cuda_runtime.h>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

#include <cstdint>

#include <cute/tensor.hpp>

#include "common/seqlen.h"
#include "sm80/bwd_args_sm80.h"
#include "sm80/bwd_preprocess_sm80.cuh"
#include "sm80/mainloop_bwd_sm80.cuh"

namespace flashattn::sm80 {

template <typename Element>
__forceinline__ __device__ void store_vec8(Element* dst, float const (&v)[8]) {
  cutlass::Array<Element, 8> out;
  CUTLASS_PRAGMA_UNROLL
  for (int e = 0; e < 8; ++e) out[e] = Element(v[e]);
  *reinterpret_cast<cutlass::Array<Element, 8>*>(dst) = out;
}

// dQ of one (query block, head, sequence): the dq_accum tile (accumulator order, see
// BwdKernelTraitsSm80::dq_accum_index) read back by the thread that owns each value in the dQ
// gemm's partition, scaled, rounded, staged row-major in shared memory and written out as
// 16-byte row vectors (rows < seqlen_q, columns < d).
template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads) flash_bwd_convert_dq_sm80_kernel(BwdArgsSm80 const args) {
  using namespace cute;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kPitch = kHeadDim + 8;  // elements; the padding staggers the rows over the banks
  __shared__ __align__(16) Element tile_s[kBlockM * kPitch];
  const BwdParams& p = args.p;
  const int m_block = blockIdx.x, bidh = blockIdx.y, bidb = blockIdx.z;
  const SeqlenInfo seq = SeqlenInfo::make(p, bidb);
  const int m0 = m_block * kBlockM;
  if (m0 >= seq.seqlen_q) return;
  const int tid = threadIdx.x;
  const float* tile = args.dq_accum + (dq_tile0<kBlockM>(args, seq, bidb, bidh) + m_block) *
                                          Traits::kDqTileElems;

  typename Traits::TiledMmadQ tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  Tensor c = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  constexpr int kN = decltype(size(c))::value;
  static_assert(kN % 4 == 0);
  CUTE_UNROLL
  for (int i = 0; i < kN; i += 4) {
    float v[4];
    if constexpr (Traits::kDqVectorAtomics) {  // values i .. i + 3 adjacent: one 16-byte load
      const float4 a = *reinterpret_cast<const float4*>(tile + Traits::dq_accum_index(tid, i));
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
    } else {
      CUTE_UNROLL
      for (int e = 0; e < 4; ++e) v[e] = tile[Traits::dq_accum_index(tid, i + e)];
    }
    CUTE_UNROLL
    for (int e = 0; e < 4; ++e) {
      tile_s[get<0>(c(i + e)) * kPitch + get<1>(c(i + e))] = Element(v[e] * p.softmax_scale);
    }
  }
  __syncthreads();
  const bool varlen = p.cu_seqlens_q != nullptr;
  Element* dq = static_cast<Element*>(p.dq_ptr) +
      seq.q_offset(p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride, bidb, m0, bidh, varlen);
  const int rows = min(kBlockM, seq.seqlen_q - m0);
  constexpr int kVecsPerRow = kHeadDim / 8;
  for (int v = tid; v < kBlockM * kVecsPerRow; v += Traits::kNThreads) {
    const int r = v / kVecsPerRow, col = (v % kVecsPerRow) * 8;
    if (r < rows && col < p.d) {
      *reinterpret_cast<uint4*>(dq + int64_t(r) * p.dq_row_stride + col) =
          *reinterpret_cast<const uint4*>(tile_s + r * kPitch + col);
    }
  }
}

template <typename Element>
__global__ void __launch_bounds__(256) flash_bwd_reduce_dkv_sm80_kernel(BwdArgsSm80 const args) {
  const BwdParams& p = args.p;
  const int64_t pair = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (pair >= int64_t(args.rows_k) * p.h_k) return;
  const int64_t row = pair / p.h_k;
  const int head_kv = int(pair % p.h_k);
  const bool varlen = p.cu_seqlens_q != nullptr;
  const int64_t bidb = varlen ? 0 : row / p.seqlen_k;
  const int64_t j = varlen ? row : row % p.seqlen_k;
  Element* dk = static_cast<Element*>(p.dk_ptr) + bidb * p.dk_batch_stride + j * p.dk_row_stride +
                head_kv * p.dk_head_stride;
  Element* dv = static_cast<Element*>(p.dv_ptr) + bidb * p.dv_batch_stride + j * p.dv_row_stride +
                head_kv * p.dv_head_stride;
  const int ratio = args.h_h_k_ratio;
  const int64_t base = (row * p.h + int64_t(head_kv) * ratio) * args.d_accum;  // [rows_k, h, d_accum]
  for (int x = lane * 8; x < p.d; x += 32 * 8) {
    float sk[8] = {}, sv[8] = {};
    for (int g = 0; g < ratio; ++g) {
      const float* ak = args.dk_accum + base + g * args.d_accum + x;
      const float* av = args.dv_accum + base + g * args.d_accum + x;
      CUTLASS_PRAGMA_UNROLL
      for (int e = 0; e < 8; ++e) {
        sk[e] += ak[e];
        sv[e] += av[e];
      }
    }
    store_vec8(dk + x, sk);
    store_vec8(dv + x, sv);
  }
}

}  // namespace flashattn::sm80
