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
  int seqlen_k = 0;

  FA_HD static SeqlenInfo make(const FwdParams& p, int bidb) {
    SeqlenInfo s;
    if (p.cu_seqlens_q != nullptr) {
      s.q_row0 = p.cu_seqlens_q[bidb];
      s.seqlen_q = p.cu_seqlens_q[bidb + 1] - p.cu_seqlens_q[bidb];
      s.k_row0 = p.block_table != nullptr ? 0 : p.cu_seqlens_k[bidb];
      s.seqlen_k = p.cu_seqlens_k[bidb + 1] - p.cu_seqlens_k[bidb];
    } else {
      s.seqlen_q = p.seqlen_q;
      s.seqlen_k = p.seqlen_k;
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
