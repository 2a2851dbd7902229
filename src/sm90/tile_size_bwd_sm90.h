// Tile policy of the Hopper (sm_90a) backward kernels: one entry per head-dim kernel, each number
// with the reason it has. Host and device both read it (constexpr, no CUDA types).
//
// One CTA owns a key block of block_n keys (K, V in shared memory, dK, dV in registers) and walks
// the query blocks of block_m rows that see it (kernel_bwd_sm90.cuh). Budgets:
//  - registers: one CTA per SM; setmaxnreg gives the producer warpgroup 24 and each of the two
//    consumer warpgroups 240 per thread (24 x 128 + 2 x 240 x 128 = 64 512 of 65 536). A
//    consumer thread holds dK and dV (2 x 64 keys x d / 128 fp32), S^T and dP^T
//    (2 x 64 keys x block_m / 128 fp32), and after them the dQ partial (block_m x d / 256 fp32);
//  - shared memory (227 KB): Q and dO (stages x block_m x d each), K and V (block_n x d each),
//    dS (2 x block_m x block_n), 16 bits per element, plus the LSE / D rows of each Q / dO stage.
#pragma once

namespace flashattn::sm90 {

struct BwdTileSm90 {
  int block_m;         // query rows per step of the main loop
  int block_n;         // keys per CTA: 64 per consumer warpgroup (the wgmma M of S^T = K Q^T)
  int stages;          // depth of the Q and dO pipelines
  int mma_registers;   // setmaxnreg of a consumer thread
  int load_registers;  // setmaxnreg of a producer thread
  constexpr int mma_warpgroups() const { return block_n / 64; }
  constexpr int threads() const { return 128 * (mma_warpgroups() + 1); }
};

constexpr BwdTileSm90 tile_size_bwd_sm90(int head_dim) {
  // d = 64: 128 x 128. The S^T / dP^T GEMMs have k = d = 64 only, so a longer query block
  // (N = 128 of the wgmma) keeps their tensor-core work per shared-memory byte up;
  // FlashAttention-3 uses the same tile. Registers: S^T + dP^T 128 fp32, dK + dV 64,
  // dQ 32 -> fits 240. Shared memory: Q, dO 2 x 2 x 16 KB, K, V 2 x 16 KB, dS 2 x 32 KB = 160 KB.
  if (head_dim <= 64) return {128, 128, 2, 240, 24};
  // d = 128: 64 x 128. dK + dV are already 128 fp32 per thread; S^T + dP^T at 64 query rows add
  // 64 and dQ 32: a 128-row block would not fit 240 registers. FlashAttention-3 uses 64 x 128 for
  // causal masks (80 x 128 otherwise, which needs the dQ GEMM transposed). Shared memory:
  // Q, dO 2 x 2 x 16 KB, K, V 2 x 32 KB, dS 2 x 16 KB = 160 KB.
  return {64, 128, 2, 240, 24};
}

// The Hopper backward kernel that serves head dim d (d % 8 == 0), or 0 where there is none:
// columns past d are zero-filled by TMA and never stored.
constexpr int round_head_dim_bwd_sm90(int d) { return d <= 64 ? 64 : d <= 128 ? 128 : 0; }

constexpr int bwd_smem_bytes_sm90(BwdTileSm90 t, int head_dim) {
  return 2 * (2 * t.stages * t.block_m * head_dim + 2 * t.block_n * head_dim +
              2 * t.block_m * t.block_n) +
         2 * t.stages * t.block_m * 4;
}

static_assert(bwd_smem_bytes_sm90(tile_size_bwd_sm90(64), 64) + 1024 <= 227 * 1024);
static_assert(bwd_smem_bytes_sm90(tile_size_bwd_sm90(128), 128) + 1024 <= 227 * 1024);
static_assert(24 * 128 + 2 * 240 * 128 <= 65536, "setmaxnreg budgets fit the register file");

}  // namespace flashattn::sm90
