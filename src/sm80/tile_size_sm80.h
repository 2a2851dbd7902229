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
// kernel_traits_sm80.cuh and mainloop_fwd_sm80.cuh; which wins differs per head dim, as
// measured below.
// Measurements: H100 SXM, bf16, the standard grid (batch * seqlen = 16384, hidden 2048),
// benchmarks/cpp/tile_sweep_sm80.cu, TFLOP/s non-causal / causal at seqlen 16k unless noted;
// knob code: s/p = swizzled/padded smem, 1/2 = K/V stages, a/k = always rescale / skip it.
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
  // d = 32, 64: 128 x 64 x 4, swizzled, double-buffered, skipped rescale (s2k): 332 / 320,
  // vs s1k 326 / 313, p2k 304 / 293 (padding costs 5-10% wherever registers are not the
  // limit), s2a 322 / 312. 128 x 128 measured 314 / 302 and spills. 225 registers (Q in smem), no spill;
  // smem 48 KB (d = 64), 2 CTAs per SM.
  //
  // And Q in registers (q_in_regs, 32 registers at d = 64): S = Q K^T then reads only K from
  // shared memory, 32 instead of 40 ldmatrix.x4 per warp and key block. Medians of 3 rounds,
  // same binary, s2k with / without (non-causal 1k / 2k / 4k / 8k): 305 / 323 / 333 / 340 vs
  // 298 / 313 / 322 / 328; causal 1k .. 16k: 237 / 275 / 298 / 313 / 328 vs 233 / 267 / 292 /
  // 303 / 317 (16k non-causal too noisy in that run to rank). 255 registers, no spill.
  if (head_dim <= 64) return {128, 64, 4, false, 2, true, 1, true};
  // d = 96, 128: 128 x 64 x 4, K / V swizzled and double-buffered, Q padded, skipped rescale,
  // S = Q K^T streamed 1 chunk ahead (Qp s2k a1). The limit here is registers: O takes 128
  // fp32 per thread and S 64, and gemm_ss kept two whole k-slices of K fragments (32 registers)
  // live next to them. Until the sixth session the only spill-free knob set was p1k (padded,
  // single-buffered): swizzled layouts need one address register per XOR pattern and spilled
  // 96-152 bytes (s2k 96), p2k 24, p1a 92. gemm_ss_streamed (utils_sm80.cuh) keeps 3 chunks of 4
  // registers instead of 32, and Q padded (it is only read) saves its pattern registers: 255
  // registers, no spill, also in the softcap kernel (it spilled 24-40 bytes with p1k); ALiBi
  // spilled 8 bytes (was 24-40) until its unmasked tiles derived their coordinates afresh
  // (fresh_score_coords, ninth session), none since: H100, the two versions' binaries alternated
  // in one call, 2k / 8k / 16k, ALiBi -0.8 to +0.6 %, softcap + ALiBi +0.8 to +3.9 % (the plain
  // kernel, the same code in both, -0.8 to +1.3 %). Medians of 3 interleaved rounds, one binary (H200, sixth
  // session), Qp s2k a2 vs p1k, non-causal 1k / 2k / 4k / 8k / 16k: 347.5 / 363.6 / 375.3 /
  // 380.4 / 382.7 vs 330.9 / 349.5 / 362.7 / 362.0 / 364.6 (+4-5 %), causal 263.9 / 302.5 /
  // 325.3 / 343.4 / 358.2 vs 257.9 / 290.6 / 315.7 / 331.7 / 337.8 (+2-6 %); softcap +8-11 %
  // (16k 353.8 vs 326.6 non-causal). Look-ahead 1 and 3 ran within noise of 2 there (a1 351.2 /
  // 366.6 / 370.6 / 378.7 / 381.9). On the H100 (eighth session, tile_sweep with the variant
  // order rotated per round, medians of 5 rounds) a1 led a2 at every point: non-causal 348.2 /
  // 364.7 / 369.8 / 391.6 / 389.1 vs 342.9 / 354.8 / 367.4 / 374.2 / 367.1 (+1-6 %), causal
  // 264.5 / 302.3 / 330.0 / 344.9 / 355.9 vs 260.9 / 299.2 / 323.6 / 340.8 / 353.4 (+1-2 %), as
  // in an earlier run that session without rotation (20 of 20 points); a3 sat between them. So
  // a1 since the eighth session: same registers and spills, no spill at d = 96
  // on either arch (d = 96 not timed). The same layouts with the classic gemm_ss spill 72 bytes
  // and ran 4-5 % slower than streamed (H100, 3 rounds); streaming with padded K / V (p1k a2)
  // spilled 8 bytes and lost 7-10 %. Before streaming, the best found was Q padded with only K
  // double-buffered (56 bytes spilled, +1-5 % over p1k; three attempts to cut that spill failed,
  // fifth session); streamed it spills nothing but runs 1-5 % behind Qp s2k a2 (H100), so that
  // schedule is gone. 128 x 32 x 4 measured 365 / 335 at 16k; 8 warps lose (16 rows per warp
  // read the same K/V tile for half the MMA work). smem 34 (Q, padded) + 2 x 32 (K, V) = 98 KB at
  // d = 128, 2 CTAs per SM on an H100 (an A100 gets tile_size_fwd_compact_sm80).
  if (head_dim <= 128) {
    return {128, 64, 4, false, 2, true, 1, false, /*padded_q=*/true, 1, /*fresh_kv_addr=*/false,
            /*fresh_score_coords=*/true};
  }
  // d = 192: 64 x 64 x 4 s1k with each row in one warp (the d = 256 choice before row pairs,
  // below; not timed separately): with row pairs ptxas spills 68 bytes in the plain kernel.
  if (head_dim <= 192) return tile_size_fwd_64x64_rows_sm80();
  // d = 256: 64 x 64, 4 warps as 2 row pairs (warps_n = 2), K / V swizzled, Q padded,
  // single-buffered, skipped rescale, streamed S gemm. (Q padded and streamed, sixth session:
  // +1-3 % non-causal in two H100/H200 runs of 3 rounds each, e.g. H200 318.3 / 328.3 / 331.5 /
  // 338.8 / 340.7 vs 313.0 / 318.4 / 327.9 / 332.8 / 336.3 at 1k .. 16k; causal within +-1.5 %.
  // Look-ahead 1 or 3 instead of 2, eighth session, H100, 5 rotated rounds: within 0-2.5 % at
  // every point, inside the run's spread, so it stays at 2.)
  // At 64 rows a CTA of 4 warps with each row in one warp (FlashAttention-2's H100 layout) gives each warp 16 rows, so every K and V element a warp reads from shared memory
  // feeds a single m16 MMA: 72 KB of ldmatrix per warp and key block, 144 ldmatrix.x4 against
  // 256 MMAs, about the tensor cores' own time at 128 bytes per clock. Row pairs (two warps per
  // 32 rows, each half the keys of S and half the head dim of O) read 52 KB (104 ldmatrix.x4)
  // and pay one pair barrier and a P round trip through shared memory per key block.
  // tile_sweep_sm80, H100, TFLOP/s pairs vs each row in one warp (both s1k), same binary:
  // non-causal 1k 313 vs 304, 2k 331 vs 323, 4k 342 vs 334, 8k 347 vs 338, 16k 348 vs 338;
  // causal 1k 255 vs 253, 2k 283 vs 276, 4k 301 vs 294, 8k 314 vs 306, 16k 355 vs 336.
  // A CTA-wide barrier in place of the pair barrier lost 0.5-1 %. Always rescaling (s1a) spills
  // 76 bytes with pairs. 128 x 64 with 8 warps as 4 pairs: 294-304 at 1k, 1 CTA per SM.
  // Before pairs, the choices with each row in one warp measured: 64 x 64 x 4 s1k 336 / 339 at 16k and
  // 308 / 249 at 1k, vs s1a 320 / 321 (296 / 247 at 1k) and 128 x 64 x 8 s1a 331 / 333 (299 /
  // 232 at 1k: 1 CTA of 8 warps per SM cannot hide its own prologue and epilogue). O is 128
  // fp32 per thread at d = 256 either way; 2 CTAs per SM overlap each other's softmax, prologue
  // and epilogue. 252 registers, no spill; smem 107 KB.
  return {64, 64, 4, false, 1, true, 2, false, /*padded_q=*/true, 2};
}

