// The split-KV scratch and combine of launch_common.h (host code).
#include "cuda/launch_common.h"

#include "cuda/combine.h"

namespace flashattn::cuda {

Status alloc_split_partials(const FwdParams& p, int num_splits, SplitPartials* parts) {
  const size_t rows = size_t(split_partial_rows(p));
  const size_t o_elems = size_t(num_splits) * rows * p.h * p.d;
  const size_t lse_elems = size_t(num_splits) * rows * p.h;
  float* scratch = nullptr;
  FA_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&scratch),
                                sizeof(float) * (o_elems + lse_elems),
                                static_cast<cudaStream_t>(p.stream)));
  parts->o = scratch;
  parts->lse = scratch + o_elems;
  return Status::ok_status();
}

Status combine_split_partials(const FwdParams& p, int num_splits, const SplitPartials& parts,
                              Status launched) {
  Status s = launched;
  if (s.ok()) {
    // Varlen partials are one "batch" of total_q rows (split_partial_rows).
    const bool varlen = p.cu_seqlens_q != nullptr;
    CombineParams c;
    c.num_splits = num_splits;
    c.b = varlen ? 1 : p.b;
    c.seqlen_q = varlen ? p.total_q : p.seqlen_q;
    c.h = p.h;
    c.d = p.d;
    c.out_partial = parts.o;
    c.lse_partial = parts.lse;
    c.dtype = p.dtype;
    c.out = p.o_ptr;
    c.out_batch_stride = varlen ? 0 : p.o_batch_stride;
    c.out_row_stride = p.o_row_stride;
    c.out_head_stride = p.o_head_stride;
    c.lse = p.softmax_lse_ptr;
    c.stream = p.stream;
    // The partials leave the sink out (kernel_fwd_sm80.cuh): the combine adds it once.
    s = run_mha_combine(c, /*after_split_kernel=*/true, p.sinks);
  }
  const cudaError_t free_err = cudaFreeAsync(parts.o, static_cast<cudaStream_t>(p.stream));
  if (!s.ok()) return s;
  FA_CUDA_CHECK(free_err);
  return Status::ok_status();
}

}  // namespace flashattn::cuda
