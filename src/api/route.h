// Arch routing of the GPU kernels: which kernel path runs a request. Pure host code (no CUDA), so
// the coverage table is unit-tested on the CPU.
//
// Two paths, both exact (the same math to rounding; never a different answer):
//  - SM80: the FlashAttention-2 kernels (src/sm80/), every feature, every GPU of compute
//    capability 8.0+ (Hopper included);
//  - SM90: the Hopper kernels (src/sm90/: TMA, wgmma, warp specialization), on GPUs that run the
//    library's sm_90a code, for the requests in its coverage table (fwd_sm90_uncovered).
// A request runs on the fastest path that covers it. The override (set_gpu_path, or the
// environment variable FLASHATTN_GPU_PATH=sm80|sm90|auto read at the first call) forces the SM80
// path everywhere, or asks for the Hopper path wherever it covers the request; every GPU test
// runs once per setting on a Hopper GPU. last_gpu_path() tells which path the calling thread's
// last GPU forward or backward ran. The forward and the backward have coverage tables of their
// own (fwd_sm90_uncovered, bwd_sm90_uncovered).
#pragma once

#include <string>

#include "flashattn/flashattn.h"

namespace flashattn::route {

// What the forward dispatch knows about a request beyond its params.
struct FwdRequest {
  bool device_runs_sm90 = false;  // compute capability 9.0 and the library's sm_90a code present
  bool sm90_compiled = false;     // a Hopper kernel for (dtype, round_head_dim_sm90(d)) exists
  bool kv_cache_hooks = false;    // KV-cache batch index / left padding (mha_fwd_kvcache)
  bool split_family = false;      // the KV-cache path's split-capable kernels were asked for
  int num_splits = 1;             // split count the dispatch chose (1 = no split)
};

// Empty when some GPU kernel path (SM80 or Hopper) may run the request; else why none can, as a
// NotSupported message naming the feature. fp8 (e4m3) inputs run only on the Hopper FP8 forward,
// which takes dense inputs with per-head descales (docs/fp8.md); the other fp8 requests, the
// KV-cache path's included, are refused here, and the CPU reference and backend compute them.
// Checked by the public entry points before the GPU dispatch, so nothing runs and nothing is
// written.
std::string gpu_unsupported(const FwdParams& p);
std::string gpu_unsupported(const KVCacheParams& p);

// Empty when the Hopper FP8 forward runs an fp8 request; else why not (device, override,
// compiled kernels, and the params gpu_unsupported checks). There is no other FP8 GPU kernel,
// so the dispatch refuses the request with this reason.
std::string fp8_sm90_uncovered(const FwdParams& p, const FwdRequest& r);

// Empty when the Hopper forward covers the request; else the first reason it does not (a
// feature name, for messages and tests).
std::string fwd_sm90_uncovered(const FwdParams& p, const FwdRequest& r);

// The path a request runs on under the current override.
GpuPath choose_fwd_path(const FwdParams& p, const FwdRequest& r);

// What the backward dispatch knows about a request beyond its params.
struct BwdRequest {
  bool device_runs_sm90 = false;  // compute capability 9.0 and the library's sm_90a code present
  bool sm90_compiled = false;     // a Hopper backward kernel for (dtype, d rounded up) exists
};

// Empty when the Hopper backward covers the request; else the first reason it does not.
std::string bwd_sm90_uncovered(const BwdParams& p, const BwdRequest& r);

// The path a backward request runs on under the current override.
GpuPath choose_bwd_path(const BwdParams& p, const BwdRequest& r);

// Records the path the calling thread's GPU forward or backward ran (read by last_gpu_path()).
void record_gpu_path(GpuPath path);

}  // namespace flashattn::route
