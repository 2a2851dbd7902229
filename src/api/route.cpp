// Arch routing of the GPU kernels (route.h): the Hopper path's coverage table and the override.
#include "api/route.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "sm90/tile_size_sm90.h"

namespace flashattn {

const char* gpu_path_name(GpuPath p) {
  switch (p) {
    case GpuPath::kSm80: return "sm80";
    case GpuPath::kSm90: return "sm90";
    default: return "auto";
  }
}

namespace {

// -1: not read yet; else a GpuPath. The environment is read once, at the first use.
std::atomic<int> path_override{-1};
thread_local GpuPath last_path = GpuPath::kAuto;

GpuPath path_from_env() {
  const char* v = std::getenv("FLASHATTN_GPU_PATH");
  if (v == nullptr) return GpuPath::kAuto;
  if (std::strcmp(v, "sm80") == 0) return GpuPath::kSm80;
  if (std::strcmp(v, "sm90") == 0) return GpuPath::kSm90;
  return GpuPath::kAuto;
}

}  // namespace

void set_gpu_path(GpuPath p) { path_override.store(int(p)); }

GpuPath gpu_path() {
  int v = path_override.load(std::memory_order_relaxed);
  if (v < 0) {
    int expected = -1;
    path_override.compare_exchange_strong(expected, int(path_from_env()));
    v = path_override.load();
  }
  return GpuPath(v);
}

GpuPath last_gpu_path() { return last_path; }

namespace route {

namespace {

// What of an fp8 request the Hopper FP8 forward does not take, from the params alone.
std::string fp8_params_uncovered(const FwdParams& p) {
  if (p.cu_seqlens_q != nullptr || p.cu_seqlens_k != nullptr) return "varlen";
  if (p.block_table != nullptr) return "paged KV";
  if (p.q_block_descale != nullptr || p.k_block_descale != nullptr ||
      p.v_block_descale != nullptr)
    return "per-block descales";
  if (p.d % 16 != 0 || p.d > 256) return "head dim " + std::to_string(p.d) + " (d % 16 != 0 or > 256)";
  return "";
}

std::string fp8_refusal(const std::string& what) {
  return "fp8 (e4m3) inputs with " + what +
         ": the GPU's FP8 kernel (the Hopper forward) takes dense q, k, v with per-head descales "
         "and d % 16 == 0 (docs/fp8.md); the CPU backend computes every fp8 case, on host "
         "tensors. Nothing was converted to another dtype";
}

}  // namespace

std::string gpu_unsupported(const FwdParams& p) {
  if (p.dtype == DType::kFloat8E4M3) {
    const std::string why = fp8_params_uncovered(p);
    if (!why.empty()) return fp8_refusal(why);
  }
  return "";
}

std::string gpu_unsupported(const KVCacheParams& p) {
  if (p.dtype == DType::kFloat8E4M3) return fp8_refusal("the KV-cache path (mha_fwd_kvcache)");
  return gpu_unsupported(static_cast<const FwdParams&>(p));
}

std::string fp8_sm90_uncovered(const FwdParams& p, const FwdRequest& r) {
  if (!r.device_runs_sm90) return "device (FP8 attention needs the sm_90a kernels of a Hopper GPU)";
  if (gpu_path() == GpuPath::kSm80)
    return "the SM80 path, forced by FLASHATTN_GPU_PATH / set_gpu_path (it has no FP8 kernel)";
  if (!r.sm90_compiled) return "head dim / output dtype not compiled for FP8 (FA_FP8, FA_HDIMS)";
  if (std::string why = fp8_params_uncovered(p); !why.empty()) return why;
  if (r.kv_cache_hooks || r.split_family) return "KV-cache path";
  if (r.num_splits > 1) return "split-KV";
  return "";
}

std::string fwd_sm90_uncovered(const FwdParams& p, const FwdRequest& r) {
  if (p.dtype == DType::kFloat8E4M3) return fp8_sm90_uncovered(p, r);
  if (!r.device_runs_sm90) return "device (no sm_90a code for this GPU)";
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) return "dtype";
  if (!r.sm90_compiled) return "head dim / dtype not compiled for sm_90a";
  if (p.p_dropout > 0.f && !sm90::tile_size_fwd_sm90(sm90::round_head_dim_sm90(p.d)).dropout)
    return "dropout at this head dim";
  if (p.block_table != nullptr) return "paged KV";
  if (r.kv_cache_hooks || r.split_family) return "KV-cache path";
  if (r.num_splits > 1) return "split-KV";
  return "";
}

GpuPath choose_fwd_path(const FwdParams& p, const FwdRequest& r) {
  if (gpu_path() == GpuPath::kSm80) return GpuPath::kSm80;
  return fwd_sm90_uncovered(p, r).empty() ? GpuPath::kSm90 : GpuPath::kSm80;
}

// The Hopper backward (src/sm90/*bwd*, docs/sm90_backward.md) covers dense fp16 / bf16 inputs with
// causal and sliding-window masks, GQA / MQA and any 16-byte aligned strides; the rest runs on the
// SM80 path, which has every feature. Deterministic requests go there too: the Hopper kernel adds
// the dQ partials of the key blocks with unordered atomics. Attention sinks need nothing of the
// mainloop (the LSE includes the sink); their gradient is the shared dsinks kernel's.
std::string bwd_sm90_uncovered(const BwdParams& p, const BwdRequest& r) {
  if (!r.device_runs_sm90) return "device (no sm_90a code for this GPU)";
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) return "dtype";
  if (!r.sm90_compiled) return "head dim / dtype not compiled for sm_90a";
  if (p.cu_seqlens_q != nullptr) return "varlen";
  if (p.seqused_k != nullptr) return "seqused_k";
  if (p.p_dropout > 0.f) return "dropout";
  if (p.softcap > 0.f) return "softcap";
  if (p.alibi_slopes != nullptr) return "ALiBi";
  if (p.block_table != nullptr) return "paged KV";
  if (p.deterministic) return "deterministic";
  if (!(p.softmax_scale > 0.f)) return "softmax_scale <= 0";
  return "";
}

GpuPath choose_bwd_path(const BwdParams& p, const BwdRequest& r) {
  if (gpu_path() == GpuPath::kSm80) return GpuPath::kSm80;
  return bwd_sm90_uncovered(p, r).empty() ? GpuPath::kSm90 : GpuPath::kSm80;
}

void record_gpu_path(GpuPath path) { last_path = path; }

}  // namespace route
}  // namespace flashattn
