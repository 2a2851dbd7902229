// Tile policy of the Hopper (sm_90a) forward kernels: one entry per head-dim kernel, each number
// with the reason it has. Host and device both read it (constexpr, no CUDA types).
//
// Budgets every entry respects (H100 / H200, compute capability 9.0):
//  - shared memory: 227 KB per CTA; a CTA holds Q (block_m x d), `stages` K blocks and `stages`
//    V blocks (block_n x d each), 2 bytes per element, plus under 1 KB of barriers; O is staged
//    in the V buffers (which must hold block_m x d: block_n * stages >= block_m);
//  - registers: 64 K per SM, one CTA per SM; setmaxnreg splits them between the producer
//    warpgroup and the consumer warpgroups: 24 + 2 x 240 (x 128 threads) = 64 512 and
//    32 + 3 x 160 = 65 536. A consumer thread holds O (64 x d / 128 fp32), S (64 x block_n / 128
//    fp32) and P (S in 16 bits) at once while the softmax of S overlaps the P V GEMM.
#pragma once

namespace flashattn::sm90 {

struct FwdTileSm90 {
  int block_m;         // query rows per CTA: 64 per consumer warpgroup (the wgmma M)
  int block_n;         // keys per K / V block
  int stages;          // depth of the K and V pipelines (shared-memory buffers of each)
  int mma_registers;   // setmaxnreg of a consumer thread
  int load_registers;  // setmaxnreg of a producer thread
  bool pingpong;       // consumer warpgroups take turns issuing their GEMMs (named barriers)
  bool dropout;        // this head dim has dropout kernels (else dropout runs on the SM80 path)
  constexpr int mma_warpgroups() const { return block_m / 64; }
  constexpr int threads() const { return 128 * (mma_warpgroups() + 1); }
};

constexpr FwdTileSm90 tile_size_fwd_sm90(int head_dim) {
  // d <= 64: 3 consumer warpgroups of 64 rows (192 rows) at 160 registers: O is 32 fp32 and S
  // 64 per thread, so 160 is plenty, and a third warpgroup gives the tensor cores a third
  // instruction stream while two do their softmax (the exp2 work per FLOP doubles as d halves).
  // 128 keys: S of 64 x 128 per warpgroup keeps the two GEMMs of a step large; smem 24 + 2 x 16
  // + 2 x 16 = 88 KB.
  // No dropout: the Philox state on top of O, S and P spills 150-210 bytes at 160 registers.
  if (head_dim <= 64) return {192, 128, 2, 160, 32, true, false};
  // d = 96: two warpgroups, 128 x 128: RS P V with 192-row tiles does not fit 160 registers
  // (O 48 + S 64 + P 32 + descriptors); smem 24 + 48 + 48 = 120 KB.
  if (head_dim <= 96) return {128, 128, 2, 240, 24, true, true};
  // d = 128: 128 x 128, the square tile FlashAttention-3/4 settle on for causal (and FA4 for all):
  // O 64 + S 64 + P 32 fp32-equivalents live at the overlap; smem 32 + 64 + 64 = 160 KB.
  // Dropout fits: the d = 128 dropout kernels compile without spills.
  if (head_dim <= 128) return {128, 128, 2, 240, 24, true, true};
  // d = 192: 112 keys are what fits: 48 + 2 x 42 + 2 x 42 = 216 KB. Ping-pong off: at d > 128
  // the P V GEMM alone outlasts a softmax, so turn-taking only serializes the two warpgroups.
  // No dropout kernels yet: their registers at O = 96 per thread are not measured.
  if (head_dim <= 192) return {128, 112, 2, 240, 24, false, false};
  // d = 256: 80 keys fit: 64 + 2 x 40 + 2 x 40 = 224 KB; O is 128 fp32 per thread.
  // No dropout: with the Philox state the kernels spill 144-164 bytes (28-36 without).
  return {128, 80, 2, 240, 24, false, false};
}

// FP8 (e4m3) inputs, bf16 / fp16 output (docs/fp8.md). Every 8-bit wgmma takes 32 keys per K
// step, so block_n is a multiple of 32; 128 keys also make a per-block k / v descale of 128 rows
// one factor per key block. Shared memory is half the 16-bit kernel's for the same tile, and O
// (16-bit) is staged in the V buffers: 2 warpgroups x 64 x d x 2 bytes = 2 stages x 128 x d x 1.
// Two consumer warpgroups at every head dim (a third would need 3 x 128 d bytes of staging).
// d <= 64 and 128: ping-pong, as the 16-bit kernels (the softmax is as long as at 16 bits, the
// GEMMs half as long, so the turn-taking matters more). d = 256: no ping-pong, as at 16 bits.
constexpr FwdTileSm90 tile_size_fwd_sm90_fp8(int head_dim) {
  if (head_dim <= 128) return {128, 128, 2, 240, 24, true, false};
  return {128, 128, 2, 240, 24, false, false};
}

// The FP8 head-dim kernel that serves head dim d (d % 16 == 0: TMA rows of whole 16 bytes): 64,
// 128, 256.
constexpr int round_head_dim_sm90_fp8(int d) { return d <= 64 ? 64 : d <= 128 ? 128 : 256; }

// The head-dim kernel that serves head dim d (d % 8 == 0): 64, 96, 128, 192, 256.
constexpr int round_head_dim_sm90(int d) {
  return d <= 64 ? 64 : d <= 96 ? 96 : d <= 128 ? 128 : d <= 192 ? 192 : 256;
}

constexpr int fwd_smem_bytes_sm90(FwdTileSm90 t, int head_dim) {
  return 2 * (t.block_m * head_dim + 2 * t.stages * t.block_n * head_dim);
}

static_assert(fwd_smem_bytes_sm90(tile_size_fwd_sm90(64), 64) == 88 * 1024);
static_assert(fwd_smem_bytes_sm90(tile_size_fwd_sm90(128), 128) == 160 * 1024);
static_assert(fwd_smem_bytes_sm90(tile_size_fwd_sm90(192), 192) == 216 * 1024);
static_assert(fwd_smem_bytes_sm90(tile_size_fwd_sm90(256), 256) == 224 * 1024);
static_assert(fwd_smem_bytes_sm90(tile_size_fwd_sm90(256), 256) + 1024 <= 227 * 1024,
              "the d = 256 tile plus barriers fits one CTA's shared memory");
constexpr int fwd_smem_bytes_sm90_fp8(FwdTileSm90 t, int head_dim) {
  return t.block_m * head_dim + 2 * t.stages * t.block_n * head_dim;
}
static_assert(fwd_smem_bytes_sm90_fp8(tile_size_fwd_sm90_fp8(256), 256) + 1024 <= 227 * 1024);

static_assert(24 * 128 + 2 * 240 * 128 <= 65536 && 32 * 128 + 3 * 160 * 128 <= 65536,
              "setmaxnreg budgets fit the register file");

}  // namespace flashattn::sm90
