// Runtime -> template dispatch of the GPU forward: checks that the request is inside what the
// GPU kernels cover (returning kNotSupported, never different math, for the rest), picks the
// kernel path (api/route.h: the Hopper kernels where they cover the request, else the SM80
// path), rounds the head dim up to a compiled kernel of that path and, on the SM80 path, chooses
// the split count and the kernel family:
//   dropout                                   -> run_fwd_dropout_sm80
//   paged KV, KV-cache hooks or num_splits > 1, or any KV-cache call
//                                             -> run_fwd_split_sm80 (split-capable)
//   otherwise                                 -> run_fwd_sm80 (plain)
// For p_ptr it runs the probabilities kernel after the forward (with the forward's LSE, into
// stream-ordered scratch when the caller passed no LSE buffer; with sinks that LSE includes the
// sink, so the probabilities leave it its share). Attention sinks run on the SM80 path in every
// family (api/route.h: the Hopper path does not cover them yet). The remaining compile-time
// features (softcap, ALiBi) are picked inside each family.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "api/heuristics.h"
#include "cuda/cuda_check.h"
#include "cuda/dispatch.h"
#include "cuda/dispatch_checks.h"
#include "cuda/fwd.h"
#include "flashattn_build_config.h"
#include "api/route.h"
#include "flashattn_fwd_sm80_instances.h"
#include "flashattn_fwd_sm90_instances.h"
#include "sm80/fwd_sm80.h"
#include "sm80/tile_size_sm80.h"
#include "sm90/fwd_sm90.h"
#include "sm90/tile_size_sm90.h"

