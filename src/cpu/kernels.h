// The CPU backend's micro-kernels: the few loops where the FlashAttention-2 algorithm spends its
// time, behind one table of function pointers so the backend is written once and the ISA is
// picked at run time.
//
//   gemm           C (+)= A B, fp32. Every block product of the forward and backward is one call:
//                    S^T = K Q^T      (A = K rows,   B = Q^T panel)
//                    O  += P V        (A = P, read through S^T's strides, B = V rows)
//                  and in the backward dP^T = V dO^T, dV += P^T dO, dK += dS^T Q, dQ += dS K.
//                  A is read through (row, column) strides, so a transposed operand costs nothing;
//                  B and C are row-major with a width that is a multiple of 8 (one AVX register).
//   col_scale_max  scores are kept TRANSPOSED (keys x queries, see backend_fwd.cpp), so the
//   col_exp_sum    softmax row of a query is a column: these run the online-softmax steps on
//                  columns, one vector of queries at a time.
//   load_row       fp32/fp16/bf16 -> fp32 conversion of one head vector.
//   store_row      fp32 -> fp32/fp16/bf16, nearest even (outputs and gradients).
//   scale_row      x *= a (rescaling O when a row's running max grows).
//   gemm_bf16      the same block products on bf16 operands with fp32 accumulation (AVX-512 BF16
//   pack_pairs     `vdpbf16ps`, two multiply-adds per fp32 lane), and the conversions that lay
//   pack_rows      the operands out for it (col_exp_sum_pairs: the softmax step that writes P in
//                  that layout directly). Only bf16 calls use them: their Q, K, V, dO are
//                  exact in bf16, and P, dS are rounded to bf16 before their products, as the
//                  GPU kernels do.
//
// Implementations: kernels_portable.cpp (plain C++, any CPU), kernels_avx2.cpp (AVX2+FMA),
// kernels_avx512.cpp (AVX-512 F/BW/VL/DQ), kernels_avx512_bf16.cpp (the AVX-512 table plus
// the bf16 products) and kernels_amx.cpp (that table with gemm_bf16 on AMX tiles), each compiled
// with its own -m flags and only called after a run-time CPU check. This header must stay free of inline function definitions: the ISA files include it,
// and an inline function compiled there with wider instructions could be the copy the linker
// keeps for everyone.
#pragma once

#include <cstdint>

#include "flashattn/params.h"

namespace flashattn::cpu {

struct Kernels {
  const char* name;  // "portable", "avx2", "avx512", "avx512-bf16", "amx-bf16" (FLASHATTN_CPU_ISA
                     // values), or "amx-emulated" (tests only: see amx_emulated_kernels)

  // Tile sizes the backend uses with this table (backend_common.h: reasons per ISA): query rows
  // ((row, head) pairs) per work item, and keys per block.
  int block_m;
  int block_n;

  // C[m x n] = (accumulate ? C : 0) + A[m x k] B[k x n].
  // A(i, p) = a[i * a_rs + p * a_cs]; B(p, j) = b[p * ldb + j]; C(i, j) = c[i * ldc + j].
  // Requires n % 8 == 0 (callers pad B and C with zero columns).
  void (*gemm)(int m, int n, int k, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
               int64_t ldb, float* c, int64_t ldc, bool accumulate);

  // For each column c < cols of s (rows x cols, leading dimension lds):
  //   s[r][c] *= scale for every row r, then col_max[c] = max(col_max[c], max_r s[r][c]).
  void (*col_scale_max)(float* s, int64_t lds, int rows, int cols, float scale, float* col_max);

  // For each column c: s[r][c] = exp(s[r][c] - col_ref[c]) and col_sum[c] += sum_r s[r][c].
  // exp(-inf) is exactly 0 (masked scores vanish); col_ref may be +inf (the column becomes 0),
  // never -inf or NaN.
  void (*col_exp_sum)(float* s, int64_t lds, int rows, int cols, const float* col_ref,
                      float* col_sum);

  // dst[0..n) = src[0..n) converted from dtype t to fp32 (exact for every dtype).
  void (*load_row)(const void* src, DType t, int n, float* dst);

