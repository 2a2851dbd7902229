// Helpers shared by the GPU backward tests (test_bwd_sm80, test_bwd_large_sm80): gradients
// gathered out of their strided (possibly varlen) layouts into dense [rows, heads, d] order,
// so kernel, reference and low-precision baseline compare element by element.
#pragma once

#include <vector>

#include "testing/problem.h"

namespace flashattn::testing {

struct Grads {
  std::vector<float> dq, dk, dv;  // gathered [rows, heads, d]
  std::vector<float> dsinks;      // [h] with sinks, else empty
};

inline int rows_k(const FwdProblem& pr) {
  return pr.cfg.varlen() ? pr.cu_k.back() : pr.cfg.b * pr.cfg.seqlen_k;
}

inline Grads gather_grads(const BwdProblem& bp) {
  const BwdParams& p = bp.params;
  const AttnConfig& c = bp.fwd.cfg;
  const bool vl = c.varlen();
  Grads g;
  g.dq = gather(bp.dq, Layout{p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride, bp.dq.numel},
                c.b, c.seqlen_q, c.h, c.d, vl, bp.fwd.rows_q());
  g.dk = gather(bp.dk, Layout{p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, bp.dk.numel},
                c.b, c.seqlen_k, c.h_k, c.d, vl, rows_k(bp.fwd));
  g.dv = gather(bp.dv, Layout{p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, bp.dv.numel},
                c.b, c.seqlen_k, c.h_k, c.d, vl, rows_k(bp.fwd));
  g.dsinks = bp.dsinks;
  return g;
}

}  // namespace flashattn::testing