namespace flashattn::cuda {
namespace {

Status not_implemented(const std::string& what) {
  return Status::not_supported(what + " in the GPU forward kernel is not implemented yet");
}

// The split count for p at head-dim kernel hd (1 = no split; api/heuristics.h); 0 asks the
// heuristic, which needs the SM count.
Status choose_splits(const FwdParams& p, int hd, int* splits) {
  *splits = 1;
  if (p.num_splits == 1) return Status::ok_status();
  int num_sms = 0;
  if (p.num_splits == 0) {
    int device = 0;
    FA_CUDA_CHECK(cudaGetDevice(&device));
    FA_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  }
  *splits = heuristics::fwd_num_splits_sm80(p.num_splits, p.b, p.h, p.seqlen_q, p.seqlen_k, hd,
                                            cuda::device_smem_per_sm(), num_sms);
  return Status::ok_status();
}

template <DType kDtype, int kHeadDim>
Status run_family(const FwdParams& p, const FwdCacheArgs& cache, int splits) {
  if (p.p_dropout > 0.f) return sm80::run_fwd_dropout_sm80<kDtype, kHeadDim>(p);
  const bool hooks = cache.kv_batch_idx != nullptr || cache.k_leftpad != nullptr;
  if (p.block_table != nullptr || hooks || splits > 1 || cache.split_family)
    return sm80::run_fwd_split_sm80<kDtype, kHeadDim>(p, cache.kv_batch_idx, cache.k_leftpad,
                                                      splits);
  return sm80::run_fwd_sm80<kDtype, kHeadDim>(p);
}

Status run_compiled(const FwdParams& p, const FwdCacheArgs& cache, int hd, int splits) {
#define FA_SM80_FWD_CASE(kDtype, kHeadDim) \
  if (p.dtype == kDtype && hd == kHeadDim) return run_family<kDtype, kHeadDim>(p, cache, splits);
  FA_SM80_FWD_FOR_EACH_INSTANCE(FA_SM80_FWD_CASE)
#undef FA_SM80_FWD_CASE
  return Status::not_supported(std::string("head dim ") + std::to_string(hd) + " " +
                               dtype_name(p.dtype) +
                               " GPU forward kernels not compiled in this build " +
                               compiled_config_string());
}

Status run_compiled_sm90(const FwdParams& p, int hd) {
#define FA_SM90_FWD_CASE(kDtype, kHeadDim) \
  if (p.dtype == kDtype && hd == kHeadDim) return sm90::run_fwd_sm90<kDtype, kHeadDim>(p);
  FA_SM90_FWD_FOR_EACH_INSTANCE(FA_SM90_FWD_CASE)
#undef FA_SM90_FWD_CASE
  return Status::internal("no Hopper forward kernel for a request the route gave the Hopper path");
}

Status run_compiled_sm90_fp8(const FwdParams& p, int hd) {
#define FA_SM90_FP8_FWD_CASE(kOut, kHeadDim) \
  if (p.out_dtype == kOut && hd == kHeadDim) return sm90::run_fwd_sm90_fp8<kOut, kHeadDim>(p);
  FA_SM90_FP8_FWD_FOR_EACH_INSTANCE(FA_SM90_FP8_FWD_CASE)
#undef FA_SM90_FP8_FWD_CASE
  return Status::internal("no Hopper FP8 forward kernel for a request the route gave it");
}

bool compiled_sm90_fp8(DType out, int hd) {
#define FA_SM90_FP8_FWD_IS(kOut, kHeadDim) \
  if (out == kOut && hd == kHeadDim) return true;
  FA_SM90_FP8_FWD_FOR_EACH_INSTANCE(FA_SM90_FP8_FWD_IS)
#undef FA_SM90_FP8_FWD_IS
  (void)out;
  (void)hd;
  return false;
}

}  // namespace

std::vector<int> compiled_fp8_head_dims() {
  std::vector<int> v;
#define FA_SM90_FP8_FWD_HDIM(kOut, kHeadDim) \
  if (std::find(v.begin(), v.end(), kHeadDim) == v.end()) v.push_back(kHeadDim);
  FA_SM90_FP8_FWD_FOR_EACH_INSTANCE(FA_SM90_FP8_FWD_HDIM)
#undef FA_SM90_FP8_FWD_HDIM
  return v;
}

namespace {

// fp8 (e4m3) inputs: the Hopper FP8 forward is their only GPU kernel (route::fp8_sm90_uncovered
// says why it cannot run a request, and the request is refused). The params are inside what
// route::gpu_unsupported lets through (dense, per-head descales, d % 16 == 0).
Status run_fp8(const FwdParams& p, const FwdCacheArgs& cache) {
  if (p.softcap <= 0.f && p.softmax_scale < 0.f)
    return not_implemented("a negative softmax_scale without softcap");
  if (p.b == 0 || p.h == 0 || p.seqlen_q == 0) return Status::ok_status();  // nothing to compute
  if (p.h > 65535 || p.b > 65535)
    return not_implemented("more than 65535 heads or sequences (grid y/z limit)");
  Status s = check_alignment("q_ptr", p.q_ptr, p.q_batch_stride, p.q_row_stride, p.q_head_stride, 1);
  if (s.ok()) s = check_alignment("k_ptr", p.k_ptr, p.k_batch_stride, p.k_row_stride, p.k_head_stride, 1);
  if (s.ok()) s = check_alignment("v_ptr", p.v_ptr, p.v_batch_stride, p.v_row_stride, p.v_head_stride, 1);
  if (s.ok()) s = check_alignment("o_ptr", p.o_ptr, p.o_batch_stride, p.o_row_stride, p.o_head_stride, 2);
  if (!s.ok()) return s;
  s = check_compute_capability("forward");
  if (!s.ok()) return s;
  const int hd = sm90::round_head_dim_sm90_fp8(p.d);
  route::FwdRequest r;
  r.device_runs_sm90 = device_runs_sm90_kernels();
  r.sm90_compiled = compiled_sm90_fp8(p.out_dtype, hd);
  r.kv_cache_hooks = cache.kv_batch_idx != nullptr || cache.k_leftpad != nullptr;
  r.split_family = cache.split_family;
  if (std::string why = route::fp8_sm90_uncovered(p, r); !why.empty())
    return Status::not_supported("fp8 (e4m3) attention on the GPU: " + why +
                                 " (docs/fp8.md; nothing was converted to another dtype)");
  s = run_compiled_sm90_fp8(p, hd);
  if (s.ok()) route::record_gpu_path(GpuPath::kSm90);
  return s;
}

bool compiled_sm90(DType t, int hd) {
#define FA_SM90_FWD_IS(kDtype, kHeadDim) \
  if (t == kDtype && hd == kHeadDim) return true;
  FA_SM90_FWD_FOR_EACH_INSTANCE(FA_SM90_FWD_IS)
#undef FA_SM90_FWD_IS
  (void)t;
  (void)hd;
  return false;
}

// The forward on the path api/route.h picks, recorded for last_gpu_path().
Status run_routed(const FwdParams& p, const FwdCacheArgs& cache, int hd, int splits) {
  route::FwdRequest r;
  r.device_runs_sm90 = device_runs_sm90_kernels();
  r.sm90_compiled = compiled_sm90(p.dtype, sm90::round_head_dim_sm90(p.d));
  r.kv_cache_hooks = cache.kv_batch_idx != nullptr || cache.k_leftpad != nullptr;
  r.split_family = cache.split_family;
  r.num_splits = splits;
  if (gpu_path() == GpuPath::kSm90 && !r.device_runs_sm90)
    return Status::not_supported(
        "GPU path sm90 was asked for (FLASHATTN_GPU_PATH / set_gpu_path), but this device cannot "
        "run the library's sm_90a kernels");
  const GpuPath path = route::choose_fwd_path(p, r);
  Status s = path == GpuPath::kSm90 ? run_compiled_sm90(p, sm90::round_head_dim_sm90(p.d))
                                    : run_compiled(p, cache, hd, splits);
  if (s.ok()) route::record_gpu_path(path);
  return s;
}

bool compiled(DType t, int hd) {
#define FA_SM80_FWD_IS(kDtype, kHeadDim) \
  if (t == kDtype && hd == kHeadDim) return true;
  FA_SM80_FWD_FOR_EACH_INSTANCE(FA_SM80_FWD_IS)
#undef FA_SM80_FWD_IS
  return false;
}

}  // namespace

Status run_mha_fwd(const FwdParams& p, const FwdCacheArgs& cache) {
  // The kernels would ignore a V head dim of its own, a silently wrong result: refused until
  // they take it.
  if (p.dv != p.d)
    return not_implemented("dv = " + std::to_string(p.dv) + " != d = " + std::to_string(p.d) +
                           " (a V head dim other than the Q/K head dim)");
  const bool varlen = p.cu_seqlens_q != nullptr;
  const bool hooks = cache.kv_batch_idx != nullptr || cache.k_leftpad != nullptr;
  if (hooks && (varlen || p.block_table != nullptr))
    return Status::not_supported(
        "cache_batch_idx / cache_leftpad in the GPU forward: dense, contiguous K/V only");
  if (cache.k_leftpad != nullptr && p.seqused_k == nullptr)
    return Status::invalid("k_leftpad (cache_leftpad) needs seqused_k (the keys end)");
  if (p.p_dropout > 0.f && (p.block_table != nullptr || hooks))
    return not_implemented("dropout with paged KV");
  if (p.p_ptr != nullptr && varlen)
    return Status::not_supported("p_ptr with varlen inputs (probabilities are dense only)");
  if (p.dtype == DType::kFloat8E4M3) return run_fp8(p, cache);
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return Status::not_supported(std::string("dtype ") + dtype_name(p.dtype) +
                                 " has no GPU forward kernel (fp16 and bf16 only)");
  if (p.d % 8 != 0 || p.d > 256 || p.d <= 0)
    return Status::not_supported("head dim " + std::to_string(p.d) +
                                 ": the GPU forward kernels need d % 8 == 0 and d <= 256");
  if (p.softcap <= 0.f && p.softmax_scale < 0.f)
    return not_implemented("a negative softmax_scale without softcap");
  if (p.b == 0 || p.h == 0 || p.seqlen_q == 0) return Status::ok_status();  // nothing to compute
  if (varlen && p.total_q == 0) return Status::ok_status();
  if (p.h > 65535 || p.b > 65535)
    return not_implemented("more than 65535 heads or sequences (grid y/z limit)");

  Status s = check_alignment("q_ptr", p.q_ptr, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
  if (s.ok()) s = check_alignment("k_ptr", p.k_ptr, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
  if (s.ok()) s = check_alignment("v_ptr", p.v_ptr, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
  if (s.ok()) s = check_alignment("o_ptr", p.o_ptr, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
  if (!s.ok()) return s;

  s = check_compute_capability("forward");
  if (!s.ok()) return s;

  const int hd = sm80::round_head_dim_sm80(p.d);
  if (!compiled(p.dtype, hd))
    return Status::not_supported(std::string("head dim ") + std::to_string(hd) + " " +
                                 dtype_name(p.dtype) +
                                 " GPU forward kernels not compiled in this build " +
                                 compiled_config_string());
  int splits = 1;
  s = choose_splits(p, hd, &splits);
  if (!s.ok()) return s;
  if (p.p_ptr == nullptr) return run_routed(p, cache, hd, splits);

  // p_ptr: the forward's LSE is needed; without a caller buffer it goes to scratch.
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  FwdParams fp = p;
  float* lse_scratch = nullptr;
  if (fp.softmax_lse_ptr == nullptr) {
    FA_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&lse_scratch),
                                  sizeof(float) * size_t(p.b) * p.h * p.seqlen_q, stream));
    fp.softmax_lse_ptr = lse_scratch;
  }
  s = run_routed(fp, cache, hd, splits);
  if (s.ok()) s = sm80::run_fwd_probs_sm80(fp, fp.softmax_lse_ptr);
  if (lse_scratch != nullptr) {
    const cudaError_t free_err = cudaFreeAsync(lse_scratch, stream);
    if (!s.ok()) return s;
    FA_CUDA_CHECK(free_err);
  }
  return s;
}

}  // namespace flashattn::cuda
