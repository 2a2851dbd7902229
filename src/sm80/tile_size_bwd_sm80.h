// Tile policy of the SM80-path backward kernel: one constexpr entry per compiled head dim.
//
// One CTA owns a key block of kBlockN keys for the whole loop over query blocks, so it keeps
// dK and dV (kBlockN x kHeadDim fp32 each) in registers the whole time; per query block it also
// holds S and dP (kBlockM x kBlockN fp32 each) and, for a moment, the dQ partial
// (kBlockM x kHeadDim fp32). With 8 warps (256 threads) and d = 128, 64 x 128 tiles:
//   dK + dV  2 * 128 * 128 / 256 = 128 fp32,   S + dP  2 * 64 * 128 / 256 = 64 fp32,
//   dQ       64 * 128 / 256 = 32 fp32 (after S / dP are dead),
// which is FlashAttention-2's own budget at d = 128 (one CTA per SM, 255 registers per thread).
// At d = 192, 256 dK + dV alone would take 192 / 256 fp32 with 128 keys: 64 keys halve that.
//
// Warp layouts: each of the five gemms reads both operands from shared memory with ldmatrix, and
// that traffic (128 B / clock / SM) is the larger of the two pipe loads of a step
// (docs/sm80_backward.md counts it: ~640 KB per 64 x 128 x 128 step, 5000 clocks, against 3900
// for the mma.sync). A warp tile of R x C outputs over a k-extent K reads (R + C) * K * 2 bytes,
// so each gemm takes the squarest warp tile its shape allows:
//   S, dP  (kBlockM x kBlockN)  = 64 x 128:  2 x 4 warps -> 32 x 32 per warp
//   dK, dV (kBlockN x kHeadDim) = 128 x 128: 4 x 2 warps -> 32 x 64
//   dQ     (kBlockM x kHeadDim) = 64 x 128:  2 x 4 warps -> 32 x 32 (4 x 2 would be 16 x 64:
//                                            20 KB instead of 16 KB per warp and step)
// At d = 256 (64 x 64 tiles): S, dP 4 x 2 -> 16 x 32 (k = 256: 24 KB per warp either way),
// dK, dV 2 x 4 -> 32 x 64 (12 KB per warp, 4 x 2 -> 16 x 128 reads 18 KB), dQ 2 x 4 -> 32 x 64.
//
// stages: Q and dO buffers (mainloop_bwd_sm80.cuh has the three step orders).
//  - 2 + 2: the next query block's Q and dO load during the whole current step (issued right
//    after the step's first barrier);
//  - 2 + 1: Q as above; dO, dead after the dV gemm, reloads behind the dQ and dK gemms;
//  - 1 + 1: both load after the step's dK gemm, hidden only behind the dQ gemm.
// d = 128: 2 + 2, +5 % over 1 + 1 and +3 % over 2 + 1 at s = 16k on the H100. d = 192 / 256: 1 + 1,
// since two buffers each take 208 KB at d = 256 (more than the A100's 163 KB per block) and ran
// slower with 76 bytes spilled. d = 64: 2 + 1, up to +3 % over 1 + 1 (2 + 2 spills 60 bytes).
//
// dq_parts: where the dQ gemm ends the step (1 + 1, d = 192 / 256), its atomics go out per
// 64-column slice and drain while the next slice's MMAs run (one burst of 16 red.global.add.v4
// showed LG-throttle stalls in ncu): quarters +6-8 % at d = 256 (halves +4-7 %). Where the dK gemm
// follows dQ (2 + 2, 2 + 1) it already hides the atomics, and slices lost 3-6 %.
// Shared memory:
//   d = 64 (128 x 128): Q 2 x 16 KB, dO 16 KB,  K, V 2 x 16 KB, P, dS 2 x 32 KB = 144 KB
//   d = 128:            Q, dO 2 x 2 x 16 KB,    K, V 2 x 32 KB, P, dS 2 x 16 KB = 160 KB
//   d = 192 (64 x 64):  Q, dO 2 x 24 KB,        K, V 2 x 24 KB, P, dS 2 x 8 KB  = 112 KB
//   d = 256 (64 x 64):  Q, dO 2 x 32 KB,        K, V 2 x 32 KB, P, dS 2 x 8 KB  = 144 KB
//
// d = 64 takes 128 x 128 tiles: with 64 x 128 the S / dP and dQ gemms have k = 64 only, and the
// ldmatrix traffic per flop is 77 KB / MFLOP against 64 at 128 x 128 (docs/sm80_backward.md);
// 64 x 128 ran 6-9 % slower. The price is registers (S + dP 128 fp32 next to dK + dV 64), hence
// 2 + 1 buffers, and the 4 x 2 S / dP layout (FlashAttention-2's 2 x 4 spills 148 bytes, -7-9 %).
// gemm_chunks_ahead: the five gemms load B in 16-column chunks this many steps ahead instead of a
// whole k-slice (gemm_ss_streamed, utils_sm80.cuh). d = 64 takes 1 ahead: no spill instead of 32
// bytes, +1-3 % at s = 1k / 4k. At d = 128 / 256 it gains at most 2 % and not at every point, so
// they keep whole slices.
// The measurements behind these numbers (bwd_bench_sm80, H100, bf16, TFLOP/s per variant):
// docs/sm80_backward.md, "Measurements behind the tile policy".
#pragma once

namespace flashattn::sm80 {

struct TileSizeBwdSm80 {
  int block_m;     // query rows per inner-loop step
  int block_n;     // keys per CTA
  int n_warps;
  int atom_m_sdp;  // warps along M in the S / dP gemms (the rest go along N)
  int atom_n_dkv;  // warps along N in the dK / dV gemms (the rest go along d)
  int atom_m_dq;   // warps along M in the dQ gemm (the rest go along d)
  int stages_q;    // Q buffers (1 or 2)
  int stages_do;   // dO buffers (1 or 2, at most stages_q); every entry fits the A100's 163 KB
  int dq_parts;    // the dQ gemm and its atomics in this many head-dim slices
  int gemm_chunks_ahead = 0;  // every gemm streamed in 16-column chunks, this many ahead (0: no)
};

constexpr TileSizeBwdSm80 tile_size_bwd_sm80(int head_dim) {
  if (head_dim == 64) return {128, 128, 8, 4, 4, 4, 2, 1, 1, /*gemm_chunks_ahead=*/1};
  // d = 32, 96: the dQ gemm's 2 x 4 layout needs d % 64 == 0; 4 x 2 instead.
  if (head_dim % 64 != 0 && head_dim <= 128) return {64, 128, 8, 2, 4, 4, 2, 2, 1};
  if (head_dim <= 128) return {64, 128, 8, 2, 4, 2, 2, 2, 1};
  return {64, 64, 8, 4, 2, 2, 1, 1, head_dim / 64};
}

}  // namespace flashattn::sm80
