// Runtime -> template dispatch of the GPU forward: checks that the request is inside what the
// SM80-path kernels cover (returning kNotSupported, never different math, for the rest), rounds
// the head dim up to a compiled kernel and calls that (dtype, head dim) instantiation. The
// remaining compile-time features (softcap, ALiBi) are picked inside the instantiation.
#include <cuda_runtime.h>

#include <string>

#include "cuda/cuda_check.h"
#include "cuda/dispatch_checks.h"
#include "cuda/fwd.h"
#include "flashattn_build_config.h"
#include "flashattn_fwd_sm80_instances.h"
#include "sm80/fwd_sm80.h"
#include "sm80/tile_size_sm80.h"

namespace flashattn::cuda {
namespace {

Status not_implemented(const std::string& what) {
  return Status::not_supported(what + " in the GPU forward kernel is not implemented yet");
}

}  // namespace

Status run_mha_fwd(const FwdParams& p, const FwdCacheArgs& cache) {
  if (cache.kv_batch_idx != nullptr || cache.k_leftpad != nullptr)
    return not_implemented("cache_batch_idx / cache_leftpad");
  if (p.p_dropout > 0.f) return not_implemented("dropout (p_dropout > 0)");
  if (p.p_ptr != nullptr) return not_implemented("p_ptr (returning attention probabilities)");
  if (p.block_table != nullptr) return not_implemented("paged KV (block_table)");
  if (p.num_splits > 1) return not_implemented("split-KV (num_splits > 1)");
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return Status::not_supported(std::string("dtype ") + dtype_name(p.dtype) +
                                 " has no GPU forward kernel (fp16 and bf16 only)");
  if (p.d % 8 != 0 || p.d > 256 || p.d <= 0)
    return Status::not_supported("head dim " + std::to_string(p.d) +
                                 ": the GPU forward kernels need d % 8 == 0 and d <= 256");
  if (p.softcap <= 0.f && p.softmax_scale < 0.f)
    return not_implemented("a negative softmax_scale without softcap");
  if (p.b == 0 || p.h == 0 || p.seqlen_q == 0) return Status::ok_status();  // nothing to compute
  if (p.cu_seqlens_q != nullptr && p.total_q == 0) return Status::ok_status();
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
#define FA_SM80_FWD_CASE(kDtype, kHeadDim) \
  if (p.dtype == kDtype && hd == kHeadDim) return sm80::run_fwd_sm80<kDtype, kHeadDim>(p);
  FA_SM80_FWD_FOR_EACH_INSTANCE(FA_SM80_FWD_CASE)
#undef FA_SM80_FWD_CASE
  return Status::not_supported(std::string("head dim ") + std::to_string(hd) + " " +
                               dtype_name(p.dtype) + " kernels not compiled in this build " +
                               compiled_config_string());
}

}  // namespace flashattn::cuda
