// Register-level helpers of the SM80-path kernels: reuse of an m16n8k16 accumulator as the A
// operand of the next MMA, pipelined smem -> register gemms, predicated (zero-filling) tile
// copies, and the sm_90 cluster primitives of the split-KV merge. The (row, col) view of an
// accumulator, the quad reductions and the fragment conversion are arch-neutral
// (common/accumulator.cuh).
#pragma once

#include <cute/tensor.hpp>

#include "common/accumulator.cuh"

namespace flashattn::sm80 {

using namespace cute;
using namespace flashattn::gpu;  // the arch-neutral device components (src/common/*.cuh)

// The A operand of m16n8k16 holds, per thread, (a0..a3) = the C values of one n8 column block and
// (a4..a7) = those of the next one. So the S accumulator ((2, 2), MMA_M, MMA_N) read as
// ((2, 2, 2), MMA_M, MMA_N / 2) is P in A-operand order: no data movement.
template <class Layout>
__forceinline__ __device__ auto acc_layout_as_a_operand(Layout const& acc) {
  static_assert(decltype(size<0>(acc))::value == 4);
  static_assert(decltype(size<2>(acc))::value % 2 == 0);
  auto split = logical_divide(acc, Shape<Underscore, Underscore, _2>{});  // (4, M, (2, N / 2))
  return make_layout(make_layout(get<0>(split), get<2, 0>(split)), get<1>(split),
                     get<2, 1>(split));
}

// acc += A * B^T with both operands in shared memory, walked in steps of (k-slice, ldmatrix.x4
// chunk of B = 16 columns): the loads of step t + kAhead are issued before the MMAs of step t
// (A's k-slice together with its slice's first chunk). The classic order (gemm_ss<0>) keeps two
// whole k-slices of B live (2 x 16 registers for 64 columns); this keeps kAhead + 1 chunks of 4.
// That is what lets the d = 128 forward afford double-buffered swizzled K/V without spilling
// (tile_size_sm80.h). A step is 2 x MMA_M MMAs, so kAhead = 1-2 covers the ldmatrix latency.
template <int kAhead, class TensorAcc, class TensorRA, class TensorRB, class TensorSA,
          class TensorSB, class TiledMma, class CopyA, class CopyB, class ThrCopyA, class ThrCopyB>
__forceinline__ __device__ void gemm_ss_streamed(TensorAcc& acc, TensorRA& tCrA, TensorRB& tCrB,
                                                 TensorSA const& tCsA, TensorSB const& tCsB,
                                                 TiledMma const& tiled_mma, CopyA const& copy_a,
                                                 CopyB const& copy_b, ThrCopyA const& thr_copy_a,
                                                 ThrCopyB const& thr_copy_b) {
  Tensor tCrA_view = thr_copy_a.retile_D(tCrA);
  Tensor tCrB_view = thr_copy_b.retile_D(tCrB);  // (CPY, CPY_N, CPY_K), CPY_N = MMA_N / 2
  constexpr int kK = decltype(size<2>(tCrA))::value;
  constexpr int kChunks = decltype(size<1>(tCrB_view))::value;
  constexpr int kSteps = kK * kChunks;
  static_assert(kAhead >= 1 && kAhead < kSteps);
  static_assert(decltype(size<1>(tCrB))::value == 2 * kChunks);
  auto load = [&](int t) {
    const int k = t / kChunks, nc = t % kChunks;
    if (nc == 0) copy(copy_a, tCsA(_, _, k), tCrA_view(_, _, k));
    copy(copy_b, tCsB(_, nc, k), tCrB_view(_, nc, k));
  };
  CUTE_UNROLL
  for (int t = 0; t < kAhead; ++t) load(t);
  CUTE_UNROLL
  for (int t = 0; t < kSteps; ++t) {
    if (t + kAhead < kSteps) load(t + kAhead);
    const int k = t / kChunks, nc = t % kChunks;
    CUTE_UNROLL
    for (int j = 0; j < 2; ++j) {
      CUTE_UNROLL
      for (int m = 0; m < size<1>(tCrA); ++m)
        cute::gemm(tiled_mma, tCrA(_, m, k), tCrB(_, 2 * nc + j, k), acc(_, m, 2 * nc + j));
    }
  }
}

// acc += A * B^T with both operands in shared memory. kChunksAhead = 0: loads k-slice i + 1
// (ldmatrix) while the MMAs of slice i run; kChunksAhead > 0: gemm_ss_streamed above (the
// kernel's tile policy picks).
template <int kChunksAhead = 0, class TensorAcc, class TensorRA, class TensorRB, class TensorSA,
          class TensorSB, class TiledMma, class CopyA, class CopyB, class ThrCopyA, class ThrCopyB>
__forceinline__ __device__ void gemm_ss(TensorAcc& acc, TensorRA& tCrA, TensorRB& tCrB,
                                        TensorSA const& tCsA, TensorSB const& tCsB,
                                        TiledMma const& tiled_mma, CopyA const& copy_a,
                                        CopyB const& copy_b, ThrCopyA const& thr_copy_a,
                                        ThrCopyB const& thr_copy_b) {
  if constexpr (kChunksAhead > 0) {
    gemm_ss_streamed<kChunksAhead>(acc, tCrA, tCrB, tCsA, tCsB, tiled_mma, copy_a, copy_b,
                                   thr_copy_a, thr_copy_b);
  } else {
    Tensor tCrA_view = thr_copy_a.retile_D(tCrA);
    Tensor tCrB_view = thr_copy_b.retile_D(tCrB);
    copy(copy_a, tCsA(_, _, _0{}), tCrA_view(_, _, _0{}));
    copy(copy_b, tCsB(_, _, _0{}), tCrB_view(_, _, _0{}));
    CUTE_UNROLL
    for (int i = 0; i < size<2>(tCrA); ++i) {
      if (i + 1 < size<2>(tCrA)) {
        copy(copy_a, tCsA(_, _, i + 1), tCrA_view(_, _, i + 1));
        copy(copy_b, tCsB(_, _, i + 1), tCrB_view(_, _, i + 1));
      }
      cute::gemm(tiled_mma, tCrA(_, _, i), tCrB(_, _, i), acc);
    }
  }
}

// acc += A * B^T with A already in registers (P) and B in shared memory (V^T), walking B's N
// (head dim) in the outer loop: each ldmatrix.x4.trans chunk feeds two n8 columns of every MMA_M
// row tile for all k, so only one chunk of B is live at a time (B covers the whole head dim,
// 2 x 32 registers per 16 keys at d = 128 if loaded a k-slice at a time).
template <class TensorAcc, class TensorRA, class TensorRB, class TensorSB, class TiledMma,
          class CopyB, class ThrCopyB>
__forceinline__ __device__ void gemm_rs(TensorAcc& acc, TensorRA const& tCrA, TensorRB& tCrB,
                                        TensorSB const& tCsB, TiledMma const& tiled_mma,
                                        CopyB const& copy_b, ThrCopyB const& thr_copy_b) {
  Tensor tCrB_view = thr_copy_b.retile_D(tCrB);  // (CPY, CPY_N, CPY_K), CPY_N = MMA_N / 2
  static_assert(decltype(size<1>(tCrB))::value == 2 * decltype(size<1>(tCrB_view))::value);
  CUTE_UNROLL
  for (int nc = 0; nc < size<1>(tCrB_view); ++nc) {
    CUTE_UNROLL
    for (int k = 0; k < size<2>(tCrA); ++k) copy(copy_b, tCsB(_, nc, k), tCrB_view(_, nc, k));
    CUTE_UNROLL
    for (int k = 0; k < size<2>(tCrA); ++k) {
      CUTE_UNROLL
      for (int j = 0; j < 2; ++j) {
        CUTE_UNROLL
        for (int m = 0; m < size<1>(tCrA); ++m) {
          cute::gemm(tiled_mma, tCrA(_, m, k), tCrB(_, 2 * nc + j, k), acc(_, m, 2 * nc + j));
        }
      }
    }
  }
}

// threadIdx.x read afresh at this point of the code: the asm is volatile, so the compiler can
// neither hoist the read out of a loop nor reuse an earlier one. Values derived from it are then
// recomputed where they are used (a few integer ops) instead of held in a register across the
// loop, which matters in main loops that sit at the 255-register limit.
__forceinline__ __device__ int fresh_thread_idx() {
  int tid;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(tid));
  return tid;
}

