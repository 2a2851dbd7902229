// The rules on mha_fwd_kvcache's per-sequence index VALUES (cache_seqlens, cache_leftpad,
// cache_batch_idx, the rotary table length, the block-table entries a sequence uses), in one
// place for both sides that read them: host validation (src/api/validate.cpp, host arrays) and
// the GPU's device-side check (src/cuda/kvcache.cu, device arrays). Both report the first broken
// rule of a sequence as a KVIndexViolation, in the same order, and detail::kvcache_index_error
// (src/api/validate.h) turns it into the one message, so a CPU call and a GPU call with the same
// bad values fail with the same words.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace flashattn {

enum KVIndexRule : int {
  kKVIndexOk = 0,
  kKVSeqlenNegative,   // cache_seqlens[i] < 0
  kKVOverCapacity,     // cache_seqlens[i] + seqlen_knew > seqlen_k (paged: the block table's)
  kKVRotaryTooShort,   // a rotated position is past the rotary table
  kKVLeftpadRange,     // cache_leftpad[i] outside [0, cache_seqlens[i]]
  kKVBatchIdxRange,    // cache_batch_idx[i] outside [0, b_cache)
  kKVBlockTableRange,  // a used block_table[i][j] outside [0, num_blocks)
};

// One sequence's verdict. `value` is the offending entry; `cache_len` the sequence's
// cache_seqlens value (for the message's context); `column` the block-table column j.
struct KVIndexViolation {
  int rule = kKVIndexOk;
  int seq = 0;
  int value = 0;
  int cache_len = 0;
  int column = 0;
};

// What the per-sequence rules compare against: the call's sizes, none of them device values.
struct KVIndexLimits {
  int64_t capacity = 0;   // seqlen_k: cache rows (contiguous) or pages x page size (paged)
  int seqlen_knew = 0;    // keys appended (0 when none)
  bool rotary = false;
  int64_t ro_needed = 0;  // rotary table rows a sequence uses past cache_seqlens[i]
  int64_t seqlen_ro = 0;
  int b_cache = 0;
};

// The rules that read one value each (everything but the block-table entries), in the order
// both sides report them. `leftpad` / `batch_idx` are the arrays or null.
FA_HD KVIndexViolation check_kv_scalars(const KVIndexLimits& lim, int i, int cache_len,
                                        const int* leftpad, const int* batch_idx) {
  KVIndexViolation v;
  v.seq = i;
  v.cache_len = cache_len;
  v.value = cache_len;
  if (cache_len < 0) {
    v.rule = kKVSeqlenNegative;
  } else if (int64_t(cache_len) + lim.seqlen_knew > lim.capacity) {
    v.rule = kKVOverCapacity;
  } else if (lim.rotary && int64_t(cache_len) + lim.ro_needed > lim.seqlen_ro) {
    v.rule = kKVRotaryTooShort;
  } else if (leftpad != nullptr && (leftpad[i] < 0 || leftpad[i] > cache_len)) {
    v.rule = kKVLeftpadRange;
    v.value = leftpad[i];
  } else if (batch_idx != nullptr && (batch_idx[i] < 0 || batch_idx[i] >= lim.b_cache)) {
    v.rule = kKVBatchIdxRange;
    v.value = batch_idx[i];
  }
  return v;
}

// Block-table columns sequence i reads: the pages holding its cache_len + seqlen_knew keys.
FA_HD int64_t kv_pages_used(int64_t keys, int page_block_size) {
  return keys <= 0 ? 0 : (keys + page_block_size - 1) / page_block_size;
}

}  // namespace flashattn
