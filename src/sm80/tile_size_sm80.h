// Tile policy of the SM80-path forward kernel: one constexpr entry per compiled head dim.
//
// The numbers trade three budgets against each other (per CTA, SM80/SM90 limits):
//  - registers: each thread holds its share of O (kBlockM * kHeadDim / threads fp32) and of
//    S = Q K^T (kBlockM * kBlockN / threads fp32); past 255 registers the compiler spills;
//  - shared memory: Q (kBlockM x kHeadDim) + K and V (kBlockN x kHeadDim each, times kv_stages);
//  - occupancy: 2 CTAs per SM keep the tensor cores fed while one CTA waits on its cp.async,
//    does its softmax, or runs its prologue / epilogue; with 1 CTA of 8 warps per SM the warps
//    of a CTA move in lockstep between barriers and only the instruction stream can overlap
//    softmax with MMAs.
// Each warp owns 16 or 32 whole query rows, so the softmax row reductions stay inside a warp,
// except with row pairs (warps_n = 2, d = 256), where two warps split each row.
// The knobs (padded_kv / padded_q, kv_stages, skip_rescale, qk_chunks_ahead) are explained in
// kernel_traits_sm80.cuh and mainloop_fwd_sm80.cuh; which wins differs per head dim. Each entry
// below gives its reasons in a few lines; the measurements behind them (H100 / H200, bf16, the
// standard grid, benchmarks/cpp/tile_sweep_sm80.cu) are in docs/sm80_forward.md, "Measurements
// behind the tile policy". Knob code: s/p = swizzled/padded smem (Qp: Q padded, K / V swizzled),
// 1/2 = K/V stages, a/k = always rescale / skip it; TFLOP/s non-causal / causal at seqlen 16k.
#pragma once

#include <cstdint>

