// Host-side declarations of the Hopper (sm_90a) forward kernels, explicitly instantiated per
// (dtype, head dim) in generated translation units compiled for sm_90a only
// (cmake/kernels.cmake). Includes no CUDA or CuTe header, so the runtime dispatch stays cheap to
// compile.
#pragma once

#include "flashattn/params.h"
#include "flashattn/status.h"

namespace flashattn::sm90 {

// Runs the forward for params p (resolved, validated, and inside the Hopper path's coverage,
// api/route.h: kDtype matches, d <= kHeadDim, d % 8 == 0, 16-byte aligned rows and strides, no
// dropout, paging, split or KV-cache hooks) on p.stream. Picks the compile-time score mods
// (softcap, ALiBi) from p.
template <DType kDtype, int kHeadDim>
Status run_fwd_sm90(const FwdParams& p);

// The same for FP8 (e4m3) q, k, v with o in kOut (bf16 / fp16), within the FP8 coverage of
// api/route.h (dense, d % 16 == 0, per-head descales; docs/fp8.md).
template <DType kOut, int kHeadDim>
Status run_fwd_sm90_fp8(const FwdParams& p);

}  // namespace flashattn::sm90
