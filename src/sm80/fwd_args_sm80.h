// Arguments and Params of the SM80-path forward kernel (kernel_fwd_sm80.cuh says how they are
// used): FwdArgumentsSm80 is what the host's dispatch knows of a launch, FwdArgsSm80 (the
// kernel's Params) the resolved public params plus the few values derived from them once on the
// host (so no CTA recomputes them); to_underlying_arguments_sm80 turns the one into the other.
// The fields after num_m_blocks serve the feature kernels only (KV-cache hooks, paged KV,
// split-KV, dropout); the plain kernels never read them.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/philox.h"
#include "common/score_mod.h"
#include "flashattn/params.h"

namespace flashattn::sm80 {

struct FwdArgumentsSm80 {
  FwdParams p;                        // resolved (detail::resolve) and validated
  const int* kv_batch_idx = nullptr;  // KV-cache hooks (cuda/fwd.h FwdCacheArgs); null = off
  const int* k_leftpad = nullptr;
  int num_splits = 1;                 // split-KV count, already chosen (api/heuristics.h)
};

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

// The Params of a kernel with kBlockM x kBlockN tiles. The split-KV fields (partial_rows, the
// scratch, cluster_combine) are the split launch's to set (cuda/launch_common.h): they depend
// on the device.
template <int kBlockM, int kBlockN>
FwdArgsSm80 to_underlying_arguments_sm80(const FwdArgumentsSm80& arguments) {
  const FwdParams& p = arguments.p;
  FwdArgsSm80 args;
  args.p = p;
  const ScoreUnits units = ScoreUnits::of(p.softmax_scale, p.softcap);
  args.unit = units.unit;
  args.unit_log2 = units.unit_log2;
  args.softcap_prescale = units.softcap_prescale;
  args.h_h_k_ratio = p.h / p.h_k;
  args.num_m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;
  args.kv_batch_idx = arguments.kv_batch_idx;
  args.k_leftpad = arguments.k_leftpad;
  if (p.block_table != nullptr) {
    const int page = p.page_block_size;
    int ceil_log2 = 0;
    while ((int64_t(1) << ceil_log2) < page) ++ceil_log2;
    args.page_div = page;
    if (page > 1) {
      args.page_mul = uint32_t(((uint64_t(1) << (31 + ceil_log2)) + uint64_t(page) - 1) / uint64_t(page));
      args.page_shift = uint32_t(ceil_log2 - 1);
    }
    args.page_holds_tiles = page % kBlockN == 0;
  }
  args.num_splits = std::max(1, arguments.num_splits);
  if (p.p_dropout > 0.f) {
    args.dropout_threshold = dropout_threshold(p.p_dropout);
    args.rp_dropout = 1.f / (1.f - p.p_dropout);
  }
  return args;
}

}  // namespace flashattn::sm80
