// Launch of the SM80-path backward: picks the tile policy for the head dim and the compile-time
// features (softcap, ALiBi, dropout), allocates the fp32 workspace stream-ordered on p.stream,
// and runs
//   1. the preprocess (D = rowsum(dO * O), and dq_accum zeroed in the same launch; with dsinks,
//      the sinks' gradient from D and the LSE in a second small launch),
//   2. the main kernel (one CTA per key block, head, sequence),
//   3. the postprocess (dQ = scale * dq_accum in the dtype; GQA: the dK / dV group sums),
// then frees the workspace, all on p.stream with no host synchronization.
// Included once per (dtype, head dim) instantiation TU (cmake/kernels_bwd.cmake).
#pragma once

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include <cmath>
#include <type_traits>

#include "common/dsinks.cuh"
#include "common/philox.h"
#include "cuda/cuda_check.h"
#include "sm80/bwd_args_sm80.h"
#include "sm80/bwd_postprocess_sm80.cuh"
#include "sm80/bwd_preprocess_sm80.cuh"
#include "sm80/bwd_sm80.h"
#include "sm80/kernel_bwd_sm80.cuh"
#include "sm80/kernel_traits_bwd_sm80.cuh"
#include "sm80/mainloop_bwd_sm80.cuh"
#include "sm80/tile_size_bwd_sm80.h"

