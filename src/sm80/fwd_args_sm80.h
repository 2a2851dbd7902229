// Kernel-side arguments of the SM80-path forward: the resolved public params plus the few values
// derived from them once on the host (so no CTA recomputes them). The fields after num_m_blocks
// serve the feature kernels only (KV-cache hooks, paged KV, split-KV, dropout); the plain
// kernels never read them.
#pragma once

#include <cstdint>

#include "flashattn/params.h"

namespace flashattn::sm80 {

struct FwdArgsSm80 {
  FwdParams p;                    // resolved (detail::resolve) and validated
  float unit = 1.f;               // true score = t * unit (softmax_scale, or softcap with softcap)
  float unit_log2 = 1.f;          // unit * log2(e)
  float softcap_prescale = 0.f;   // softmax_scale / softcap
  int h_h_k_ratio = 1;            // query heads per kv head
  int num_m_blocks = 0;           // ceil(seqlen_q / kBlockM), seqlen_q the (max) query length

  // KV-cache hooks (cuda/fwd.h FwdCacheArgs), contiguous K/V only; null = off.
  const int* kv_batch_idx = nullptr;  // [b] K/V batch row of query batch i
  const int* k_leftpad = nullptr;     // [b] first visible key row of batch i

  // Paged KV: page size as a precomputed reciprocal (t / page, t % page without an integer
  // division per key row), and whether every key block lies inside one page (page % kBlockN ==
  // 0), so one block-table lookup per tile suffices.
  int page_div = 1;               // page_block_size
  uint32_t page_mul = 0;          // FastDivmod-style multiplier (0: page_block_size == 1)
  uint32_t page_shift = 0;
  bool page_holds_tiles = false;

  // Split-KV: num_splits CTAs share each (query block, head, sequence); each writes fp32
  // partials that src/cuda/combine.cu merges. 1 = no split (the kernel writes o directly).
  int num_splits = 1;
  float* o_partial = nullptr;     // [num_splits, partial_rows, h, d] fp32, O_s normalized by l_s
  float* lse_partial = nullptr;   // [num_splits, h, partial_rows] (dense: [s, b, h, s_q]); -inf = empty
  int64_t partial_rows = 0;       // b * seqlen_q (dense) or total_q (varlen)
  // sm_90, 2..8 splits: the splits of a tile run as one thread-block cluster and merge through
  // distributed shared memory (EpilogueFwdSm80::merge_in_cluster); o_partial / lse_partial unused.
  bool cluster_combine = false;

  // Dropout: keep iff the Philox word < threshold (src/common/philox.h); kept P scaled by
  // rp_dropout = 1 / (1 - p), folded into the final 1 / l.
  uint32_t dropout_threshold = 0xFFFFFFFFu;
  float rp_dropout = 1.f;
};

}  // namespace flashattn::sm80
