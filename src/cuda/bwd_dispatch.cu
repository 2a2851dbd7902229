// Runtime -> template dispatch of the GPU backward: checks that the request is inside what the
// SM80-path backward covers (returning kNotSupported, never different math, for the rest), rounds
// the head dim up to a compiled kernel and calls that (dtype, head dim) instantiation. The
// remaining compile-time features (softcap, ALiBi, dropout) are picked inside the instantiation.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda/bwd.h"
#include "cuda/cuda_check.h"
#include "cuda/dispatch_checks.h"
#include "flashattn_build_config.h"
#include "flashattn_bwd_sm80_instances.h"
#include "sm80/bwd_sm80.h"
#include "sm80/tile_size_sm80.h"

namespace flashattn::cuda {
namespace {

Status not_implemented(const std::string& what) {
  return Status::not_supported(what + " in the GPU backward kernel is not implemented yet");
}

}  // namespace

Status run_mha_bwd(const BwdParams& p) {
  // The kernels would ignore a V head dim of its own, a silently wrong result: refused until
  // they take it. (Sinks need nothing of the main kernels: the forward's LSE includes them, so
  // P = exp(S - LSE) is already theirs; dsinks comes from the preprocess's D.)
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

  const int hd = sm80::round_head_dim_sm80(p.d);
#define FA_SM80_BWD_CASE(kDtype, kHeadDim) \
  if (p.dtype == kDtype && hd == kHeadDim) return sm80::run_bwd_sm80<kDtype, kHeadDim>(p);
  FA_SM80_BWD_FOR_EACH_INSTANCE(FA_SM80_BWD_CASE)
#undef FA_SM80_BWD_CASE
  return Status::not_supported(std::string("head dim ") + std::to_string(hd) + " " +
                               dtype_name(p.dtype) +
                               " GPU backward kernels not compiled in this build " +
                               compiled_config_string());
}

}  // namespace flashattn::cuda