namespace flashattn::sm80 {

template <DType kDtype>
using BwdElementOf =
    std::conditional_t<kDtype == DType::kFloat16, cutlass::half_t, cutlass::bfloat16_t>;

template <class Traits, bool kHasSoftcap, bool kHasAlibi, bool kHasDropout>
Status launch_bwd_main_sm80(const BwdArgsSm80& args) {
  using Mainloop = MainloopBwdSm80<Traits, kHasSoftcap, kHasAlibi, kHasDropout>;
  using Kernel = FlashAttnBwdSm80<Traits, Mainloop, EpilogueBwdSm80<Traits>, TileSchedulerBwdSm80>;
  auto* kernel = &flash_bwd_sm80_kernel<Kernel>;
  constexpr int kSmem = Kernel::kSmemSize;
  if constexpr (kSmem > 48 * 1024) {
    FA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  }
  const dim3 grid = TileSchedulerBwdSm80::grid_shape(args);
  kernel<<<grid, Kernel::kNThreads, kSmem, static_cast<cudaStream_t>(args.p.stream)>>>(args);
  FA_CUDA_CHECK_LAUNCH("flash_bwd_sm80_kernel");
  return Status::ok_status();
}

// kPlainOnly: compile only the main kernel without softcap / ALiBi / dropout (the timing tools'
// variants: a sixth of the compile time); other requests return kNotSupported.
template <class Traits, bool kPlainOnly = false>
Status launch_bwd_kernels_sm80(const BwdArgsSm80& args) {
  using Element = typename Traits::Element;
  const BwdParams& p = args.p;
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  constexpr int kThreads = 256;  // 8 warps, one (row, head) each
  auto blocks_for = [](int64_t pairs) { return unsigned((pairs + 7) / 8); };

  if (args.rows_q > 0) {
    if (args.dq_semaphore != nullptr) {
      FA_CUDA_CHECK(cudaMemsetAsync(args.dq_semaphore, 0,
                                    sizeof(int) * size_t(p.b) * p.h * args.num_m_blocks, stream));
    }
    // D, and dq_accum zeroed in the same launch (a whole number of float4: kDqTileElems % 4 == 0,
    // and dq_accum starts the 256-byte aligned workspace).
    static_assert(Traits::kDqTileElems % 4 == 0);
    const int64_t dq_vec4 = int64_t(p.h) * args.dq_tiles_per_head * Traits::kDqTileElems / 4;
    const int64_t pairs = int64_t(args.rows_q) * p.h;
    auto launch_dot = [&](auto group) {
      constexpr int kGroup = decltype(group)::value;
      const unsigned blocks = unsigned((pairs * kGroup + kThreads - 1) / kThreads);
      flash_bwd_dot_do_o_sm80_kernel<Element, kGroup>
          <<<blocks, kThreads, 0, stream>>>(args, dq_vec4);
    };
    switch (dot_do_o_group_sm80(Traits::kHeadDim)) {
      case 4: launch_dot(cute::Int<4>{}); break;
      case 8: launch_dot(cute::Int<8>{}); break;
      case 16: launch_dot(cute::Int<16>{}); break;
      default: launch_dot(cute::Int<32>{}); break;
    }
    FA_CUDA_CHECK_LAUNCH("flash_bwd_dot_do_o_sm80_kernel");
  }
  {
    const Status s = gpu::launch_dsinks(p, args.dsum, p.seqlen_q, args.rows_q);
    if (!s.ok()) return s;
  }
  if (args.num_n_blocks > 0) {
    // Dropout never comes with softcap (validated), so 6 of the 8 combinations exist.
    const bool has_softcap = p.softcap > 0.f;
    const bool has_alibi = p.alibi_slopes != nullptr;
    const bool has_dropout = p.p_dropout > 0.f;
    Status s = Status::not_supported("softcap / ALiBi / dropout in a kPlainOnly build");
    if constexpr (kPlainOnly) {
      if (!has_softcap && !has_alibi && !has_dropout)
        s = launch_bwd_main_sm80<Traits, false, false, false>(args);
    } else {
      s = has_dropout
        ? (has_alibi ? launch_bwd_main_sm80<Traits, false, true, true>(args)
                     : launch_bwd_main_sm80<Traits, false, false, true>(args))
        : has_softcap
        ? (has_alibi ? launch_bwd_main_sm80<Traits, true, true, false>(args)
                     : launch_bwd_main_sm80<Traits, true, false, false>(args))
        : (has_alibi ? launch_bwd_main_sm80<Traits, false, true, false>(args)
                     : launch_bwd_main_sm80<Traits, false, false, false>(args));
    }
    if (!s.ok()) return s;
  }
  if (args.rows_q > 0 && args.num_m_blocks > 0) {
    // One CTA per dq_accum tile (query block, head, sequence), the main kernel's thread count:
    // thread t reads back exactly the fragment values thread t added.
    const dim3 grid(unsigned(args.num_m_blocks), unsigned(p.h), unsigned(p.b));
    flash_bwd_convert_dq_sm80_kernel<Traits><<<grid, Traits::kNThreads, 0, stream>>>(args);
    FA_CUDA_CHECK_LAUNCH("flash_bwd_convert_dq_sm80_kernel");
  }
  if (args.dk_accum != nullptr && args.rows_k > 0) {
    flash_bwd_reduce_dkv_sm80_kernel<Element>
        <<<blocks_for(int64_t(args.rows_k) * p.h_k), kThreads, 0, stream>>>(args);
    FA_CUDA_CHECK_LAUNCH("flash_bwd_reduce_dkv_sm80_kernel");
  }
  return Status::ok_status();
}

// The whole backward with one kernel configuration (the benchmark tools time variants through
// this entry; the library goes through run_bwd_sm80 and the tile policy).
template <class Traits, bool kPlainOnly = false>
Status run_bwd_with_traits_sm80(const BwdParams& p) {
  const bool varlen = p.cu_seqlens_q != nullptr;
  BwdArgsSm80 args;
  args.p = p;
  args.scale_log2 = p.softmax_scale * float(M_LOG2E);
  args.softcap_prescale = p.softcap > 0.f ? p.softmax_scale / p.softcap : 0.f;
  args.cap_log2 = p.softcap * float(M_LOG2E);
  if (p.p_dropout > 0.f) {
    args.rp_dropout = 1.f / (1.f - p.p_dropout);
    args.dropout_threshold = dropout_threshold(p.p_dropout);
  }
  args.h_h_k_ratio = p.h / p.h_k;
  args.num_n_blocks = (p.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN;
  args.rows_q = varlen ? p.total_q : p.b * p.seqlen_q;
  args.rows_k = varlen ? p.total_k : p.b * p.seqlen_k;
  args.d_accum = Traits::kHeadDim;
  if (p.b == 0 || p.h == 0 || (args.rows_q == 0 && args.rows_k == 0)) return Status::ok_status();

  args.num_m_blocks = (p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM;
  const BwdWorkspaceSm80 ws = BwdWorkspaceSm80::make(p, Traits::kHeadDim, Traits::kBlockM);
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  float* base = nullptr;
  FA_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&base), sizeof(float) * size_t(ws.total), stream));
  args.dq_accum = base + ws.dq_accum;
  args.dq_tiles_per_head = ws.dq_tiles_per_head;
  args.dsum = base + ws.dsum;
  if (p.h != p.h_k) {
    args.dk_accum = base + ws.dk_accum;
    args.dv_accum = base + ws.dv_accum;
  }
  if (p.deterministic) args.dq_semaphore = reinterpret_cast<int*>(base + ws.dq_semaphore);
  const Status s = launch_bwd_kernels_sm80<Traits, kPlainOnly>(args);
  // Freed even after a failed launch (stream-ordered: after whatever was queued before).
  const cudaError_t free_err = cudaFreeAsync(base, stream);
  if (!s.ok()) return s;
  FA_CUDA_CHECK(free_err);
  return Status::ok_status();
}

template <DType kDtype, int kHeadDim>
Status run_bwd_sm80(const BwdParams& p) {
  constexpr TileSizeBwdSm80 kTile = tile_size_bwd_sm80(kHeadDim);
  using Traits = BwdKernelTraitsSm80<kHeadDim, kTile.block_m, kTile.block_n, kTile.n_warps,
                                     kTile.atom_m_sdp, kTile.atom_n_dkv, kTile.atom_m_dq,
                                     kTile.stages_q, kTile.stages_do, BwdElementOf<kDtype>,
                                     /*kDqAtomics=*/0, kTile.dq_parts,
                                     kTile.gemm_chunks_ahead>;
  return run_bwd_with_traits_sm80<Traits>(p);
}

}  // namespace flashattn::sm80
