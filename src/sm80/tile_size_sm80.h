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
// The knobs (padded_smem, kv_stages, skip_rescale) are explained in kernel_traits_sm80.cuh and
// mainloop_fwd_sm80.cuh; which wins differs per head dim, as measured below.
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
  bool padded_smem = false;   // padded rows instead of XOR-swizzled ones (kernel_traits_sm80.cuh)
  int kv_stages = 1;          // 2: K and V double-buffered, one barrier per key block
  bool skip_rescale = false;  // skip the O rescale when no row max of the warp moved
  int warps_n = 1;            // 2: pairs of warps share query rows (kernel_traits_sm80.cuh)
  bool q_in_regs = false;     // Q's MMA fragments stay in registers for the whole loop
};

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
  // d = 96, 128: 128 x 64 x 4, padded, single-buffered, skipped rescale (p1k): 372 / 352, and
  // the only knob set without spills at d = 128 (O takes 128 registers, S 64): swizzled
  // layouts spill 96-152 bytes (one address register per XOR pattern), p2k 24 bytes, p1a 92.
  // s2k is 381 / 349 with a 96-byte spill. Fifth session, medians of 3 interleaved rounds in
  // one binary (s2k vs p1k, non-causal 1k / 2k / 4k / 8k / 16k): 343 / 362 / 359 / 379 / 370 vs
  // 332 / 350 / 355 / 366 / 368; causal 250 / 291 / 315 / 333 / 351 vs 256 / 290 / 313 / 325 /
  // 346. Its spill sits in the hot loop (3 LDL + 3 LDL.LU + 3 STL per key block: row maxima and
  // loop invariants); kept p1k, which spills nothing. Same session, K alone double-buffered (V
  // single, two barriers; K[n - 1] issued at the top of block n), tried and removed: swizzled
  // 342 / 356 / 369 / 381 / 386 non-causal, 256 / 292 / 317 / 337 / 346 causal vs p1k 332 /
  // 352 / 364 / 368 / 371 and 258 / 292 / 315 / 332 / 343, but 136 bytes spilled; padded (no
  // spill) 314 / 339 / 357 / 358 / 365 non-causal: slower than p1k. Q in registers (64 of them
  // here) is out of reach. The best found, not taken because it spills: Q padded, K / V swizzled,
  // K alone double-buffered (traits kPaddedQ, kKDoubleBuffer), 346 / 362 / 368 / 373 / 381
  // non-causal and 261 / 297 / 319 / 330 / 348 causal vs p1k's 333 / 349 / 349 / 363 / (noisy)
  // and 257 / 291 / 306 / 329 / 337 in the same run (+1-5 %), with 56 bytes spilled: per key
  // block 6 STL + 6 LDL in the hot loop (three running row maxima and loop invariants). 14 fewer
  // live registers would make it the d = 128 policy. Padding K or V as well to save address
  // registers (K padded 40 bytes, V padded 36) ran in between; issuing K[n - 1] after the S gemm
  // instead of before it spills 40 bytes, and two blocks per trip with each K stage a
  // compile-time offset 152, forcing the step lambda inline 40 (compiled, not timed). 128 x 32 x 4 measured 365 / 335; 8 warps lose
  // (16 rows per warp read the same K/V tile for half the MMA work). smem 68 KB (d = 128).
  // The softcap / ALiBi kernels of this tile spill 24-40 bytes (sm_90a; ALiBi 60 on sm_80): the
  // tanh or the slope term needs registers next to O and S. The spill-free alternative, 128 x 32
  // (S takes 32 fp32), is slower: softcap at s = 16k 305.8 vs 332.6 non-causal, 285.0 vs 302.7
  // causal, 4k causal 262.3 vs 279.2 (tile_sweep_sm80 -DSWEEP_SOFTCAP, H100); always
  // rescaling (p1a, 116 bytes) 303.0 / 293.3. So the score-mod kernels keep this tile.
  if (head_dim <= 128) return {128, 64, 4, true, 1, true};
  // d = 192: 64 x 64 x 4 s1k with each row in one warp (the d = 256 choice before row pairs,
  // below; not timed separately): with row pairs ptxas spills 68 bytes in the plain kernel.
  if (head_dim <= 192) return tile_size_fwd_64x64_rows_sm80();
  // d = 256: 64 x 64, 4 warps as 2 row pairs (warps_n = 2), swizzled, single-buffered,
  // skipped rescale. At 64 rows a CTA of 4 warps with each row in one warp (FlashAttention-2's H100
  // layout) gives each warp 16 rows, so every K and V element a warp reads from shared memory
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
  // and epilogue. 254 registers, no spill (ALiBi: 32 bytes); smem 105 KB.
  return {64, 64, 4, false, 1, true, 2};
}

// Dropout kernels (run_fwd_dropout_sm80). The keep mask is drawn per tile right before P V, and
// the Philox rounds need registers on top of O and S, where the plain d = 128 kernel already sits
// at 255 with none to spare: at 128 x 64 the dropout kernel spilled 288 bytes even with one
// Philox call in flight (dropout_sm80.cuh); at 128 x 32 (S takes 32 registers instead of 64,
// FlashAttention-2's choice for dropout too) it uses 253 registers and spills nothing.
constexpr TileSizeSm80 tile_size_fwd_dropout_sm80(int head_dim) {
  if (head_dim > 64 && head_dim <= 128) return {128, 32, 4, true, 1, true};
  return tile_size_fwd_sm80(head_dim);
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

// The head-dim kernels that exist: a request with head dim d runs the smallest kernel >= d with
// the columns d..kHeadDim-1 predicated off.
constexpr int kSm80HeadDims[] = {32, 64, 96, 128, 192, 256};

constexpr int round_head_dim_sm80(int d) {
  for (int hd : kSm80HeadDims)
    if (d <= hd) return hd;
  return 0;
}

// CTAs of a forward kernel resident per SM (its __launch_bounds__ minimum): 2 for 4-warp CTAs.
constexpr int fwd_ctas_per_sm_sm80(const TileSizeSm80& tile) { return tile.n_warps == 4 ? 2 : 1; }

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
