// The CPU backend's building blocks on their own: each micro-kernel of both tables (AVX2+FMA
// when this CPU has it, and portable) against a double-precision loop, odd sizes and strides
// included; the ISA choice and its FLASHATTN_CPU_ISA override; FLASHATTN_NUM_THREADS; and the
// thread pool (every item exactly once, inline fallback when called from inside an item).
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <vector>

#include "common/numeric.h"
#include "cpu/backend.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"
#include "flashattn/flashattn.h"

namespace flashattn {
namespace {

using cpu::Kernels;

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<const Kernels*> tables() {
  std::vector<const Kernels*> t = {&cpu::portable_kernels()};
  if (cpu::avx2_kernels() != nullptr && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma"))
    t.push_back(cpu::avx2_kernels());
  return t;
}

uint64_t fresh_seed() {
  static std::mt19937_64 rng(std::random_device{}());
  return rng();
}

TEST(CpuKernels, GemmMatchesDoubleLoopWithStridedA) {
  std::mt19937_64 rng(fresh_seed());
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  struct Shape {
    int m, n, k;
  };
  for (const Kernels* kt : tables()) {
    SCOPED_TRACE(kt->name);
    for (const Shape& s : {Shape{1, 8, 1}, Shape{7, 24, 13}, Shape{96, 128, 96}, Shape{13, 8, 0},
                           Shape{6, 16, 5}, Shape{11, 40, 257}}) {
      for (bool transposed_a : {false, true})
        for (bool accumulate : {false, true}) {
          // A stored [m][k + 3] or transposed [k][m + 5]; B [k][n + 8]; C [m][n + 8].
          const int64_t a_rs = transposed_a ? 1 : s.k + 3, a_cs = transposed_a ? s.m + 5 : 1;
          const int64_t ldb = s.n + 8, ldc = s.n + 8;
          std::vector<float> a(static_cast<size_t>((s.m + 5) * (s.k + 3) + 8)),
              b(static_cast<size_t>(s.k * ldb + 1)), c(static_cast<size_t>(s.m * ldc));
          for (float& x : a) x = u(rng);
          for (float& x : b) x = u(rng);
          for (float& x : c) x = u(rng);
          const std::vector<float> c0 = c;
          kt->gemm(s.m, s.n, s.k, a.data(), a_rs, a_cs, b.data(), ldb, c.data(), ldc, accumulate);
          for (int i = 0; i < s.m; ++i)
            for (int j = 0; j < ldc; ++j) {
              const size_t e = size_t(i * ldc + j);
              if (j >= s.n) {
                ASSERT_EQ(c[e], c0[e]) << "wrote past n";
                continue;
              }
              double want = accumulate ? c0[e] : 0.0;
              for (int p = 0; p < s.k; ++p) want += double(a[size_t(i * a_rs + p * a_cs)]) * b[size_t(p * ldb + j)];
              ASSERT_NEAR(c[e], want, 1e-5 * (1 + std::sqrt(double(s.k))))
                  << s.m << "x" << s.n << "x" << s.k << " at " << i << "," << j;
            }
        }
    }
  }
}

TEST(CpuKernels, ColumnExpAndSumAccurateAndExactZeroForMinusInf) {
  for (const Kernels* kt : tables()) {
    SCOPED_TRACE(kt->name);
    for (int cols : {1, 7, 8, 13, 32}) {
      const int rows = 9, lds = cols + 3;
      std::vector<float> s(static_cast<size_t>(rows * lds)), ref(static_cast<size_t>(cols)),
          sum(static_cast<size_t>(cols), 0.5f);
      std::mt19937_64 rng(fresh_seed());
      std::uniform_real_distribution<float> u(-95.f, 2.f), r(-3.f, 3.f);
      for (float& x : s) x = u(rng);
      for (float& x : ref) x = r(rng);
      s[0] = -kInf;  // a masked score
      const std::vector<float> s0 = s;
      kt->col_exp_sum(s.data(), lds, rows, cols, ref.data(), sum.data());
      for (int c = 0; c < cols; ++c) {
        double want_sum = 0.5;
        for (int i = 0; i < rows; ++i) {
          const size_t e = size_t(i * lds + c);
          // The difference is taken in fp32 (the contract); exp itself must be accurate.
          const float x = s0[e] - ref[size_t(c)];
          const double want = std::exp(double(x));
          want_sum += want;
          // Relative 4 ulp in the normal range; below FLT_MIN either the value or 0.
          ASSERT_NEAR(s[e], want, 4.8e-7 * want + 1.2e-38) << "x=" << x;
        }
        ASSERT_NEAR(sum[size_t(c)], want_sum, 1e-6 * want_sum);
        for (int i = 0; i < rows; ++i)
          for (int c2 = cols; c2 < lds; ++c2)
            ASSERT_EQ(s[size_t(i * lds + c2)], s0[size_t(i * lds + c2)]) << "wrote past cols";
      }
      EXPECT_EQ(s[0], 0.f);
    }
  }
}

TEST(CpuKernels, ColumnScaleMax) {
  for (const Kernels* kt : tables()) {
    SCOPED_TRACE(kt->name);
    for (int cols : {3, 8, 21}) {
      const int rows = 5, lds = cols + 1;
      std::vector<float> s(static_cast<size_t>(rows * lds)), mx(static_cast<size_t>(cols), -kInf);
      std::mt19937_64 rng(fresh_seed());
      std::uniform_real_distribution<float> u(-4.f, 4.f);
      for (float& x : s) x = u(rng);
      mx[0] = 100.f;  // an earlier, larger running max survives
      const std::vector<float> s0 = s;
      kt->col_scale_max(s.data(), lds, rows, cols, -0.5f, mx.data());
      for (int c = 0; c < cols; ++c) {
        float want = c == 0 ? 100.f : -kInf;
        for (int i = 0; i < rows; ++i) {
          const size_t e = size_t(i * lds + c);
          ASSERT_EQ(s[e], s0[e] * -0.5f);
          want = std::max(want, s[e]);
        }
        ASSERT_EQ(mx[size_t(c)], want);
      }
    }
  }
}

TEST(CpuKernels, LoadRowConvertsExactlyWithTails) {
  for (const Kernels* kt : tables()) {
    SCOPED_TRACE(kt->name);
    for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
      for (int n : {1, 5, 8, 19, 256}) {
        std::mt19937_64 rng(fresh_seed());
        std::vector<uint8_t> src(size_t(n) * dtype_size(t));
        for (auto& x : src) x = uint8_t(rng());
        // Keep to finite values: replace NaN/inf patterns (all fine to convert, but compare
        // by value below).
        std::vector<float> got(size_t(n) + 1, 123.f);
        kt->load_row(src.data(), t, n, got.data());
        for (int i = 0; i < n; ++i) {
          const float want = load_as_float(src.data(), t, i);
          if (std::isnan(want))
            ASSERT_TRUE(std::isnan(got[size_t(i)]));
          else
            ASSERT_EQ(got[size_t(i)], want) << dtype_name(t) << " n=" << n << " i=" << i;
        }
        ASSERT_EQ(got[size_t(n)], 123.f) << "wrote past n";
      }
  }
}

TEST(CpuKernels, IsaChoiceAndOverride) {
  unsetenv("FLASHATTN_CPU_ISA");
  const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                   cpu::avx2_kernels() != nullptr;
  EXPECT_STREQ(cpu::isa(), has ? "avx2-fma" : "portable");
  EXPECT_EQ(build_info().cpu_isa, cpu::isa());
  setenv("FLASHATTN_CPU_ISA", "portable", 1);
  EXPECT_STREQ(cpu::isa(), "portable");
  EXPECT_EQ(build_info().cpu_isa, "portable");
  unsetenv("FLASHATTN_CPU_ISA");
}

TEST(CpuKernels, NumThreadsHonoursEnvironment) {
  unsetenv("FLASHATTN_NUM_THREADS");
  EXPECT_GE(cpu::num_threads(), 1);
  setenv("FLASHATTN_NUM_THREADS", "3", 1);
  EXPECT_EQ(cpu::num_threads(), 3);
  setenv("FLASHATTN_NUM_THREADS", "garbage", 1);
  EXPECT_GE(cpu::num_threads(), 1);
  unsetenv("FLASHATTN_NUM_THREADS");
}

TEST(CpuThreadPool, EveryItemOnceAndNestedCallsRunInline) {
  cpu::ThreadPool& pool = cpu::ThreadPool::instance();
  for (int threads : {1, 2, 3, 8}) {
    for (int64_t n : {int64_t(0), int64_t(1), int64_t(5), int64_t(1000)}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::atomic<int> bad_worker{0};
      pool.parallel_for(n, threads, [&](int64_t i, int worker) {
        if (worker < 0 || worker >= threads) ++bad_worker;
        ++hits[size_t(i)];
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), 1) << threads << " " << n;
      EXPECT_EQ(bad_worker.load(), 0);
    }
  }
  // A parallel_for from inside an item must not deadlock: it runs inline.
  std::atomic<int> inner{0};
  pool.parallel_for(4, 2, [&](int64_t, int) {
    pool.parallel_for(10, 2, [&](int64_t, int worker) {
      EXPECT_EQ(worker, 0);
      ++inner;
    });
  });
  EXPECT_EQ(inner.load(), 40);
}

}  // namespace
}  // namespace flashattn
