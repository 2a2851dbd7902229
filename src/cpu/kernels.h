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
//                  columns, 8 queries per vector.
//   load_row       fp32/fp16/bf16 -> fp32 conversion of one head vector.
//   scale_row      x *= a (rescaling O when a row's running max grows).
//
// Two implementations: kernels_portable.cpp (plain C++, any CPU) and kernels_avx2.cpp (AVX2+FMA
// intrinsics, compiled with -mavx2 -mfma -mf16c, only called after a run-time CPU check).
// This header must stay free of inline function definitions: kernels_avx2.cpp includes it, and
// an inline function compiled there with AVX2 could be the copy the linker keeps for everyone.
#pragma once

#include <cstdint>

#include "flashattn/params.h"

namespace flashattn::cpu {

struct Kernels {
  const char* name;  // "avx2-fma" or "portable"

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

  // x[0..n) *= a.
  void (*scale_row)(float* x, int n, float a);
};

const Kernels& portable_kernels();
// The AVX2+FMA table, or nullptr when this build has none (non-x86 compiler).
const Kernels* avx2_kernels();
// The table to use now: AVX2+FMA when compiled in and the CPU has AVX2 and FMA, unless the
// environment variable FLASHATTN_CPU_ISA=portable asks for the portable path (read on every
// call so tests can cover both paths in one process).
const Kernels& active_kernels();

}  // namespace flashattn::cpu
