// Launch of the Hopper forward: picks the compile-time score mods from the params, builds the TMA
// descriptors of Q, K and V over the caller's strides, sizes the persistent grid, and launches on
// p.stream. FP8 inputs first transpose V into stream-ordered scratch (transpose_v_fp8.cuh), whose
// descriptor replaces V's. Explicitly instantiated per (dtype, head dim) and per (output dtype,
// head dim) for FP8 in generated TUs compiled for sm_90a only (cmake/kernels_sm90.cmake).
#pragma once

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "api/heuristics.h"
#include "common/score_mod.h"
#include "cuda/cuda_check.h"
#include "cuda/dispatch.h"
#include "cuda/launch_common.h"
#include "sm90/fwd_sm90.h"
#include "sm90/kernel_fwd_sm90.cuh"
#include "sm90/kernel_traits_fwd_sm90.cuh"
#include "sm90/transpose_v_fp8.cuh"

namespace flashattn::sm90 {

template <DType kDtype>
using ElementOf = std::conditional_t<kDtype == DType::kFloat16, cutlass::half_t, cutlass::bfloat16_t>;

// The share of L2 a causal section's K + V may take (TileSchedulerSm90): about two thirds of the
// H100's 50 MB, leaving room for the Q tiles and O stores streaming past.
inline constexpr int64_t kL2BytesForKV = 32ll << 20;

template <class Traits, class Features>
Status launch_fwd_sm90(const FwdParams& p) {
  using Kernel = FlashAttnFwdSm90<Traits, Features>;
  using Args = FwdArgsSm90<Traits>;
  using Element = typename Traits::Element;
  using ElementOut = typename Traits::ElementOut;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;

  Args args;
  args.p = p;
  const ScoreUnits units = ScoreUnits::of(p.softmax_scale, p.softcap);
  args.unit = units.unit;
  args.unit_log2 = units.unit_log2;
  args.softcap_prescale = units.softcap_prescale;
  if constexpr (Features::kDropout) {
    args.dropout_threshold = dropout_threshold(p.p_dropout);
    args.rp_dropout = 1.f / (1.f - p.p_dropout);
  }
  args.h_h_k_ratio = p.h / p.h_k;
  args.num_m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;
  const bool varlen = p.cu_seqlens_q != nullptr;
  // (FP8's V^T scratch is zero past every sequence's keys, and FP8 has no varlen here.)
  args.kv_tail_in_tensor = !Traits::kFp8 && (varlen || p.seqused_k != nullptr);

  const int64_t tiles = int64_t(args.num_m_blocks) * p.h * p.b;
  if (tiles == 0) return Status::ok_status();
  if (tiles > 0x7fffffff) return Status::not_supported("more than 2^31 query tiles");
  const bool longest_first = p.is_causal || p.window_size_left >= 0 || p.window_size_right >= 0;
  const int64_t kv_bytes_per_head =
      2 * int64_t(p.seqlen_k) * kHeadDim * int64_t(sizeof(Element)) / args.h_h_k_ratio;
  args.scheduler = TileSchedulerSm90::make(args.num_m_blocks, p.h, p.b, longest_first,
                                           kv_bytes_per_head, kL2BytesForKV);

  // TMA views (rows, d, heads, batch); varlen inputs are one batch of total rows. A dimension
  // of 0 rows would be rejected by the descriptor: nothing is loaded from such a tensor (every
  // tile is empty), so it is described as 1 row.
  const int rows_q = std::max(1, varlen ? p.total_q : p.seqlen_q);
  const int rows_kv = std::max(1, varlen ? p.total_k : p.seqlen_k);
  const int batch = varlen ? 1 : p.b;
  args.shape_q = make_shape(int32_t(rows_q), int32_t(p.d), int32_t(p.h), int32_t(batch));
  args.shape_kv = make_shape(int32_t(rows_kv), int32_t(p.d), int32_t(p.h_k), int32_t(batch));
  auto view = [&](const void* ptr, typename Traits::GmemShape const& shape, int64_t batch_stride,
                  int64_t row_stride, int64_t head_stride) {
    return make_tensor(make_gmem_ptr(static_cast<Element const*>(ptr)),
                       make_layout(shape, make_stride(row_stride, _1{}, head_stride,
                                                      varlen ? int64_t(0) : batch_stride)));
  };
  args.tma_q = make_tma_copy(
      SM90_TMA_LOAD{},
      view(p.q_ptr, args.shape_q, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
      typename Traits::SmemLayoutQ{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{});
  // Without any key (seqlen_k = 0, or every varlen sequence empty) every tile only stores O = 0
  // and LSE = +inf: K and V are never read and get no descriptor (their pointer may be null).
  args.has_kv = (varlen ? p.total_k : p.seqlen_k) > 0;
  if (args.has_kv) {
    args.tma_k = make_tma_copy(
        SM90_TMA_LOAD{},
        view(p.k_ptr, args.shape_kv, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
        typename Traits::SmemLayoutKVStage{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{});
  }
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  uint8_t* vt = nullptr;  // FP8: the V^T scratch, freed after the launch
  if constexpr (Traits::kFp8) {
    if (args.has_kv) {
      TransposeVFp8Args t;
      t.v = static_cast<const uint8_t*>(p.v_ptr);
      t.v_batch_stride = p.v_batch_stride;
      t.v_row_stride = p.v_row_stride;
      t.v_head_stride = p.v_head_stride;
      t.seqused_k = p.seqused_k;
      t.seqlen_k = p.seqlen_k;
      t.h_k = p.h_k;
      t.d = p.d;
      t.keys_pad = (int64_t(p.seqlen_k) + 31) / 32 * 32;
      FA_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&vt),
                                    size_t(p.b) * p.h_k * p.d * t.keys_pad, stream));
      t.vt = vt;
      const dim3 grid(unsigned((t.keys_pad + kTransposeKeys - 1) / kTransposeKeys), unsigned(p.h_k),
                      unsigned(p.b));
      transpose_v_fp8_kernel<kHeadDim><<<grid, kTransposeThreads, 0, stream>>>(t);
      Status ts = cuda::check_cuda(cudaGetLastError(), "launch of transpose_v_fp8_kernel",
                                   __FILE__, __LINE__);
      if (!ts.ok()) {
        (void)cudaFreeAsync(vt, stream);
        return ts;
      }
      args.shape_v = make_shape(int32_t(p.d), int32_t(t.keys_pad), int32_t(p.h_k), int32_t(p.b));
      Tensor mVt = make_tensor(
          make_gmem_ptr(static_cast<Element const*>(static_cast<const void*>(vt))),
          make_layout(args.shape_v, make_stride(t.keys_pad, _1{}, int64_t(p.d) * t.keys_pad,
                                                int64_t(p.h_k) * p.d * t.keys_pad)));
      args.tma_v = make_tma_copy(SM90_TMA_LOAD{}, mVt, typename Traits::SmemLayoutVtStage{},
                                 Shape<Int<kHeadDim>, Int<kBlockN>>{}, _1{});
    }
  } else {
    args.shape_v = args.shape_kv;
    if (args.has_kv) {
      args.tma_v = make_tma_copy(
          SM90_TMA_LOAD{},
          view(p.v_ptr, args.shape_kv, p.v_batch_stride, p.v_row_stride, p.v_head_stride),
          typename Traits::SmemLayoutKVStage{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{});
    }
  }

  args.o_by_tma = !varlen;
  if (args.o_by_tma) {
    args.shape_o = args.shape_q;
    Tensor mO = make_tensor(make_gmem_ptr(static_cast<ElementOut*>(p.o_ptr)),
                            make_layout(args.shape_o, make_stride(p.o_row_stride, _1{},
                                                                  p.o_head_stride, p.o_batch_stride)));
    args.tma_o = make_tma_copy(SM90_TMA_STORE{}, mO, typename Traits::SmemLayoutOWg{},
                               Shape<_64, Int<kHeadDim>>{}, _1{});
  }

  const int grid = heuristics::persistent_grid_size(tiles, cuda::device_sm_count());
  // The tile counter: stream-ordered scratch, zeroed right before the launch (under CUDA graph
  // capture these become graph nodes like the launch itself).
  Status s = grid > 0 ? Status::ok_status()
                      : Status::internal("cannot read the device's multiprocessor count");
  if (s.ok()) {
    s = cuda::check_cuda(
        cudaMallocAsync(reinterpret_cast<void**>(&args.tile_counter), sizeof(int), stream),
        "cudaMallocAsync(tile_counter)", __FILE__, __LINE__);
  }
  if (s.ok()) {
    s = cuda::check_cuda(cudaMemsetAsync(args.tile_counter, 0, sizeof(int), stream),
                         "cudaMemsetAsync(tile_counter)", __FILE__, __LINE__);
    if (s.ok()) {
      s = cuda::launch_kernel(&flash_fwd_sm90_kernel<Kernel>, dim3(grid), Kernel::kNThreads,
                              Kernel::kSmemSize, p.stream, 1, "flash_fwd_sm90_kernel", args);
    }
    const Status fs = cuda::check_cuda(cudaFreeAsync(args.tile_counter, stream),
                                       "cudaFreeAsync(tile_counter)", __FILE__, __LINE__);
    if (s.ok()) s = fs;
  }
  if (vt != nullptr) {
    const Status fs = cuda::check_cuda(cudaFreeAsync(vt, stream), "cudaFreeAsync(v^T scratch)",
                                       __FILE__, __LINE__);
    if (s.ok()) s = fs;
  }
  return s;
}

// FP8 (e4m3) q, k, v with o in kOut (bf16 / fp16): softcap x ALiBi, no dropout (validated).
template <DType kOut, int kHeadDim>
Status run_fwd_sm90_fp8(const FwdParams& p) {
  using Traits = FwdTraitsSm90<kHeadDim, cutlass::float_e4m3_t, ElementOf<kOut>>;
  const bool softcap = p.softcap > 0.f;
  if (p.alibi_slopes != nullptr) {
    return softcap ? launch_fwd_sm90<Traits, FwdFeaturesSm90<true, true>>(p)
                   : launch_fwd_sm90<Traits, FwdFeaturesSm90<false, true>>(p);
  }
  return softcap ? launch_fwd_sm90<Traits, FwdFeaturesSm90<true, false>>(p)
                 : launch_fwd_sm90<Traits, FwdFeaturesSm90<false, false>>(p);
}

template <DType kDtype, int kHeadDim>
Status run_fwd_sm90(const FwdParams& p) {
  using Traits = FwdTraitsSm90<kHeadDim, ElementOf<kDtype>>;
  const bool softcap = p.softcap > 0.f;
  const bool alibi = p.alibi_slopes != nullptr;
  // Dropout excludes softcap (flash_attn's rule, enforced by validation): 2 more kernels, at
  // the head dims whose tile has room for it (FwdTileSm90::dropout).
  if (p.p_dropout > 0.f) {
    if constexpr (!Traits::kTile.dropout) {
      return Status::not_supported("dropout at this head dim on the Hopper path");
    } else {
      if (softcap) return Status::invalid("dropout with softcap is not supported");
      return alibi ? launch_fwd_sm90<Traits, FwdFeaturesSm90<false, true, true>>(p)
                   : launch_fwd_sm90<Traits, FwdFeaturesSm90<false, false, true>>(p);
    }
  }
  if (alibi) {
    return softcap ? launch_fwd_sm90<Traits, FwdFeaturesSm90<true, true>>(p)
                   : launch_fwd_sm90<Traits, FwdFeaturesSm90<false, true>>(p);
  }
  return softcap ? launch_fwd_sm90<Traits, FwdFeaturesSm90<true, false>>(p)
                 : launch_fwd_sm90<Traits, FwdFeaturesSm90<false, false>>(p);
}

}  // namespace flashattn::sm90
