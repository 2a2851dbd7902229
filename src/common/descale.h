// Where the fp8 descale factors of one row come from (FwdParams: q_descale, q_block_descale, ...):
// the per-head factor [bidb][hk] times the per-block factor [bidb][head][row / block_rows], either
// absent meaning 1. One definition for the CPU reference and the FP8 kernels; docs/fp8.md has
// the layout.
#pragma once

#include <cstdint>

#include "common/host_device.h"
#include "flashattn/params.h"

namespace flashattn {

struct Fp8Descale {
  const float* per_head = nullptr;  // [b, h_k]
  int64_t head_batch_stride = 0, head_head_stride = 0;
  const float* per_block = nullptr;  // [b, heads, blocks], blocks contiguous
  int64_t block_batch_stride = 0, block_head_stride = 0;
  int block_rows = 1;

  // Row `row` (within its sequence; the cache index for the KV cache) of sequence bidb. `hk` is
  // the kv head (per-head factors are per kv head for q too, as in FlashAttention-3), `hb` the
  // head of the block factors (the query head for q, the kv head for k and v).
  FA_HD float at(int bidb, int hk, int hb, int row) const {
    float f = 1.f;
    if (per_head != nullptr)
      f = per_head[int64_t(bidb) * head_batch_stride + int64_t(hk) * head_head_stride];
    if (per_block != nullptr)
      f *= per_block[int64_t(bidb) * block_batch_stride + int64_t(hb) * block_head_stride +
                     row / block_rows];
    return f;
  }
  FA_HD bool any() const { return per_head != nullptr || per_block != nullptr; }

  FA_HD static Fp8Descale q(const FwdParams& p) {
    return {p.q_descale,       p.q_descale_batch_stride,       p.q_descale_head_stride,
            p.q_block_descale, p.q_block_descale_batch_stride, p.q_block_descale_head_stride,
            p.descale_block_m > 0 ? p.descale_block_m : 1};
  }
  FA_HD static Fp8Descale k(const FwdParams& p) {
    return {p.k_descale,       p.k_descale_batch_stride,       p.k_descale_head_stride,
            p.k_block_descale, p.k_block_descale_batch_stride, p.k_block_descale_head_stride,
            p.descale_block_n > 0 ? p.descale_block_n : 1};
  }
  FA_HD static Fp8Descale v(const FwdParams& p) {
    return {p.v_descale,       p.v_descale_batch_stride,       p.v_descale_head_stride,
            p.v_block_descale, p.v_block_descale_batch_stride, p.v_block_descale_head_stride,
            p.descale_block_n > 0 ? p.descale_block_n : 1};
  }
};

}  // namespace flashattn
