// Paged KV addressing: logical key t of sequence b lives in page block_table[b][t / page_size],
// row t % page_size. The page stride is the k/v "batch" stride.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace flashattn {

struct PagedKV {
  const int* block_table = nullptr;  // [b, max_blocks_per_seq]
  int64_t block_table_batch_stride = 0;
  int page_block_size = 1;

  FA_HD int page_of(int bidb, int t) const {
    return block_table[int64_t(bidb) * block_table_batch_stride + t / page_block_size];
  }
  // Element offset of key t, head hh, in a cache with the given page/row/head strides.
  FA_HD int64_t offset(int bidb, int t, int hh, int64_t page_stride, int64_t row_stride,
                       int64_t head_stride) const {
    return int64_t(page_of(bidb, t)) * page_stride + int64_t(t % page_block_size) * row_stride +
           int64_t(hh) * head_stride;
  }
};

}  // namespace flashattn
