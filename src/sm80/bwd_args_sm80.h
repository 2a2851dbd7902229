// Kernel-side arguments of the SM80-path backward: the resolved public params, the values derived
// from them once on the host, and the fp32 workspace (allocated stream-ordered by the launcher).
#pragma once

#include "flashattn/params.h"

namespace flashattn::sm80 {

struct BwdArgsSm80 {
  BwdParams p;                   // resolved (detail::resolve) and validated
  // Scores in the log2 domain: P = exp2(s2 - lse * log2(e)) with
  //   s2 = q.k * scale_log2                          (no softcap)
  //   s2 = tanh(q.k * softcap_prescale) * cap_log2   (softcap)
  //   s2 += alibi_log2_coef * |i + s_k - s_q - j|    (ALiBi: -slope * log2(e), per head)
  float scale_log2 = 1.f;        // softmax_scale * log2(e)
  float softcap_prescale = 0.f;  // softmax_scale / softcap
  float cap_log2 = 0.f;          // softcap * log2(e)
  // Dropout (p_dropout > 0): keep iff the Philox word < threshold (common/philox.h), kept
  // probabilities scaled by rp_dropout = 1 / (1 - p).
  float rp_dropout = 1.f;
  uint32_t dropout_threshold = 0xFFFFFFFFu;
  int h_h_k_ratio = 1;           // query heads per kv head
  int num_n_blocks = 0;          // ceil(seqlen_k / kBlockN), seqlen_k the (max) key length
  int rows_q = 0;                // rows of q: b * seqlen_q (dense) or total_q (varlen)
  int rows_k = 0;                // rows of k: b * seqlen_k (dense) or total_k (varlen)
  int d_accum = 0;               // head-dim stride of the fp32 buffers (the kernel's kHeadDim)

  // Workspace (fp32).
  // dQ partials: one kBlockM x d_accum tile per (head, sequence, query block) in accumulator
  // order (BwdKernelTraitsSm80::dq_accum_index), zeroed before the main kernel, atomics.
  float* dq_accum = nullptr;
  int64_t dq_tiles_per_head = 0;  // tile (bidb, bidh, m) = bidh * dq_tiles_per_head + tile0(bidb) + m
  float* dsum = nullptr;         // D = rowsum(dO * O), laid out like the LSE
  // GQA/MQA only (null when h == h_k): scaled dK / dV of every QUERY head, [rows_k, h, d_accum],
  // summed over each kv head's group in a fixed order by the postprocess (deterministic).
  float* dk_accum = nullptr;
  float* dv_accum = nullptr;
  // Deterministic mode only (else null): one counter per (sequence, head, query block), zeroed.
  // The CTA of key block n adds its dQ partial of query block m only when the counter says that
  // every earlier key block touching m has added its own, then bumps it: a fixed summation order.
  int* dq_semaphore = nullptr;
  int num_m_blocks = 0;          // ceil(seqlen_q / kBlockM), seqlen_q the (max) query length
};

}  // namespace flashattn::sm80
