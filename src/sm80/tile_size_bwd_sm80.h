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
// Shared memory (16-bit): Q and dO (kBlockM x d each), K and V (kBlockN x d each), P and dS
// (kBlockM x kBlockN each): 80 KB at d = 64, 128 KB at d = 128, 144 KB at d = 256.
#pragma once

namespace flashattn::sm80 {

struct TileSizeBwdSm80 {
  int block_m;        // query rows per inner-loop step
  int block_n;        // keys per CTA
  int n_warps;
  int atom_m_sdp;     // warps along M in the S / dP gemms (the rest go along N)
  int atom_n_dkv;     // warps along N in the dK / dV gemms (the rest go along d)
  int atom_m_dq;      // warps along M in the dQ gemm (the rest go along d)
};

constexpr TileSizeBwdSm80 tile_size_bwd_sm80(int head_dim) {
  if (head_dim <= 128) return {64, 128, 8, 2, 4, 4};
  return {64, 64, 8, 2, 4, 4};
}

}  // namespace flashattn::sm80
