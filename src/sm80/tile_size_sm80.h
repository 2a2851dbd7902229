// Tile policy of the SM80-path forward kernel: one constexpr entry per compiled head dim.
//
// The numbers trade three budgets against each other (per CTA, SM80/SM90 limits):
//  - registers: each thread holds its share of O (kBlockM * kHeadDim / threads fp32) and of
//    S = Q K^T (kBlockM * kBlockN / threads fp32); past ~255 registers the compiler spills;
//  - shared memory: Q (kBlockM x kHeadDim) + K and V (kBlockN x kHeadDim each), 16-bit, single
//    buffered (the schedule overlaps the V load with Q K^T and the next K load with softmax + P V);
//  - occupancy: 2 CTAs of 4 warps per SM (or 1 of 8) keep the tensor cores fed while one CTA
//    waits on its cp.async or does its softmax.
// kBlockM = 128 everywhere: each warp owns 16 or 32 query rows, so the softmax row reductions stay
// inside a warp (quad shuffles, no shared memory), and the O tile is large enough to amortize the
// K/V traffic (K/V bytes read per CTA ~ s_k * d * 4, shared by 128 rows).
#pragma once

namespace flashattn::sm80 {

struct TileSizeSm80 {
  int block_m;  // query rows per CTA
  int block_n;  // keys per main-loop iteration
  int n_warps;  // warps per CTA, stacked along M (each warp owns 16 * block_m / (16 * n_warps) rows)
};

constexpr TileSizeSm80 tile_size_fwd_sm80(int head_dim) {
  // d = 32, 64: 128 x 64. O is small (32 / 64 fp32 per thread); a 128-key S tile adds 128 fp32
  // per thread plus its 16-bit copy for P V and spills (ptxas sm_90a: 24 bytes at d = 32, 128 at
  // d = 64), and measured slower: d = 64, s = 16k, H100 bf16: 267 TFLOP/s at 128 x 64 vs 246 at
  // 128 x 128 (non-causal), 256 vs 241 (causal). smem 16 / 32 KB.
  if (head_dim <= 64) return {128, 64, 4};
  // d = 96, 128: 128 x 64, 4 warps (FlashAttention-2's A100/H100 choice). O takes 96 / 128 fp32
  // per thread and S 64 more: ptxas spills 56-92 bytes (loop-invariant addresses reloaded once
  // per iteration). Measured d = 128, s = 16k: 312 TFLOP/s vs 297 at 128 x 32 (less S, but twice
  // the per-tile softmax / barrier overhead) and 260 at 128 x 64 with 8 warps (16 rows per warp
  // read the same K/V smem tile for half the MMA work). smem 48 / 64 KB -> 2 CTAs per SM.
  if (head_dim <= 128) return {128, 64, 4};
  // d = 192, 256: with 4 warps O alone would take 192 / 256 fp32 per thread; 8 warps (16 rows
  // each) halve that. smem 96 KB (2 CTAs/SM) / 128 KB (1 CTA/SM, still 8 warps per SM).
  // Measured d = 256, s = 16k: 310 TFLOP/s vs 280 at 64 x 64 with 4 warps.
  return {128, 64, 8};
}

// The head-dim kernels that exist: a request with head dim d runs the smallest kernel >= d with
// the columns d..kHeadDim-1 predicated off.
constexpr int kSm80HeadDims[] = {32, 64, 96, 128, 192, 256};

constexpr int round_head_dim_sm80(int d) {
  for (int hd : kSm80HeadDims)
    if (d <= hd) return hd;
  return 0;
}

}  // namespace flashattn::sm80
