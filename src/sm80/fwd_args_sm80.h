// Kernel-side arguments of the SM80-path forward: the resolved public params plus the few values
// derived from them once on the host (so no CTA recomputes them).
#pragma once

#include "flashattn/params.h"

namespace flashattn::sm80 {

struct FwdArgsSm80 {
  FwdParams p;                    // resolved (detail::resolve) and validated
  float unit = 1.f;               // true score = t * unit (softmax_scale, or softcap with softcap)
  float unit_log2 = 1.f;          // unit * log2(e)
  float softcap_prescale = 0.f;   // softmax_scale / softcap
  int h_h_k_ratio = 1;            // query heads per kv head
  int num_m_blocks = 0;           // ceil(seqlen_q / kBlockM), seqlen_q the (max) query length
};

}  // namespace flashattn::sm80
