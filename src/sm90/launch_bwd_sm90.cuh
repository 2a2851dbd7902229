// Launch of the Hopper backward: builds the TMA descriptors of Q, dO, K and V over the caller's
// strides, allocates the fp32 workspace stream-ordered on p.stream, and runs
//   1. the preprocess (lse_log2, D = rowsum(dO * O), dq_accum zeroed; bwd_preprocess_sm90.cuh;
//      with dsinks, the sinks' gradient from D and the LSE, common/dsinks.cuh),
//   2. the main kernel (one CTA per key block, head, sequence; kernel_bwd_sm90.cuh),
//   3. the postprocess (dQ = scale * dq_accum in the dtype; GQA: the dK / dV group sums),
// then frees the workspace, all on p.stream with no host synchronization. Explicitly
// instantiated per (dtype, head dim) in generated TUs compiled for sm_90a only
// (cmake/kernels_bwd_sm90.cmake).
#pragma once

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/dsinks.cuh"
#include "cuda/cuda_check.h"
#include "sm80/bwd_args_sm80.h"
#include "sm80/bwd_postprocess_sm80.cuh"
#include "sm90/bwd_postprocess_sm90.cuh"
#include "sm90/bwd_preprocess_sm90.cuh"
#include "sm90/bwd_sm90.h"
#include "sm90/kernel_bwd_sm90.cuh"
#include "sm90/kernel_traits_bwd_sm90.cuh"

namespace flashattn::sm90 {

template <DType kDtype>
using BwdElementOf =
    std::conditional_t<kDtype == DType::kFloat16, cutlass::half_t, cutlass::bfloat16_t>;

template <class Traits>
Status launch_bwd_sm90(const BwdParams& p) {
  using Kernel = FlashAttnBwdSm90<Traits>;
  using Args = BwdArgsSm90<Traits>;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);

  Args args;
  args.p = p;
  args.scale_log2 = p.softmax_scale * float(M_LOG2E);
  args.h_h_k_ratio = p.h / p.h_k;
  args.num_m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;
  args.num_n_blocks = (p.seqlen_k + kBlockN - 1) / kBlockN;
  if (p.b == 0 || p.h == 0 || (p.seqlen_q == 0 && p.seqlen_k == 0))
    return gpu::launch_dsinks(p, nullptr, 0, 0);

  // Workspace (floats, each part a multiple of 4 so every part stays 16-byte aligned):
  // dq_accum, lse_log2, dsum, and for GQA dk_accum, dv_accum.
  const int64_t bh = int64_t(p.b) * p.h;
  const int64_t stat_rows = bh * args.num_m_blocks * kBlockM;
  const int64_t dq_floats = stat_rows * kHeadDim;
  const int64_t kv_floats = p.h != p.h_k ? int64_t(p.b) * p.seqlen_k * p.h * kHeadDim : 0;
  const int64_t total = dq_floats + 2 * stat_rows + 2 * kv_floats + 4;
  float* base = nullptr;
  FA_CUDA_CHECK(
      cudaMallocAsync(reinterpret_cast<void**>(&base), sizeof(float) * size_t(total), stream));
  args.dq_accum = base;
  args.lse_log2 = base + dq_floats;
  args.dsum = args.lse_log2 + stat_rows;
  if (kv_floats > 0) {
    args.dk_accum = args.dsum + stat_rows;
    args.dv_accum = args.dk_accum + kv_floats;
  }

