// Per-sequence geometry, read once per block: where sequence `bidb` starts in q/k and how long it
// is, for dense, varlen (cu_seqlens) and seqused_k inputs alike.
#pragma once

#include <cstdint>

#include "common/host_device.h"
#include "flashattn/params.h"

namespace flashattn {

struct SeqlenInfo {
  int64_t q_row0 = 0;  // first row of this sequence in q/o (varlen: cu_seqlens_q[b])
  int64_t k_row0 = 0;  // first row in k/v (varlen: cu_seqlens_k[b]; paged: 0)
  int seqlen_q = 0;
  int seqlen_k = 0;  // keys attended to (seqused_k applied)
  int rows_k = 0;    // k/v rows the sequence owns (before seqused_k; 0 for paged varlen)

  FA_HD static SeqlenInfo make(const FwdParams& p, int bidb) {
    SeqlenInfo s;
    if (p.cu_seqlens_q != nullptr) {
      // Offsets must rise within [0, total] (total_q / total_k: the rows of q / k, what the host
      // validation checks when the arrays are host memory). Device-resident ones are never read
      // on the host; a sequence whose offsets break that rule is treated as empty instead of
      // indexing past the buffers. Paged keys have no k rows of their own: their count is
      // bounded by seqlen_k, the paged capacity.
      const int q0 = p.cu_seqlens_q[bidb], q1 = p.cu_seqlens_q[bidb + 1];
      const int k0 = p.cu_seqlens_k[bidb], k1 = p.cu_seqlens_k[bidb + 1];
      const bool paged = p.block_table != nullptr;
      const bool q_ok = 0 <= q0 && q0 <= q1 && q1 <= p.total_q;
      const bool k_ok = paged ? 0 <= k1 - k0 && k1 - k0 <= p.seqlen_k
                              : 0 <= k0 && k0 <= k1 && k1 <= p.total_k;
      s.q_row0 = q_ok ? q0 : 0;
      s.seqlen_q = q_ok ? q1 - q0 : 0;
      s.k_row0 = paged || !k_ok ? 0 : k0;
      s.seqlen_k = k_ok ? k1 - k0 : 0;
      s.rows_k = paged ? 0 : s.seqlen_k;
    } else {
      s.seqlen_q = p.seqlen_q;
      s.seqlen_k = p.seqlen_k;
      s.rows_k = p.seqlen_k;
    }
    if (p.seqused_k != nullptr) {
      // The bound the host validation enforces (validate.cpp, check_fwd_values): the
      // sequence's own key rows, or seqlen_k when they are dense or paged. Device-resident
      // values are never validated on the host, and one out of range would make a kernel read
      // past the K/V buffers: such a sequence is treated as empty instead.
      const bool own_length = p.cu_seqlens_q != nullptr && p.block_table == nullptr;
      const int bound = own_length ? s.seqlen_k : p.seqlen_k;
      const int used = p.seqused_k[bidb];
      s.seqlen_k = used >= 0 && used <= bound ? used : 0;
    }
    return s;
  }

  // Element offsets of row r of this sequence, head hh, in q-like and k-like tensors
  // (non-paged; paged keys go through paged_kv.h).
  FA_HD int64_t q_offset(int64_t batch_stride, int64_t row_stride, int64_t head_stride, int bidb,
                         int r, int hh, bool varlen) const {
    return (varlen ? 0 : int64_t(bidb) * batch_stride) + (q_row0 + r) * row_stride +
           int64_t(hh) * head_stride;
  }
  FA_HD int64_t k_offset(int64_t batch_stride, int64_t row_stride, int64_t head_stride, int bidb,
                         int r, int hh, bool varlen) const {
    return (varlen ? 0 : int64_t(bidb) * batch_stride) + (k_row0 + r) * row_stride +
           int64_t(hh) * head_stride;
  }
};

}  // namespace flashattn