  // dst[0..n) = src[0..n) rounded to dtype t, bit for bit as float_to_fp16 / float_to_bf16 of
  // common/numeric.h (nearest even, subnormals kept, NaN to the canonical quiet NaN).
  void (*store_row)(const float* src, DType t, int n, void* dst);

  // x[0..n) *= a.
  void (*scale_row)(float* x, int n, float a);

  // The bf16 products; nullptr in tables without them (then bf16 calls use the fp32 gemm).
  // Operands are 32-bit words holding two bf16 values, the lower half first in the reduction:
  // C[m x n] = (accumulate ? C : 0) + sum_{q < kw} A(i, q) . B(q, j), with
  // A(i, q) = a[i * a_rs + q * a_cs], B(q, j) = b[q * ldb + j], and w . w' = lo lo' + hi hi'
  // (fp32 products of bf16 values are exact; bf16 subnormals count as zero). Any n.
  void (*gemm_bf16)(int m, int n, int kw, const uint32_t* a, int64_t a_rs, int64_t a_cs,
                    const uint32_t* b, int64_t ldb, float* c, int64_t ldc, bool accumulate);

  // Row pairs of an fp32 matrix into words: dst[q * ldd + c] = (bf16(src[2q][c]),
  // bf16(src[2q + 1][c])) for q < ceil(rows / 2), c < cols; the row past an odd `rows` reads
  // as 0. Rounding is to nearest even.
  void (*pack_pairs)(const float* src, int64_t lds, int rows, int cols, uint32_t* dst,
                     int64_t ldd);

  // Rows of an fp32 matrix into words: dst[r * ldd + q] = (bf16(src[r][2q]), bf16(src[r][2q + 1]))
  // for q < ceil(cols / 2); the column past an odd `cols` reads as 0. Nearest even.
  void (*pack_rows)(const float* src, int64_t lds, int rows, int cols, uint32_t* dst,
                    int64_t ldd);

  // col_exp_sum, with the results stored as pack_pairs stores them (dst[q * ldd + c] = the bf16
  // pair of rows 2q, 2q + 1 of column c) instead of back into s, which is left unchanged. col_sum
  // adds the fp32 values, as col_exp_sum does.
  void (*col_exp_sum_pairs)(const float* s, int64_t lds, int rows, int cols, const float* col_ref,
                            float* col_sum, uint32_t* dst, int64_t ldd);
};

const Kernels& portable_kernels();
// The tables of the wider ISAs, or nullptr when this build has none (compiler without the
// flags, non-x86). Whether the running CPU has the instructions is a separate question:
// cpu_supports() answers it.
const Kernels* avx2_kernels();
const Kernels* avx512_kernels();
const Kernels* avx512_bf16_kernels();
const Kernels* amx_bf16_kernels();
// Whether this CPU has AMX-TILE and AMX-BF16, the OS enables the tile state, and (Linux) the
// process was granted it; asks for the grant on the first call. Call only where
// cpu_supports(avx512_bf16_kernels()) holds (kernels_amx.cpp is compiled with AVX-512 flags).
bool amx_bf16_runs();
// The AVX-512 BF16 table with the AMX table's gemm_bf16 run on a software tile unit, so tests
// cover the AMX loops on CPUs without AMX (slow). Never chosen by default: only
// FLASHATTN_CPU_ISA=amx-emulated selects it, on a CPU that runs the AVX-512 BF16 table.
const Kernels* amx_emulated_kernels();
// Whether `t` is compiled in and runs on this CPU (and its OS saves the registers it uses).
bool cpu_supports(const Kernels* t);
// The table to use now: the widest one that is compiled in and runs on this CPU, amx-bf16 aside
// (not yet run on AMX hardware: only when named), unless the environment variable
// FLASHATTN_CPU_ISA names a table ("portable", "avx2", "avx512", "avx512-bf16", "amx-bf16", or
// "amx-emulated"); a named table this CPU or build lacks gives the widest available one below
// it. Read on every call so tests can cover every path in one process.
const Kernels& active_kernels();
// Every table that runs here, narrowest first (tests run each).
int available_kernels(const Kernels** out, int max);

}  // namespace flashattn::cpu
