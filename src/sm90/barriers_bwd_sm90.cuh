// Named barriers of the Hopper backward kernel (hardware barrier 0 is __syncthreads(); the
// bar.sync / bar.arrive wrappers are the forward's, barriers_sm90.cuh).
//
//   kBwdDsFull   the kMmaThreads consumer threads, after each wrote its dS^T fragment into the
//                step's dS buffer (and fenced it for the async proxy): the dQ GEMM of either
//                warpgroup reads every key's dS, so no warpgroup issues it before both wrote.
#pragma once

#include "sm90/barriers_sm90.cuh"

namespace flashattn::sm90 {

enum BwdBarrierSm90 : int {
  kBwdDsFull = 1,
};

}  // namespace flashattn::sm90