// Tile copy gmem -> smem with cp.async, zero-filling every 16-byte vector whose row is
// >= max_rows (kCheckRows) or whose column vector is off in pred_k (head dim < kHeadDim). The
// zero fill matters: rows past a sequence end must contribute exact zeros, never stale smem.
template <bool kCheckRows, class TiledCopy, class TensorS, class TensorD, class TensorC,
          class TensorP>
__forceinline__ __device__ void copy_zfill(TiledCopy const& tiled_copy, TensorS const& src,
                                           TensorD&& dst, TensorC const& coord,
                                           TensorP const& pred_k, int max_rows) {
  CUTE_UNROLL
  for (int m = 0; m < size<1>(src); ++m) {
    const bool row_ok = !kCheckRows || get<0>(coord(0, m, 0)) < max_rows;
    CUTE_UNROLL
    for (int k = 0; k < size<2>(src); ++k) {
      copy(tiled_copy.with(row_ok && pred_k(k)), src(_, m, k), dst(_, m, k));
    }
  }
}

// Thread-block clusters and distributed shared memory (sm_90; the split-KV merge of
// EpilogueFwdSm80::merge_in_cluster). Compiled for sm_90+ only: the host enables the cluster
// path only when the kernels' binary is (cuda::device_runs_sm90_kernels).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// Every thread of every CTA of the cluster arrives (release) and waits (acquire): shared-memory
// writes before it are visible to the whole cluster after it.
__forceinline__ __device__ void cluster_barrier() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;"
               ::: "memory");
}
// The shared::cluster address of `p` (this CTA's shared memory) in the CTA of cluster rank `rank`.
__forceinline__ __device__ uint32_t cluster_map(const void* p, int rank) {
  const uint32_t local = uint32_t(__cvta_generic_to_shared(p));
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
  return remote;
}
__forceinline__ __device__ float cluster_load(uint32_t addr) {
  float v;
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(addr) : "memory");
  return v;
}
__forceinline__ __device__ float4 cluster_load4(uint32_t addr) {
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(addr) : "memory");
  return v;
}
#endif

}  // namespace flashattn::sm80
