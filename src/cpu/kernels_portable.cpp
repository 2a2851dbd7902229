// Portable micro-kernels (plain C++; the compiler may auto-vectorize them for the baseline ISA)
// and the run-time choice between them and the AVX2+FMA table. These are the semantics of
// kernels.h written as directly as possible; kernels_avx2.cpp must agree with them up to fp32
// rounding.
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common/numeric.h"
#include "cpu/kernels.h"

namespace flashattn::cpu {

namespace {

void gemm(int m, int n, int k, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
          int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  for (int i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    if (!accumulate) std::memset(ci, 0, sizeof(float) * size_t(n));
    // Row of C as a sum of rows of B weighted by A(i, p): the inner loop is contiguous.
    for (int p = 0; p < k; ++p) {
      const float aip = a[i * a_rs + p * a_cs];
      const float* bp = b + p * ldb;
      for (int j = 0; j < n; ++j) ci[j] += aip * bp[j];
    }
  }
}

void col_scale_max(float* s, int64_t lds, int rows, int cols, float scale, float* col_max) {
  for (int r = 0; r < rows; ++r) {
    float* sr = s + r * lds;
    for (int c = 0; c < cols; ++c) {
      sr[c] *= scale;
      col_max[c] = std::fmax(col_max[c], sr[c]);
    }
  }
}

void col_exp_sum(float* s, int64_t lds, int rows, int cols, const float* col_ref,
                 float* col_sum) {
  for (int r = 0; r < rows; ++r) {
    float* sr = s + r * lds;
    for (int c = 0; c < cols; ++c) {
      sr[c] = std::exp(sr[c] - col_ref[c]);
      col_sum[c] += sr[c];
    }
  }
}

void load_row(const void* src, DType t, int n, float* dst) {
  if (t == DType::kFloat32) {
    std::memcpy(dst, src, sizeof(float) * size_t(n));
    return;
  }
  for (int i = 0; i < n; ++i) dst[i] = load_as_float(src, t, i);
}

void scale_row(float* x, int n, float a) {
  for (int i = 0; i < n; ++i) x[i] *= a;
}

const Kernels kPortable = {"portable", gemm, col_scale_max, col_exp_sum, load_row, scale_row};

bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

}  // namespace

const Kernels& portable_kernels() { return kPortable; }

const Kernels& active_kernels() {
  const char* want = std::getenv("FLASHATTN_CPU_ISA");
  if (want != nullptr && std::strcmp(want, "portable") == 0) return kPortable;
  static const bool has_avx2 = cpu_has_avx2_fma();
  const Kernels* fast = avx2_kernels();
  return (has_avx2 && fast != nullptr) ? *fast : kPortable;
}

}  // namespace flashattn::cpu