  // TMA views (rows, d, heads, batch). A tensor of 0 rows gets no descriptor: no CTA loads
  // from it (seqlen_q = 0: every CTA's query range is empty; seqlen_k = 0: no main kernel).
  const bool has_q = p.seqlen_q > 0, has_k = p.seqlen_k > 0;
  args.shape_q =
      make_shape(int32_t(std::max(1, p.seqlen_q)), int32_t(p.d), int32_t(p.h), int32_t(p.b));
  args.shape_k =
      make_shape(int32_t(std::max(1, p.seqlen_k)), int32_t(p.d), int32_t(p.h_k), int32_t(p.b));
  auto view = [&](const void* ptr, typename Traits::GmemShape const& shape, int64_t batch_stride,
                  int64_t row_stride, int64_t head_stride) {
    return make_tensor(
        make_gmem_ptr(static_cast<Element const*>(ptr)),
        make_layout(shape, make_stride(row_stride, _1{}, head_stride, batch_stride)));
  };
  if (has_q && has_k) {
    args.tma_q = make_tma_copy(
        SM90_TMA_LOAD{},
        view(p.q_ptr, args.shape_q, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
        typename Traits::SmemLayoutQStage{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{});
    args.tma_do = make_tma_copy(
        SM90_TMA_LOAD{},
        view(p.do_ptr, args.shape_q, p.do_batch_stride, p.do_row_stride, p.do_head_stride),
        typename Traits::SmemLayoutQStage{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{});
    args.tma_k = make_tma_copy(
        SM90_TMA_LOAD{},
        view(p.k_ptr, args.shape_k, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
        typename Traits::SmemLayoutK{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{});
    args.tma_v = make_tma_copy(
        SM90_TMA_LOAD{},
        view(p.v_ptr, args.shape_k, p.v_batch_stride, p.v_row_stride, p.v_head_stride),
        typename Traits::SmemLayoutK{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{});
  }

  // The launches, in a function of their own so that a failed one still reaches the free below.
  auto launch_all = [&]() -> Status {
    if (has_q) {
      constexpr int kThreads = 256;
      const int group = preprocess_group_bwd_sm90(p.d);
      const int64_t dq_vec4 = dq_floats / 4;
      const int64_t lanes = stat_rows * group;
      const unsigned blocks = unsigned((std::max(lanes, dq_vec4 / 4) + kThreads - 1) / kThreads);
      auto launch_pre = [&](auto g) {
        flash_bwd_preprocess_sm90_kernel<Traits, decltype(g)::value>
            <<<blocks, kThreads, 0, stream>>>(args, dq_vec4);
      };
      switch (group) {
        case 4: launch_pre(cute::Int<4>{}); break;
        case 8: launch_pre(cute::Int<8>{}); break;
        case 16: launch_pre(cute::Int<16>{}); break;
        default: launch_pre(cute::Int<32>{}); break;
      }
      FA_CUDA_CHECK_LAUNCH("flash_bwd_preprocess_sm90_kernel");
    }
    {
      const Status s = gpu::launch_dsinks(p, args.dsum, int64_t(args.num_m_blocks) * kBlockM,
                                          int64_t(p.b) * p.seqlen_q);
      if (!s.ok()) return s;
    }
    if (has_k) {
      auto* kernel = &flash_bwd_sm90_kernel<Kernel>;
      constexpr int kSmem = Kernel::kSmemSize;
      FA_CUDA_CHECK(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
      const dim3 grid(unsigned(args.num_n_blocks), unsigned(p.h), unsigned(p.b));
      kernel<<<grid, Kernel::kNThreads, kSmem, stream>>>(args);
      FA_CUDA_CHECK_LAUNCH("flash_bwd_sm90_kernel");
    }
    if (has_q) {
      const dim3 grid(unsigned(args.num_m_blocks), unsigned(p.h), unsigned(p.b));
      flash_bwd_convert_dq_sm90_kernel<Traits><<<grid, Traits::kMmaThreads, 0, stream>>>(args);
      FA_CUDA_CHECK_LAUNCH("flash_bwd_convert_dq_sm90_kernel");
    }
    if (kv_floats > 0) {
      // The SM80 path's group sum reads [rows_k, h, d_accum] fp32 per query head, in head order.
      sm80::BwdArgsSm80 red;
      red.p = p;
      red.h_h_k_ratio = args.h_h_k_ratio;
      red.rows_k = p.b * p.seqlen_k;
      red.d_accum = kHeadDim;
      red.dk_accum = args.dk_accum;
      red.dv_accum = args.dv_accum;
      const int64_t warps = int64_t(red.rows_k) * p.h_k;  // one warp per (row, kv head)
      sm80::flash_bwd_reduce_dkv_sm80_kernel<Element>
          <<<unsigned((warps + 7) / 8), 256, 0, stream>>>(red);
      FA_CUDA_CHECK_LAUNCH("flash_bwd_reduce_dkv_sm80_kernel");
    }
    return Status::ok_status();
  };
  const Status s = launch_all();
  // Freed even after a failed launch (stream-ordered: after whatever was queued before).
  const cudaError_t free_err = cudaFreeAsync(base, stream);
  if (!s.ok()) return s;
  FA_CUDA_CHECK(free_err);
  return Status::ok_status();
}

template <DType kDtype, int kHeadDim>
Status run_bwd_sm90(const BwdParams& p) {
  return launch_bwd_sm90<BwdTraitsSm90<kHeadDim, BwdElementOf<kDtype>>>(p);
}

}  // namespace flashattn::sm90
