// Runtime -> template dispatch of the GPU backward: checks that the request is inside what the GPU
// backward kernels cover (returning kNotSupported, never different math, for the rest), picks the
// kernel path (api/route.h: the Hopper backward where its coverage table covers the request, else
// the SM80 path), rounds the head dim up to a compiled kernel of that path and calls that
// (dtype, head dim) instantiation. The remaining compile-time features (softcap, ALiBi, dropout)
// are picked inside the SM80 instantiation.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda/bwd.h"
#include "cuda/cuda_check.h"
#include "api/route.h"
#include "cuda/dispatch.h"
#include "cuda/dispatch_checks.h"
#include "flashattn_build_config.h"
#include "flashattn_bwd_sm80_instances.h"
#include "flashattn_bwd_sm90_instances.h"
#include "sm80/bwd_sm80.h"
#include "sm80/tile_size_sm80.h"
#include "sm90/bwd_sm90.h"
#include "sm90/tile_size_bwd_sm90.h"

namespace flashattn::cuda {
namespace {

Status not_implemented(const std::string& what) {
  return Status::not_supported(what + " in the GPU backward kernel is not implemented yet");
}

Status run_compiled_sm80(const BwdParams& p) {
  const int hd = sm80::round_head_dim_sm80(p.d);
#define FA_SM80_BWD_CASE(kDtype, kHeadDim) \
  if (p.dtype == kDtype && hd == kHeadDim) return sm80::run_bwd_sm80<kDtype, kHeadDim>(p);
  FA_SM80_BWD_FOR_EACH_INSTANCE(FA_SM80_BWD_CASE)
#undef FA_SM80_BWD_CASE
  return Status::not_supported(
      std::string("head dim ") + std::to_string(hd) + " " + dtype_name(p.dtype) +
      " GPU backward kernels not compiled in this build " + compiled_config_string());
}

Status run_compiled_sm90(const BwdParams& p) {
  const int hd = sm90::round_head_dim_bwd_sm90(p.d);
#define FA_SM90_BWD_CASE(kDtype, kHeadDim) \
  if (p.dtype == kDtype && hd == kHeadDim) return sm90::run_bwd_sm90<kDtype, kHeadDim>(p);
  FA_SM90_BWD_FOR_EACH_INSTANCE(FA_SM90_BWD_CASE)
#undef FA_SM90_BWD_CASE
  (void)hd;
  return Status::internal("no Hopper backward kernel for a request the route gave the Hopper path");
}

bool compiled_sm90(DType t, int hd) {
#define FA_SM90_BWD_IS(kDtype, kHeadDim) \
  if (t == kDtype && hd == kHeadDim) return true;
  FA_SM90_BWD_FOR_EACH_INSTANCE(FA_SM90_BWD_IS)
#undef FA_SM90_BWD_IS
  (void)t;
  (void)hd;
  return false;
}

// The backward on the path api/route.h picks, recorded for last_gpu_path().
Status run_routed(const BwdParams& p) {
  route::BwdRequest r;
  r.device_runs_sm90 = device_runs_sm90_kernels();
  r.sm90_compiled = compiled_sm90(p.dtype, sm90::round_head_dim_bwd_sm90(p.d));
  if (gpu_path() == GpuPath::kSm90 && !r.device_runs_sm90)
    return Status::not_supported(
        "GPU path sm90 was asked for (FLASHATTN_GPU_PATH / set_gpu_path), but this device cannot "
        "run the library's sm_90a kernels");
  const GpuPath path = route::choose_bwd_path(p, r);
  const Status s = path == GpuPath::kSm90 ? run_compiled_sm90(p) : run_compiled_sm80(p);
  if (s.ok()) route::record_gpu_path(path);
  return s;
}

}  // namespace

Status run_mha_bwd(const BwdParams& p) {
  // The kernels would ignore a V head dim of its own, a silently wrong result: refused until
  // they take it. (Sinks need nothing of the SM80 main kernels: the forward's LSE includes them,
  // so P = exp(S - LSE) is already theirs; dsinks comes from the SM80 preprocess's D, which is why
  // the route keeps sinks off the Hopper backward.)
  if (p.dv != p.d)
    return not_implemented("dv = " + std::to_string(p.dv) + " != d = " + std::to_string(p.d) +
                           " (a V head dim other than the Q/K head dim)");
  if (p.block_table != nullptr) return not_implemented("paged KV (block_table)");
  if (p.dqkv_fp32) return not_implemented("dqkv_fp32 (fp32 gradient outputs)");
  if (p.dqkv_accumulate) return not_implemented("dqkv_accumulate (adding into dq/dk/dv)");
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return Status::not_supported(std::string("dtype ") + dtype_name(p.dtype) +
                                 " has no GPU backward kernel (fp16 and bf16 only)");
  if (p.d % 8 != 0 || p.d > 256 || p.d <= 0)
    return Status::not_supported("head dim " + std::to_string(p.d) +
                                 ": the GPU backward kernels need d % 8 == 0 and d <= 256");
  const bool varlen = p.cu_seqlens_q != nullptr;
  const int64_t rows_q = varlen ? int64_t(p.total_q) : int64_t(p.b) * p.seqlen_q;
  const int64_t rows_k = varlen ? int64_t(p.total_k) : int64_t(p.b) * p.seqlen_k;
  if (p.b == 0 || p.h == 0 || (rows_q == 0 && rows_k == 0)) {
    // Nothing to differentiate, but dsinks is overwritten all the same: a sum over no rows, 0.
    if (p.dsinks != nullptr && p.h > 0)
      FA_CUDA_CHECK(cudaMemsetAsync(p.dsinks, 0, sizeof(float) * size_t(p.h),
                                    static_cast<cudaStream_t>(p.stream)));
    return Status::ok_status();
  }
  if (p.h > 65535 || p.b > 65535)
    return not_implemented("more than 65535 heads or sequences (grid y/z limit)");

  Status s = check_alignment("q_ptr", p.q_ptr, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
  if (s.ok()) s = check_alignment("k_ptr", p.k_ptr, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
  if (s.ok()) s = check_alignment("v_ptr", p.v_ptr, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
  if (s.ok()) s = check_alignment("o_ptr", p.o_ptr, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
  if (s.ok()) s = check_alignment("do_ptr", p.do_ptr, p.do_batch_stride, p.do_row_stride, p.do_head_stride);
  if (s.ok()) s = check_alignment("dq_ptr", p.dq_ptr, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride);
  if (s.ok()) s = check_alignment("dk_ptr", p.dk_ptr, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride);
  if (s.ok()) s = check_alignment("dv_ptr", p.dv_ptr, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride);
  if (!s.ok()) return s;

  s = check_compute_capability("backward");
  if (!s.ok()) return s;

  return run_routed(p);
}

}  // namespace flashattn::cuda
