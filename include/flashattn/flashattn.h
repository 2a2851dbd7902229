// flashattn: exact attention (FlashAttention-2 algorithm) for NVIDIA GPUs, with a CPU backend.
//
// The public C++ API. Every entry point validates its arguments first (a bad argument returns
// kInvalidArgument naming it, and no output is touched), then runs where the data lives: GPU
// kernels when the pointers are CUDA device memory and the kernels were built, else the CPU
// backend for host memory. A valid request with no kernel yet returns kNotSupported; there is
// never a silent fallback to different math.
//
//   flashattn::FwdParams p;              // fill sizes, pointers, strides (elements)
//   p.dtype = flashattn::DType::kBFloat16;
//   p.b = 2; p.seqlen_q = p.seqlen_k = 1024; p.h = p.h_k = 16; p.d = 128;
//   p.q_ptr = q; p.q_batch_stride = 1024 * 16 * 128; p.q_row_stride = 16 * 128; ...
//   flashattn::Status s = flashattn::mha_fwd(p);
//   if (!s.ok()) std::fprintf(stderr, "%s\n", s.to_string().c_str());
#pragma once

#include <string>
#include <vector>

#include "flashattn/params.h"
#include "flashattn/status.h"

namespace flashattn {

// Dense forward: q [b, s_q, h, d], k/v [b, s_k, h_k, d] (or paged), o, optional LSE.
Status mha_fwd(const FwdParams& params);
// Varlen forward: cu_seqlens_q/k required.
Status mha_varlen_fwd(const FwdParams& params);
// Dense backward.
Status mha_bwd(const BwdParams& params);
// Varlen backward: cu_seqlens_q/k required.
Status mha_varlen_bwd(const BwdParams& params);
// Forward against a KV cache, with optional in-place append and rotary.
Status mha_fwd_kvcache(const KVCacheParams& params);
// Merge split-KV partial outputs by their LSE.
Status mha_combine(const CombineParams& params);

// Where a call runs.
enum class Backend { kCpu, kCuda };
const char* backend_name(Backend b);

// Which memory the call's pointers are in (all must agree), or an error naming the first pointer
// that does not. Host memory -> kCpu; CUDA device (or managed) memory -> kCuda.
Status locate(const FwdParams& params, Backend* out);

// GPU kernel paths. kSm80: the FlashAttention-2 kernels, every feature, every GPU of compute
// capability 8.0+ (Hopper included). kSm90: the Hopper kernels (TMA, wgmma, warp
// specialization; sm_90a code on a compute capability 9.0 GPU), for the requests they cover;
// the rest runs on kSm80. Both are exact (docs/architecture.md has the coverage table).
enum class GpuPath { kAuto, kSm80, kSm90 };
const char* gpu_path_name(GpuPath p);  // "auto", "sm80", "sm90"
// Process-wide override for the GPU calls that follow. kAuto (the default): the fastest path that
// covers the request. kSm80: the SM80 path for everything. kSm90: the Hopper path wherever it
// covers the request (a GPU that cannot run it gets NotSupported). The environment variable
// FLASHATTN_GPU_PATH=auto|sm80|sm90 sets the initial value (read at the first GPU call).
void set_gpu_path(GpuPath p);
GpuPath gpu_path();
// The path the calling thread's last successful GPU forward or backward ran on (kAuto: none yet).
GpuPath last_gpu_path();

// What this build contains.
struct BuildInfo {
  std::string version;
  bool cuda = false;                 // built with CUDA
  std::vector<int> cuda_archs;       // e.g. {80, 90}
  std::vector<int> head_dims;        // GPU forward head-dim kernels compiled (rounded-up d)
  std::vector<std::string> dtypes;   // GPU dtypes compiled
  // Hopper FP8 forward head-dim kernels compiled (64, 128, 256; e4m3 in, every dtype above out)
  std::vector<int> fp8_head_dims;
  int cuda_device_count = 0;         // devices visible at run time (0 without CUDA)
  std::string cpu_isa;               // CPU kernels in use: "avx512-bf16", "avx512", "avx2", "portable"
};
BuildInfo build_info();

}  // namespace flashattn
