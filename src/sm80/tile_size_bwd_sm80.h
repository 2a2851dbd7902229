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
// Measured on the H100 (s = 16k): 2 + 2 is +5 % at d = 128 (289 vs 274 TFLOP/s), and beats
// 2 + 1 there at s >= 4k (bwd_bench_sm80, TFLOP/s non-causal / causal, s = 1k / 4k / 16k:
// 261.5 / 200.7, 308.7 / 280.2, 325.4 / 323.9 vs 260.6 / 199.7, 311.9 / 278.6, 314.4 / 314.5).
// At d = 256 two buffers each take 208 KB (more than the A100's 163 KB per block) and ran slower
// than 1 + 1 (227.2 / 219.9 vs 245.1 / 231.5 at 4k, 76 bytes spilled); 32 x 64 tiles (dQ 32 fp32
// instead of 64) ran 212.7 / 196.5. d = 64: 2 + 1 (144 KB) over 1 + 1: 241.5 / 183.8 vs
// 237.8 / 185.3, 284.5 / 258.7 vs 276.9 / 256.8, 293.6 / 293.9 vs 289.6 / 290.6.
//
// dq_parts: at d = 256 (1 + 1) the dQ gemm ends the step, and its 64 fp32 per thread went out as
// one burst of 16 red.global.add.v4 (ncu: LG-throttle stalls there, where FlashAttention-2 has
// none). In 64-column slices each slice's 4 atomics drain while the next slice's MMAs run; the
// dS fragments are re-read per slice. s = 1k / 4k / 16k, non-causal / causal: whole 214.3 /
// 174.3, 244.9 / 229.8, 256.4 / 259.6; halves 224.9 / 181.6, 260.3 / 240.1, 267.2 / 269.0;
// quarters 229.0 / 184.5, 265.6 / 245.0, 271.5 / 275.0 (2 + 1 with quarters: 224.6 / 180.6,
// 259.6 / 238.1, 265.3 / 268.3; 176 KB). Spills do not explain it: 16 / 24 / 28 bytes. Where
// the dQ gemm sits between dV and dK (d = 128, 2 + 2) dK already hides the atomics and halves
// lost 3-5 % (253.5 / 193.6, 300.0 / 267.0, 309.9 / 308.1); at d = 64 (k = 128, 32 fp32 per
// thread) halves lost 4-6 %. d = 192 follows d = 256 (three 64-column slices; not timed).
// Shared memory:
//   d = 64 (128 x 128): Q 2 x 16 KB, dO 16 KB,  K, V 2 x 16 KB, P, dS 2 x 32 KB = 144 KB
//   d = 128:            Q, dO 2 x 2 x 16 KB,    K, V 2 x 32 KB, P, dS 2 x 16 KB = 160 KB
//   d = 192 (64 x 64):  Q, dO 2 x 24 KB,        K, V 2 x 24 KB, P, dS 2 x 8 KB  = 112 KB
//   d = 256 (64 x 64):  Q, dO 2 x 32 KB,        K, V 2 x 32 KB, P, dS 2 x 8 KB  = 144 KB
//
// d = 64 takes 128 x 128 tiles: with 64 x 128 the S / dP and dQ gemms have k = 64 only, and the
// ldmatrix traffic per flop is 77 KB / MFLOP against 64 at 128 x 128 (docs/sm80_backward.md).
// The price is registers: S + dP 128 fp32 next to dK + dV 64. With 2 + 2 buffers ptxas spilled
// 60 bytes (the second stage's addresses), with 1 + 1 16, with 2 + 1 32; measured on the H100
// after the row-statistics fix (TFLOP/s non-causal / causal): s = 1k 219.8 / 172.2 (2 + 2) vs
// 237.1 / 184.9 (1 + 1), 4k 262.5 / 243.8 vs 280.5 / 257.5, 16k 272.1 / 269.6 vs 286.1 / 289.6;
// 64 x 128 with 2 + 2 236.2 / 180.8, 273.1 / 254.1, 282.2 / 281.9. (FA2's S / dP layout, 2 x 4
// warps, spilled 192 bytes and ran 1-3 % slower.) With 2 + 1 (policy: 240.2 / 185.1 at 1k,
// 284.4 / 260.6 at 4k, 292.8 / 292.7 at 16k): FA2's 2 x 4 S / dP layout spills 148 bytes and
// runs 219.5 / 170.6, 265.1 / 241.5, 271.3 / 269.6; 64 x 128 tiles 225.0 / 174.2, 261.9 / 241.2,
// 268.5 / 269.3.
//
// gemm_chunks_ahead (sixth session): the five gemms load B in 16-column chunks 1 or 2 steps
// ahead instead of a whole k-slice (gemm_ss_streamed, utils_sm80.cuh, which let the d = 128
// forward drop its spill). bwd_bench_sm80, H100, two runs each, TFLOP/s non-causal / causal at
// s = 1k / 4k / 16k:
//   d = 64:  policy 241.7 / 185.1, 280.5 / 262.7, 296.0 / 292.6 (32 bytes spilled);
//            1 ahead 243.7 / 187.5, 289.2 / 264.5, 298.1 / 294.8 (no spill; taken);
//            2 ahead 244.1 / 187.7, 288.3 / 265.4, 294.9 / 295.8 (8 bytes);
//   d = 128: policy 265.0 / 201.6, 308.8 / 276.5, 321.6 / 322.3; 1 ahead 264.9 / 202.4, 310.8 /
//            277.8, 323.7 / 321.6; 2 ahead 266.4 / 202.7, 314.9 / 279.5, 325.0 / 318.9 (16 B);
//   d = 256: policy 230.7 / 184.4, 262.3 / 242.0, 271.5 / 270.5; 1 and 2 ahead within 1 %
//            (24 bytes spilled instead of 28).
// At d = 128 / 256 the gain is at most 2 % and not at every point, so they keep whole slices.
// Streaming does not rescue d = 64's 2 + 2 buffers either (4 bytes spilled with 1 ahead, 12
// with 2): non-causal 1k / 4k / 16k 237.9 / 277.7 / 285.9 (1 ahead) and 240.5 / 282.0 / 290.6 (2
// ahead) vs the policy's 242.7 / 280.4 / 293.4; 1 + 1 with 1 ahead 243.9 / 283.2 / 294.1.
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
