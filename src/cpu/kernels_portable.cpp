// Portable micro-kernels (plain C++; the compiler may auto-vectorize them for the baseline ISA)
// and the run-time choice among them and the AVX2, AVX-512 and AVX-512 BF16 tables. These are the semantics of
// kernels.h written as directly as possible; kernels_avx2.cpp must agree with them up to fp32
// rounding.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

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

void store_row(const float* src, DType t, int n, void* dst) {
  switch (t) {
    case DType::kFloat32: std::memcpy(dst, src, sizeof(float) * size_t(n)); break;
    case DType::kFloat16:
      for (int x = 0; x < n; ++x) static_cast<uint16_t*>(dst)[x] = float_to_fp16(src[x]);
      break;
    default:
      for (int x = 0; x < n; ++x) static_cast<uint16_t*>(dst)[x] = float_to_bf16(src[x]);
      break;
  }
}

void scale_row(float* x, int n, float a) {
  for (int i = 0; i < n; ++i) x[i] *= a;
}

// 96 x 96 as the vector tables: the loops are the same shape, only slower.
const Kernels kPortable = {"portable", 96,        96,        gemm,    col_scale_max, col_exp_sum,
                           load_row,   store_row, scale_row, nullptr, nullptr,       nullptr,
                           nullptr};

// The tables from narrowest to widest, each with the CPU features it needs. __builtin_cpu_supports
// also checks that the OS saves the registers (XCR0), so "avx512f" means zmm state is usable.
struct Entry {
  const Kernels* table;
  bool runs;
};

std::vector<Entry> entries() {
  std::vector<Entry> e = {{&kPortable, true}};
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq");
  const bool bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
  e.push_back({avx2_kernels(), avx2});
  e.push_back({avx512_kernels(), avx512});
  e.push_back({avx512_bf16_kernels(), bf16});
  // amx_bf16_runs() is compiled with AVX-512 flags: asked only where those run.
  const bool amx = bf16 && avx512_bf16_kernels() != nullptr && amx_bf16_kernels() != nullptr &&
                   amx_bf16_runs();
  e.push_back({amx_bf16_kernels(), amx});
#endif
  return e;
}

const std::vector<Entry>& all_entries() {
  static const std::vector<Entry> e = entries();
  return e;
}

}  // namespace

const Kernels& portable_kernels() { return kPortable; }

bool cpu_supports(const Kernels* t) {
  if (t == nullptr) return false;
  for (const Entry& e : all_entries())
    if (e.table == t) return e.runs;
  return false;
}

int available_kernels(const Kernels** out, int max) {
  int n = 0;
  for (const Entry& e : all_entries())
    if (e.table != nullptr && e.runs && n < max) out[n++] = e.table;
  return n;
}

const Kernels& active_kernels() {
  const std::vector<Entry>& all = all_entries();
  // The widest usable table at or below the requested position. By default the widest but
  // amx-bf16: that table has not yet run on AMX hardware (only on the emulated tile unit), so it
  // runs only when FLASHATTN_CPU_ISA names it.
  constexpr size_t kWidestByDefault = 4;  // portable, avx2, avx512, avx512-bf16
  size_t limit = std::min(all.size(), kWidestByDefault);
  if (const char* want = std::getenv("FLASHATTN_CPU_ISA")) {
    if (std::strcmp(want, "amx-emulated") == 0 && cpu_supports(avx512_bf16_kernels()) &&
        amx_emulated_kernels() != nullptr)
      return *amx_emulated_kernels();
    static const char* const kNames[] = {"portable", "avx2", "avx512", "avx512-bf16", "amx-bf16"};
    for (size_t i = 0; i < sizeof(kNames) / sizeof(kNames[0]) && i < all.size(); ++i)
      if (std::strcmp(want, kNames[i]) == 0) limit = i + 1;
  }
  for (size_t i = limit; i-- > 0;)
    if (all[i].table != nullptr && all[i].runs) return *all[i].table;
  return kPortable;
}

}  // namespace flashattn::cpu
