// Persistent tile scheduler of the Hopper forward kernels: the order of the tiles, as a pure
// function from a tile index to (query block, head, sequence) shared by the host (grid size, CPU
// unit tests) and the kernel, and how CTAs take them. A grid of G = min(tiles, SMs) CTAs, one
// per SM: CTA c starts with tile c, then takes the next untaken tile in the order, by an
// atomicAdd on a per-launch counter (tile = G + counter), whenever its producer warp moves on.
// That is list scheduling: tiles of different lengths (causal, windows, varlen) balance to within
// about one tile per CTA, which a fixed assignment (tile c + k G) does not: with the causal order
// below it left CTAs up to 30 % apart. The producer hands each index to its consumer warpgroups
// through shared memory (kernel_fwd_sm90.cuh).
//
// Order (what runs at the same time shares K / V in L2, and long tiles go first):
//  - no causal / window mask: every query block of a head costs the same; the query block varies
//    fastest, so the ~132 tiles in flight cover the query blocks of one or a few heads and read
//    each head's K / V from memory about once;
//  - causal or sliding window: query blocks cost up to n_blocks key blocks. Heads are grouped
//    into sections whose K + V fit in a share of L2 (heads_per_section); inside a section tiles
//    go longest first (last query block first, the LPT rule), heads varying fastest, so a
//    section's heads stay L2-resident while all of their query blocks run.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace flashattn::sm90 {

struct TileCoordSm90 {
  int m_block = 0;
  int bidh = 0;
  int bidb = 0;
};

struct TileSchedulerSm90 {
  int num_m_blocks = 0;
  int h = 0;
  int b = 0;
  int heads_per_section = 0;  // 0: query block fastest (unmasked order)
  int num_tiles = 0;

  // l2_bytes_for_kv: the share of L2 a section's K + V may take; kv_bytes_per_head: K + V bytes
  // one query head reads (GQA: a kv head's bytes over the query heads that share it).
  static TileSchedulerSm90 make(int num_m_blocks, int h, int b, bool longest_first,
                                int64_t kv_bytes_per_head, int64_t l2_bytes_for_kv) {
    TileSchedulerSm90 s;
    s.num_m_blocks = num_m_blocks;
    s.h = h;
    s.b = b;
    s.num_tiles = num_m_blocks * h * b;
    if (longest_first) {
      int64_t heads = kv_bytes_per_head > 0 ? l2_bytes_for_kv / kv_bytes_per_head : 1;
      const int64_t total = int64_t(h) * b;
      s.heads_per_section = int(heads < 1 ? 1 : heads > total ? total : heads);
    }
    return s;
  }

  FA_HD TileCoordSm90 coord(int tile) const {
    TileCoordSm90 c;
    if (heads_per_section == 0) {
      c.m_block = tile % num_m_blocks;
      const int hb = tile / num_m_blocks;
      c.bidh = hb % h;
      c.bidb = hb / h;
      return c;
    }
    // Sections of heads_per_section (head, sequence) pairs, the last one possibly smaller.
    const int per_section = heads_per_section * num_m_blocks;
    const int section = tile / per_section;
    const int in_section = tile - section * per_section;
    const int first_head = section * heads_per_section;
    const int total_heads = h * b;
    const int heads = total_heads - first_head < heads_per_section ? total_heads - first_head
                                                                     : heads_per_section;
    const int hb = first_head + in_section % heads;
    c.m_block = num_m_blocks - 1 - in_section / heads;
    c.bidh = hb % h;
    c.bidb = hb / h;
    return c;
  }
};

}  // namespace flashattn::sm90
