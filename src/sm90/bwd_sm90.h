// Host-side declarations of the Hopper (sm_90a) backward kernels, explicitly instantiated per
// (dtype, head dim) in generated translation units compiled for sm_90a only
// (cmake/kernels_bwd_sm90.cmake). Includes no CUDA or CuTe header, so the runtime dispatch stays
// cheap to compile.
#pragma once

#include "flashattn/params.h"
#include "flashattn/status.h"

namespace flashattn::sm90 {

// Runs the backward for params p (resolved, validated, and inside the Hopper backward's coverage,
// api/route.h bwd_sm90_uncovered: kDtype matches, d <= kHeadDim, dense, no dropout, softcap,
// ALiBi, seqused_k or deterministic mode) on p.stream: preprocess, main kernel, postprocess, with
// an fp32 workspace allocated and freed stream-ordered.
template <DType kDtype, int kHeadDim>
Status run_bwd_sm90(const BwdParams& p);

}  // namespace flashattn::sm90
