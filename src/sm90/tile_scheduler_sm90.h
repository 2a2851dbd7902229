// Persistent tile scheduler of the Hopper forward kernels, as pure functions from (CTA, step) to
// a tile and from a tile to (query block, head, sequence), shared by the host (grid size, CPU
// unit tests) and the kernel. A grid of G = min(tiles, SMs) CTAs takes the tiles in waves of G:
// at step k CTA c runs tile k G + c on even steps and k G + (G - 1 - c) on odd ones (a "snake").
// The producer warp and the consumer warpgroups of a CTA each walk the same sequence, so they
// agree on every tile without talking to each other. Alternating the direction balances the
// longest-first order below within one L2 section (CTA 0 no longer gets the longest tile of every
// wave); across several sections it does not (a causal grid with four sections measured up to
// 30 % between CTAs in a model of the order): taking tiles from a shared counter instead is the
// planned fix (docs/sm90_forward.md).
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

  // The tile of CTA cta (of grid CTAs) at step k; >= num_tiles once the CTA is done.
  FA_HD static int tile_of(int cta, int grid, int k) {
    return k * grid + ((k & 1) ? grid - 1 - cta : cta);
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
