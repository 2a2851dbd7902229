// Named barriers of the Hopper forward kernel, and the thin wrappers over `bar.sync` /
// `bar.arrive` it uses. Hardware barrier 0 is __syncthreads(); the kernel owns 1..7.
//
//   kQueryEmpty      consumers (all kMmaThreads) arrive when they no longer read smem_q (Q, and
//                    O staged in its place); the producer warp syncs on it before the TMA load of
//                    the next tile's Q. Consumers also arrive once at start, for the first Q.
//   kWarpGroup + w   the 128 threads of consumer warpgroup w: shared-memory writes of the
//                    warpgroup (O staging, V tail zeroing) are visible to all of it after it.
//   kTurn + w        ping-pong: consumer warpgroup w syncs on its own barrier before issuing a
//                    step's GEMMs and arrives on the next warpgroup's after issuing them, so the
//                    warpgroups take turns on the tensor cores and each does its softmax while
//                    another's GEMMs run. 2 x 128 threads each.
#pragma once

namespace flashattn::sm90 {

enum FwdBarrierSm90 : int {
  kQueryEmpty = 1,
  kWarpGroup = 2,  // 2, 3, 4
  kTurn = 5,       // 5, 6, 7
};

__forceinline__ __device__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}
__forceinline__ __device__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace flashattn::sm90
