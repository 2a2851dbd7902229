// Launch of the SM80-path forward: picks the tile policy for the head dim, the compile-time
// features (softcap, ALiBi) from the params, derives the kernel arguments, raises the dynamic
// shared-memory limit when the tile needs more than 48 KB, and launches on p.stream.
// Included once per (dtype, head dim) instantiation TU (cmake/kernels.cmake).
#pragma once

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include <cmath>
#include <string>

#include "cuda/cuda_check.h"
#include "sm80/epilogue_fwd_sm80.cuh"
#include "sm80/fwd_args_sm80.h"
#include "sm80/fwd_sm80.h"
#include "sm80/kernel_fwd_sm80.cuh"
#include "sm80/kernel_traits_sm80.cuh"
#include "sm80/mainloop_fwd_sm80.cuh"
#include "sm80/tile_size_sm80.h"

namespace flashattn::sm80 {

template <DType kDtype>
using ElementOf = std::conditional_t<kDtype == DType::kFloat16, cutlass::half_t, cutlass::bfloat16_t>;

template <class Traits, bool kHasSoftcap, bool kHasAlibi>
Status launch_fwd_sm80(const FwdArgsSm80& args) {
  using Mainloop = MainloopFwdSm80<Traits, kHasSoftcap, kHasAlibi>;
  using Epilogue = EpilogueFwdSm80<Traits>;
  using Kernel = FlashAttnFwdSm80<Traits, Mainloop, Epilogue, TileSchedulerSm80>;
  auto* kernel = &flash_fwd_sm80_kernel<Kernel>;
  constexpr int kSmem = Kernel::kSmemSize;
  // The attribute is per function and per device: set it on every launch (cheap) rather than
  // caching a flag that would be wrong after a device switch.
  if constexpr (kSmem > 48 * 1024) {
    FA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  }
  const dim3 grid = TileSchedulerSm80::grid_shape(args);
  kernel<<<grid, Kernel::kNThreads, kSmem, static_cast<cudaStream_t>(args.p.stream)>>>(args);
  FA_CUDA_CHECK_LAUNCH("flash_fwd_sm80_kernel");
  return Status::ok_status();
}

template <DType kDtype, int kHeadDim>
Status run_fwd_sm80(const FwdParams& p) {
  constexpr TileSizeSm80 kTile = tile_size_fwd_sm80(kHeadDim);
  using Traits = FwdKernelTraitsSm80<kHeadDim, kTile.block_m, kTile.block_n, kTile.n_warps,
                                     ElementOf<kDtype>, kTile.padded_smem, kTile.kv_stages,
                                     kTile.skip_rescale>;
  FwdArgsSm80 args;
  args.p = p;
  const bool has_softcap = p.softcap > 0.f;
  args.unit = has_softcap ? p.softcap : p.softmax_scale;
  args.unit_log2 = args.unit * float(M_LOG2E);
  args.softcap_prescale = has_softcap ? p.softmax_scale / p.softcap : 0.f;
  args.h_h_k_ratio = p.h / p.h_k;
  args.num_m_blocks = (p.seqlen_q + kTile.block_m - 1) / kTile.block_m;
  if (args.num_m_blocks == 0 || p.b == 0 || p.h == 0) return Status::ok_status();

  const bool has_alibi = p.alibi_slopes != nullptr;
  if (has_softcap) {
    return has_alibi ? launch_fwd_sm80<Traits, true, true>(args)
                     : launch_fwd_sm80<Traits, true, false>(args);
  }
  return has_alibi ? launch_fwd_sm80<Traits, false, true>(args)
                   : launch_fwd_sm80<Traits, false, false>(args);
}

}  // namespace flashattn::sm80