namespace flashattn::sm80 {

struct TileSizeSm80 {
  int block_m;  // query rows per CTA
  int block_n;  // keys per main-loop iteration
  int n_warps;  // warps per CTA, stacked along M (each warp owns 16 * block_m / (16 * n_warps) rows)
  bool padded_kv = false;     // K / V: padded rows instead of XOR-swizzled ones (kernel_traits_sm80.cuh)
  int kv_stages = 1;          // 2: K and V double-buffered, one barrier per key block
  bool skip_rescale = false;  // skip the O rescale when no row max of the warp moved
  int warps_n = 1;            // 2: pairs of warps share query rows (kernel_traits_sm80.cuh)
  bool q_in_regs = false;     // Q's MMA fragments stay in registers for the whole loop
  bool padded_q = false;      // the same for Q
  int qk_chunks_ahead = 0;    // S = Q K^T streams K in 16-key chunks, this many ahead (0: no)
  // Loop invariants re-derived from threadIdx.x where used instead of held in registers across
  // the loop (kernel_traits_sm80.cuh): the K / V copy addresses, and ALiBi's (row, key)
  // coordinates in the unmasked tiles.
  bool fresh_kv_addr = false;
  bool fresh_score_coords = false;
};

// CTAs of a forward kernel resident per SM (its __launch_bounds__ minimum): 2 for 4-warp CTAs.
constexpr int fwd_ctas_per_sm_sm80(const TileSizeSm80& tile) { return tile.n_warps == 4 ? 2 : 1; }

// 64 x 64 x 4, swizzled, single-buffered, skipped rescale, each query row in one warp: d = 192,
// and the split kernels at d = 192 / 256 (see tile_size_fwd_sm80 and tile_size_fwd_split_sm80).
constexpr TileSizeSm80 tile_size_fwd_64x64_rows_sm80() { return {64, 64, 4, false, 1, true}; }

constexpr TileSizeSm80 tile_size_fwd_sm80(int head_dim) {
  // d = 32, 64: 128 x 64 x 4, 2 CTAs per SM (smem 48 KB at d = 64):
  //  - swizzled K / V: padding costs 5-10 % wherever registers are not the limit;
  //  - K / V double-buffered, skipped rescale (s2k 332 / 320 vs s1k 326 / 313, s2a 322 / 312);
  //  - Q in registers (32 registers at d = 64): 32 instead of 40 ldmatrix.x4 per warp and key
  //    block, +2-4 % at every length; 255 registers, no spill;
  //  - 128 x 64: 128 x 128 spills and runs 5 % slower.
  if (head_dim <= 64) return {128, 64, 4, false, 2, true, 1, true};
  // d = 96, 128: 128 x 64 x 4, Qp s2k, streamed 1 chunk ahead. Registers are the limit (O 128
  // fp32 + S 64 per thread at d = 128):
  //  - S = Q K^T streamed in 16-key chunks (gemm_ss_streamed, utils_sm80.cuh): a few chunks of 4
  //    registers live instead of two k-slices (32), which lets the fast layouts fit 255 registers
  //    without spill; 1 chunk ahead led 2 by 1-6 % on the H100 (3 sat between them);
  //  - K / V swizzled and double-buffered: +4-5 % non-causal, +2-6 % causal over padded and
  //    single-buffered (p1k); Q padded: it is only read, and padding saves its address registers;
  //  - fresh_score_coords: ALiBi's unmasked tiles re-derive their coordinates (8 B spill -> none);
  //  - 128 x 32 runs 365 / 335; 8 warps lose (16 rows per warp read K / V for half the MMA work).
  // smem 34 (Q, padded) + 2 x 32 (K, V) = 98 KB at d = 128: 2 CTAs per SM on an H100; an A100
  // gets tile_size_fwd_compact_sm80.
  if (head_dim <= 128) {
    return {128, 64, 4, false, 2, true, 1, false, /*padded_q=*/true, 1, /*fresh_kv_addr=*/false,
            /*fresh_score_coords=*/true};
  }
  // d = 192: 64 x 64 x 4 s1k with each row in one warp (not timed separately): with row pairs
  // ptxas spills 68 bytes in the plain kernel.
  if (head_dim <= 192) return tile_size_fwd_64x64_rows_sm80();
  // d = 256: 64 x 64 x 4 as 2 row pairs (warps_n = 2), 2 CTAs per SM, smem 107 KB:
  //  - row pairs: with each row in one warp every K / V element a warp reads from smem feeds one
  //    m16 MMA (144 ldmatrix.x4 per 256 MMAs, about the MMAs' own time); pairs read 104 and ran
  //    +2-3 % non-causal, +1-6 % causal;
  //  - 64 rows: O is 128 fp32 per thread; 2 CTAs per SM overlap each other's softmax, prologue and
  //    epilogue (128 x 64 with 8 warps, 1 CTA per SM, loses at short lengths);
  //  - single-buffered, skipped rescale: always rescaling (s1a) spills 76 bytes with pairs;
  //  - Q padded and S streamed 2 chunks ahead: +1-3 % non-causal (1 or 3 ahead within noise).
  // 252 registers, no spill.
  return {64, 64, 4, false, 1, true, 2, false, /*padded_q=*/true, 2};
}

// The plain kernels on GPUs whose shared memory does not hold two CTAs of the policy's tile
// (run_fwd_sm80 asks cuda::device_smem_per_sm). The d = 96 / 128 policy takes 74 / 98 KB, and an
// A100 has 164 KB per SM (1 KB of it reserved per CTA): one CTA of 4 warps per SM would leave each
// scheduler a single warp. So d = 96 / 128 take, keeping two CTAs per SM:
//  - p1k (padded, single-buffered, the classic S gemm: 52 / 68 KB): 4-5 % behind the policy on
//    the H100, 1-6 % ahead of 128 x 32 with the policy's layouts (which also fits);
//  - fresh_kv_addr: K / V copy addresses re-derived per copy, four registers freed: no compact
//    kernel spills on either arch (the softcap kernel spilled 24 B on sm_90a without it);
//  - with ALiBi (`alibi`) 128 x 32 Qp s2k: p1k's ALiBi kernels spilled 60 B on sm_80; the two tie
//    on the H100, and 128 x 32 leads by 1-4 % with softcap + ALiBi. Softcap alone stays on p1k.
// Every other head dim's policy is its own compact tile: d <= 64 fits twice anywhere, and d =
// 192 / 256 (72 / 107 KB) were chosen for the H100 and run one CTA per SM on an A100, as
// FlashAttention-2's d = 256 tile does there. Not timed on an A100 (none here).
constexpr TileSizeSm80 tile_size_fwd_compact_sm80(int head_dim, bool alibi) {
  if (head_dim > 64 && head_dim <= 128) {
    if (alibi) return {128, 32, 4, false, 2, true, 1, false, /*padded_q=*/true, 2};
    return {128, 64, 4, /*padded_kv=*/true, 1, true, 1, false, /*padded_q=*/true, 0,
            /*fresh_kv_addr=*/true};
  }
  return tile_size_fwd_sm80(head_dim);
}

// The most shared memory per SM of any GPU that runs code compiled for `arch` (__CUDA_ARCH__):
// sm_80 code runs on every 8.x part (A100, A30 and Orin: 164 KB; 8.6 and 8.9: 100 KB), sm_90 code
// on the H100, H200 and GH200 (228 KB). 0 where this table does not know the arch (PTX compiled
// for a later GPU).
constexpr int max_smem_per_sm_of_arch(int arch) {
  return arch >= 800 && arch < 900 ? 164 * 1024 : arch >= 900 && arch < 1000 ? 228 * 1024 : 0;
}

// Whether a GPU running `arch` code can have the `min_smem_per_sm` bytes per SM a kernel is
// launched with (flash_fwd_sm80_kernel): false only where the table above says no.
constexpr bool arch_may_launch_sm80(int arch, int min_smem_per_sm) {
  return max_smem_per_sm_of_arch(arch) == 0 || min_smem_per_sm <= max_smem_per_sm_of_arch(arch);
}

// Dropout kernels (run_fwd_dropout_sm80). The keep mask is drawn per tile right before P V, and
// the Philox rounds need registers on top of O and S, where the plain d = 128 kernel already sits
// at 255 with none to spare: at 128 x 64 the dropout kernel spilled 260-288 bytes. At 128 x 32
// (S takes 32 registers instead of 64, FlashAttention-2's choice for dropout too) the plain
// kernel's layouts (Q padded, K / V swizzled, double-buffered, streamed S gemm) fit in 250-254
// registers without spill, 2-4 % ahead of 128 x 32 p1k (H200, p = 0.1).
constexpr TileSizeSm80 tile_size_fwd_dropout_sm80(int head_dim) {
  if (head_dim > 64 && head_dim <= 128) return {128, 32, 4, false, 2, true, 1, false, true, 2};
  TileSizeSm80 tile = tile_size_fwd_sm80(head_dim);
  // d = 256: the plain kernel's row pairs, but Q swizzled and the classic S gemm: with Q padded
  // and streamed, the dropout kernels spilled 36 bytes (60 with ALiBi), this way none.
  if (head_dim > 192) {
    tile.padded_q = false;
    tile.qk_chunks_ahead = 0;
  }
  return tile;
}

// Split-capable kernels (run_fwd_split_sm80: split-KV, paged KV, KV-cache hooks). Their main
// user is decode, where a CTA holds a handful of query rows (s_q * h / h_k after GQA packing) and
// streams a long K/V: the kernel is bound by DRAM, and what matters is how many K/V bytes each SM
// has in flight. With one K/V buffer a CTA has one tile in flight at a time (V while S = Q K^T
// runs, then K while P V runs), so bytes in flight = tile bytes x resident CTAs:
//  - 128 x 64 (the plain kernel's tile at d = 128): 16 KB tiles, 2 CTAs per SM -> 32 KB per SM;
//    measured (H100, decode b = 8, h_k = 8, 4k keys, ncu): 77 % of peak DRAM bandwidth, 51.5 us;
//  - 64 x 128 (FlashAttention-2's split-KV tile): 32 KB tiles, smem 16 + 32 + 32 = 80 KB, still
//    2 CTAs per SM -> 64 KB per SM; FlashAttention-2's kernel reached 81 % (49.5 us) there.
// 64 rows also means 16 rows per warp: O and S take 64 fp32 each at d = 128, so the swizzled
// layout (dense, 128-byte aligned rows) fits in registers. d = 192 / 256 keep a 64 x 64 tile
// (64 x 128 would need 64 KB tiles and 1 CTA per SM) with each row in one warp: the split kernels
// let warps without a valid row skip their gemms (mainloop_fwd_sm80.cuh), which row pairs' extra
// barrier would not allow. Paged prefill through this family runs the same tile, as
// FlashAttention-2's paged path does.
constexpr TileSizeSm80 tile_size_fwd_split_sm80(int head_dim) {
  if (head_dim <= 128) return {64, 128, 4, false, 1, true};
  return tile_size_fwd_64x64_rows_sm80();
}

// d = 256 split-capable and dropout kernels on GPUs that do not hold two CTAs of their 64 x 64
// tiles (96.5 KB split-capable, 107 KB dropout): 64 x 32 x 4 s1k, each row in one warp, 64 KB.
// An A100 (164 KB per SM) holds one CTA of the 64 x 64 tiles, one warp per scheduler, and their
// sm_80 code spills: split-capable ALiBi 4 B, paged 16-24 B, dropout + ALiBi 44 B (ptxas).
// 64 x 32 fits twice in the same shared memory, so it keeps the same K / V bytes in flight per SM
// (2 CTAs x 16 KB instead of 1 x 32 KB: what bounds decode), and with S at 16 fp32 per thread
// instead of 32 it spills in none of these kernels on either arch. Chosen by that
// count, not timed on an A100 (none here). d <= 192: the family's own tile fits twice (the d = 128
// split-capable one exactly: 2 x (81 + 1) KB = 164 KB).
constexpr TileSizeSm80 tile_size_fwd_64x32_rows_sm80() { return {64, 32, 4, false, 1, true}; }

constexpr TileSizeSm80 tile_size_fwd_split_compact_sm80(int head_dim) {
  return head_dim > 192 ? tile_size_fwd_64x32_rows_sm80() : tile_size_fwd_split_sm80(head_dim);
}

constexpr TileSizeSm80 tile_size_fwd_dropout_compact_sm80(int head_dim) {
  return head_dim > 192 ? tile_size_fwd_64x32_rows_sm80() : tile_size_fwd_dropout_sm80(head_dim);
}

// Shared memory of a split-capable CTA of `tile` (swizzled, 2-byte elements) at head dim
// `head_dim` with paged K/V, the larger of the two: Q, K and V per stage, and two blocks of
// block-table entries. launch_fwd_sm80.cuh checks it against the kernel.
constexpr int fwd_split_smem_bytes_sm80(const TileSizeSm80& tile, int head_dim) {
  return (tile.block_m + 2 * tile.kv_stages * tile.block_n) * head_dim * 2 + 2 * tile.block_n * 4;
}

// Shared memory per SM that fwd_ctas_per_sm_sm80 CTAs of the split-capable policy tile take (1 KB
// of each reserved on SM80+).
constexpr int fwd_split_smem_per_sm_sm80(int head_dim) {
  const TileSizeSm80 tile = tile_size_fwd_split_sm80(head_dim);
  return fwd_ctas_per_sm_sm80(tile) * (fwd_split_smem_bytes_sm80(tile, head_dim) + 1024);
}

// The split-capable tile of a GPU with smem_per_sm bytes of shared memory per SM: the policy's
// where its CTAs fit, else the compact one. run_fwd_split_sm80 decides the same way, and the
// dispatch's split count (which needs the grid) asks this.
constexpr TileSizeSm80 tile_size_fwd_split_for_sm80(int head_dim, int smem_per_sm) {
  return fwd_split_smem_per_sm_sm80(head_dim) <= smem_per_sm
             ? tile_size_fwd_split_sm80(head_dim)
             : tile_size_fwd_split_compact_sm80(head_dim);
}
static_assert(tile_size_fwd_split_for_sm80(256, 164 * 1024).block_n == 32, "A100: compact");
static_assert(tile_size_fwd_split_for_sm80(256, 228 * 1024).block_n == 64, "H100: the policy");
static_assert(tile_size_fwd_split_for_sm80(128, 164 * 1024).block_n == 128, "2 x 82 KB fit");

// The head-dim kernels that exist: a request with head dim d runs the smallest kernel >= d with
// the columns d..kHeadDim-1 predicated off.
constexpr int kSm80HeadDims[] = {32, 64, 96, 128, 192, 256};

constexpr int round_head_dim_sm80(int d) {
  for (int hd : kSm80HeadDims)
    if (d <= hd) return hd;
  return 0;
}

}  // namespace flashattn::sm80
