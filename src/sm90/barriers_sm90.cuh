// Named barriers of the Hopper forward kernel, and the thin wrappers over `bar.sync` /
// `bar.arrive` it uses. Hardware barrier 0 is __syncthreads(); the kernel owns 1..9.
//
//   kQueryEmpty      consumers (all kMmaThreads) arrive when their last S GEMM of a tile is done
//                    (no wgmma reads smem_q any more); the producer warp syncs on it before the
//                    TMA load of the next tile's Q, which so lands while the consumers finish the
//                    tile. Consumers also arrive once at start, for the first Q.
//   kOEmpty          consumers arrive when the O they staged in smem_v has been read out (by the
//                    TMA store, or by their own vector loads); the producer warp syncs on it before
//                    the first V load of the next tile. Consumers also arrive once at start.
//   kEpilogue        all consumer threads, before staging O in smem_v: every warpgroup's last
//                    P V GEMM (which reads smem_v) is done.
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
  kOEmpty = 2,
  kEpilogue = 3,
  kWarpGroup = 4,  // 4, 5, 6
  kTurn = 7,       // 7, 8, 9
};

__forceinline__ __device__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}
__forceinline__ __device__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace flashattn::sm90