// The plain kernels on GPUs whose shared memory does not hold two CTAs of the policy's tile
// (run_fwd_sm80 asks cuda::device_smem_per_sm). The d = 96 / 128 policy takes 74 / 98 KB, and an
// A100 has 164 KB per SM (1 KB of it reserved per CTA): one CTA of 4 warps per SM would leave each
// scheduler a single warp. There the fifth session's policy, p1k (padded, single-buffered, the
// classic S gemm: 52 / 68 KB), keeps two. Measured on the H100 only: 4-5 % behind the policy
// (tile_size_fwd_sm80 above). 128 x 32 with the policy's layouts (the dropout tile below, 67 KB)
// spills nothing with any score mod, but ran 1-6 % behind p1k without them (tile_sweep_sm80,
// H100, 3 rounds, non-causal 1k / 4k / 16k: 317.9 / 350.7 / 367.5 vs 332.7 / 369.3 / 373.9;
// causal 1k / 4k: 242.3 / 300.1 vs 257.0 / 314.3), so p1k stays for them.
// ALiBi (`alibi`) takes 128 x 32: p1k's ALiBi kernels spilled 60 bytes on sm_80 (6 local loads
// and 6 stores per key block in the unmasked loop), 40 on sm_90a (eighth session, before
// MainloopFwdSm80::score_mods). With ALiBi the two tie on the H100
// (SWEEP_ALIBI, eighth session, medians of 3 interleaved rounds, 1k / 2k / 4k / 8k / 16k):
// non-causal 306.0 / 326.5 / 337.8 / 341.9 / 341.8 vs p1k 313.0 / 335.0 / 342.6 / 346.4 / 336.1,
// causal 247.4 / 278.4 / 306.0 / 317.1 / 327.3 vs 246.3 / 279.8 / 301.5 / 313.1 / 329.2; with
// softcap + ALiBi 128 x 32 leads, non-causal 282.7 .. 316.5 vs 280.9 .. 312.3, causal 230.1 ..
// 307.3 vs 226.4 .. 294.0. Softcap alone stays on p1k (no spill on sm_80; 1-5 % ahead of 128 x 32
// on the H100, e.g. non-causal 16k 332.5 vs 330.1, 8k 329.3 vs 314.1).
// fresh_kv_addr (p1k, d = 96 / 128): holding each thread's K / V row pointers across the loop,
// p1k's softcap kernel spilled 24 bytes on sm_90a (three row maxima stored and reloaded per key
// block; its sm_80 code, the one an A100 runs, did not spill). Re-derived per copy they free four
// registers, and no compact kernel spills on either arch (240-254 registers). Same binary on the
// H100 (ninth session, tile_sweep, medians of 4 rounds from two processes, 1k / 2k / 4k / 8k /
// 16k): softcap non-causal 305.5 / 322.9 / 330.8 / 340.8 / 336.5 vs 291.5 / 307.0 / 317.6 / 329.1
// / 315.9 without (+3.6 to +6.5 %: the spill is gone), causal +1.5 to +5.3 %; plain -1.7 to
// +4.9 %, within the run's spread. The policy tiles keep their pointers: with fresh_kv_addr the
// d = 128 policy spilled 8 bytes.
// Every other head dim's policy is its own compact tile: d <= 64 fits twice anywhere, and d =
// 192 / 256 (72 / 107 KB) were chosen for the H100 and run one CTA per SM on an A100, as
// FlashAttention-2's d = 256 tile does there.
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
// at 255 with none to spare: at 128 x 64 the dropout kernel spilled 288 bytes even with one
// Philox call in flight (dropout_sm80.cuh), and 260 with the plain kernel's layouts. At 128 x 32
// (S takes 32 registers instead of 64, FlashAttention-2's choice for dropout too) the plain
// kernel's layouts (Q padded, K / V swizzled, double-buffered, streamed S gemm) fit in 250-254
// registers without spill, and ran 2-4 % faster than 128 x 32 p1k (H200, p = 0.1, 3 rounds:
// non-causal 154.5 / 158.9 / 161.1 / 163.6 / 166.0 vs 149.1 / 151.3 / 157.2 / 160.2 / 162.1).
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
// sm_80 code spilled: split-capable ALiBi 4 B, paged 16-24 B, dropout + ALiBi 44 B (seventh
// session's CI log). 64 x 32 fits twice in the same shared memory, so it keeps the same K / V bytes
// in flight per SM (2 CTAs x 16 KB instead of 1 x 32 KB: what bounds decode), and with S at 16
// fp32 per thread instead of 32 it spills in none of these kernels on either arch. Chosen by that
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

// Split-KV count for one forward call. `requested`: params.num_splits (1 = no split, 0 =
// heuristic, 2..128 explicit). ctas = b * h * query blocks, n_blocks = key blocks of the longest
// sequence, cta_slots = SMs * resident CTAs per SM.
//  - Never more splits than key blocks, and no trailing all-empty splits: s splits of
//    ceil(n_blocks / s) blocks each cover n_blocks in ceil(n_blocks / ceil(n_blocks / s)).
//  - Heuristic: no split once the grid already fills 80% of the slots (splitting only adds the
//    partial writes and the combine). Otherwise the split count whose last wave is fullest:
//    efficiency(s) = waves / ceil(waves) with waves = ctas * s / cta_slots, taking the smallest s
//    within 85% of the best efficiency (fewer splits = less partial traffic), counting only
//    split counts that change the chunk length (others run the same blocks per CTA). The
//    FlashAttention-2 heuristic, which is what serving decode shapes (b * h_k small, s_k long)
//    need: e.g. b = 8, h = 32, 1 query block: 256 CTAs on 264 slots -> no split; b = 1,
//    h = 8: 8 CTAs -> splits that fill the GPU.
constexpr int choose_num_splits_sm80(int requested, int64_t ctas, int n_blocks, int cta_slots) {
  constexpr int kMaxSplits = 128;
  if (requested == 1 || n_blocks <= 1) return 1;
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  auto covering = [&](int s) { return int(ceil_div(n_blocks, ceil_div(n_blocks, s))); };
  if (requested > 1) return covering(requested < n_blocks ? requested : n_blocks);
  if (cta_slots <= 0 || ctas <= 0 || double(ctas) >= 0.8 * cta_slots) return 1;
  int max_splits = kMaxSplits < n_blocks ? kMaxSplits : n_blocks;
  max_splits = max_splits < cta_slots ? max_splits : cta_slots;
  auto efficiency = [&](int s) {
    const double waves = double(ctas) * s / cta_slots;
    const double full = double(int64_t(waves) + (double(int64_t(waves)) < waves ? 1 : 0));
    return waves / full;
  };
  auto eligible = [&](int s) { return s == 1 || ceil_div(n_blocks, s) != ceil_div(n_blocks, s - 1); };
  double best = 0;
  for (int s = 1; s <= max_splits; ++s)
    if (eligible(s) && efficiency(s) > best) best = efficiency(s);
  for (int s = 1; s <= max_splits; ++s)
    if (eligible(s) && efficiency(s) >= 0.85 * best) return covering(s);
  return 1;
}

}  // namespace flashattn::sm80
