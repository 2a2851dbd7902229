// The CPU backend's building blocks on their own: each micro-kernel of every table that runs on
// this CPU (portable, AVX2, AVX-512, AVX-512 BF16) against a double-precision loop, odd sizes
// and strides included; the bf16 products and their operand packing against a scalar statement
// of the contract; the ISA choice and its FLASHATTN_CPU_ISA override; FLASHATTN_NUM_THREADS; and
// the thread pool (every item exactly once, inline fallback when called from inside an item).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
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
  const Kernels* t[8];
  const int n = cpu::available_kernels(t, 8);
  return std::vector<const Kernels*>(t, t + n);
}

// The tables with bf16 products (AVX-512 BF16 and AMX on a CPU that has them), and the AMX
// loops on the emulated tile unit wherever AVX-512 BF16 runs.
std::vector<const Kernels*> bf16_tables() {
  std::vector<const Kernels*> t;
  for (const Kernels* k : tables())
    if (k->gemm_bf16 != nullptr) t.push_back(k);
  if (cpu::cpu_supports(cpu::avx512_bf16_kernels()) && cpu::amx_emulated_kernels() != nullptr)
    t.push_back(cpu::amx_emulated_kernels());
  return t;
}

uint32_t word(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }
float lo_of(uint32_t w) { return bf16_to_float(uint16_t(w & 0xffff)); }
float hi_of(uint32_t w) { return bf16_to_float(uint16_t(w >> 16)); }

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

// store_row is bit for bit float_to_fp16 / float_to_bf16 on any fp32 pattern: ties, subnormals
// of both sizes, overflow, infinities, NaNs (canonical quiet NaN), with tails.
// col_exp_sum_pairs is col_exp_sum followed by pack_pairs, bit for bit, and leaves s alone.
TEST(CpuKernels, ExpSumPairsIsExpSumThenPackPairs) {
  for (const Kernels* kt : bf16_tables()) {
    SCOPED_TRACE(kt->name);
    ASSERT_NE(kt->col_exp_sum_pairs, nullptr);
    for (int rows : {1, 2, 7, 96})
      for (int cols : {1, 13, 16, 40, 96}) {
        const int64_t lds = cols + 5, ldd = cols + 3;
        std::mt19937_64 rng(fresh_seed());
        std::uniform_real_distribution<float> u(-90.f, 3.f), r(-2.f, 2.f);
        std::vector<float> s(static_cast<size_t>(rows * lds)), ref(static_cast<size_t>(cols)),
            sum(static_cast<size_t>(cols), 0.25f);
        for (float& x : s) x = u(rng);
        for (float& x : ref) x = r(rng);
        s[0] = -kInf;
        const std::vector<float> s_before = s;
        std::vector<float> s2 = s, sum2 = sum;
        const int qrows = (rows + 1) / 2;
        std::vector<uint32_t> got(size_t(qrows * ldd), 0xdeadbeefu), want = got;
        kt->col_exp_sum_pairs(s.data(), lds, rows, cols, ref.data(), sum.data(), got.data(), ldd);
        kt->col_exp_sum(s2.data(), lds, rows, cols, ref.data(), sum2.data());
        kt->pack_pairs(s2.data(), lds, rows, cols, want.data(), ldd);
        ASSERT_EQ(got, want) << rows << "x" << cols;
        for (int c = 0; c < cols; ++c) ASSERT_NEAR(sum[size_t(c)], sum2[size_t(c)], 1e-6f * sum2[size_t(c)]);
        ASSERT_EQ(s, s_before) << "s was written";
      }
  }
}

TEST(CpuKernels, StoreRowRoundsExactlyWithTails) {
  std::mt19937_64 rng(fresh_seed());
  std::vector<float> special = {0.f, -0.f, 65504.f, 65519.f, 65520.f, -70000.f, 1e-8f, -3e-5f,
                                6.1e-5f, 1e-40f, -1e-45f, kInf, -kInf,
                                std::numeric_limits<float>::quiet_NaN(), 1.00390625f,
                                1.01171875f, 3.4e38f};
  uint32_t nan_bits = 0xffc12345u, snan_bits = 0x7f800001u;
  float nan2, snan;
  std::memcpy(&nan2, &nan_bits, 4);
  std::memcpy(&snan, &snan_bits, 4);
  special.push_back(nan2);
  special.push_back(snan);
  for (const Kernels* kt : tables()) {
    SCOPED_TRACE(kt->name);
    for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
      for (int n : {1, 7, 8, 17, 40, 256}) {
        std::vector<float> src(static_cast<size_t>(n));
        for (int i = 0; i < n; ++i) {
          const uint32_t bits = uint32_t(rng());
          std::memcpy(&src[size_t(i)], &bits, 4);
          if (i % 3 == 0) src[size_t(i)] = special[size_t(i / 3) % special.size()];
          if (i % 3 == 1) src[size_t(i)] = float(int(rng() % 2001) - 1000) / 64.f;  // ties
        }
        const size_t es = dtype_size(t);
        std::vector<uint8_t> got(size_t(n + 1) * es, 0xab), want(size_t(n) * es);
        kt->store_row(src.data(), t, n, got.data());
        for (int i = 0; i < n; ++i) store_from_float(want.data(), t, i, src[size_t(i)]);
        for (int i = 0; i < n; ++i) {
          if (t == DType::kFloat32) {
            ASSERT_EQ(std::memcmp(&got[size_t(i) * 4], &src[size_t(i)], 4), 0) << i;
            continue;
          }
          uint16_t g, w;
          std::memcpy(&g, &got[size_t(i) * 2], 2);
          std::memcpy(&w, &want[size_t(i) * 2], 2);
          uint32_t bits;
          std::memcpy(&bits, &src[size_t(i)], 4);
          ASSERT_EQ(g, w) << dtype_name(t) << " n=" << n << " i=" << i << " bits=0x" << std::hex
                          << bits;
        }
        for (size_t b = size_t(n) * es; b < got.size(); ++b) ASSERT_EQ(got[b], 0xab) << "wrote past n";
      }
  }
}

TEST(CpuKernels, IsaChoiceAndOverride) {
  unsetenv("FLASHATTN_CPU_ISA");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    cpu::avx2_kernels() != nullptr;
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq") && cpu::avx512_kernels() != nullptr;
  const bool bf16 =
      avx512 && __builtin_cpu_supports("avx512bf16") && cpu::avx512_bf16_kernels() != nullptr;
  const bool amx = bf16 && cpu::amx_bf16_kernels() != nullptr && cpu::amx_bf16_runs();
  const char* below_amx = bf16 ? "avx512-bf16" : avx512 ? "avx512" : avx2 ? "avx2" : "portable";
  const char* widest = amx ? "amx-bf16" : below_amx;
  EXPECT_STREQ(cpu::isa(), widest);
  EXPECT_EQ(build_info().cpu_isa, cpu::isa());
  EXPECT_EQ(cpu::cpu_supports(cpu::avx512_bf16_kernels()), bf16);
  EXPECT_TRUE(cpu::cpu_supports(&cpu::portable_kernels()));
  // A named table runs when this CPU has it, else the widest one below it.
  setenv("FLASHATTN_CPU_ISA", "portable", 1);
  EXPECT_STREQ(cpu::isa(), "portable");
  EXPECT_EQ(build_info().cpu_isa, "portable");
  setenv("FLASHATTN_CPU_ISA", "avx2", 1);
  EXPECT_STREQ(cpu::isa(), avx2 ? "avx2" : "portable");
  setenv("FLASHATTN_CPU_ISA", "avx512", 1);
  EXPECT_STREQ(cpu::isa(), avx512 ? "avx512" : avx2 ? "avx2" : "portable");
  setenv("FLASHATTN_CPU_ISA", "avx512-bf16", 1);
  EXPECT_STREQ(cpu::isa(), below_amx);
  setenv("FLASHATTN_CPU_ISA", "amx-bf16", 1);
  EXPECT_STREQ(cpu::isa(), widest);
  // The emulated AMX table only by name, and only where AVX-512 BF16 runs.
  setenv("FLASHATTN_CPU_ISA", "amx-emulated", 1);
  EXPECT_STREQ(cpu::isa(), bf16 && cpu::amx_emulated_kernels() != nullptr ? "amx-emulated" : widest);
  setenv("FLASHATTN_CPU_ISA", "no-such-isa", 1);  // ignored: the default choice
  EXPECT_STREQ(cpu::isa(), widest);
  unsetenv("FLASHATTN_CPU_ISA");
  // Every table that runs is listed once, narrowest first, portable always.
  const std::vector<const Kernels*> t = tables();
  ASSERT_FALSE(t.empty());
  EXPECT_EQ(t.front(), &cpu::portable_kernels());
  EXPECT_EQ(t.size(), size_t(1 + avx2 + avx512 + bf16 + amx));
  EXPECT_STREQ(t.back()->name, widest);
  for (const Kernels* k : t) {
    EXPECT_GT(k->block_m, 0);
    EXPECT_GT(k->block_n, 0);
    EXPECT_EQ(k->gemm_bf16 != nullptr, k->pack_pairs != nullptr);
    EXPECT_EQ(k->gemm_bf16 != nullptr, k->pack_rows != nullptr);
    EXPECT_EQ(k->gemm_bf16 != nullptr, k->col_exp_sum_pairs != nullptr);
  }
}

// gemm_bf16: words of two bf16 values, A through (row, column) strides; the exact result is the
// double sum of the bf16 products (each exact in fp32), with fp32 accumulation slack.
TEST(CpuKernels, Bf16GemmMatchesDoubleLoopWithStridedA) {
  std::mt19937_64 rng(fresh_seed());
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  auto rand_word = [&] { return word(float_to_bf16(u(rng)), float_to_bf16(u(rng))); };
  struct Shape {
    int m, n, kw;
  };
  for (const Kernels* kt : bf16_tables()) {
    SCOPED_TRACE(kt->name);
    for (const Shape& s : {Shape{1, 1, 1}, Shape{7, 24, 13}, Shape{96, 128, 48}, Shape{13, 8, 0},
                           Shape{12, 32, 5}, Shape{11, 40, 129}, Shape{25, 17, 3},
                           Shape{5, 50, 7}, Shape{40, 33, 300}, Shape{64, 96, 64}}) {
      for (bool transposed_a : {false, true})
        for (bool accumulate : {false, true}) {
          const int64_t a_rs = transposed_a ? 1 : s.kw + 3, a_cs = transposed_a ? s.m + 5 : 1;
          const int64_t ldb = s.n + 8, ldc = s.n + 8;
          std::vector<uint32_t> a(static_cast<size_t>((s.m + 5) * (s.kw + 3) + 8)),
              b(static_cast<size_t>(s.kw * ldb + 1));
          std::vector<float> c(static_cast<size_t>(s.m * ldc));
          for (uint32_t& x : a) x = rand_word();
          for (uint32_t& x : b) x = rand_word();
          for (float& x : c) x = u(rng);
          const std::vector<float> c0 = c;
          kt->gemm_bf16(s.m, s.n, s.kw, a.data(), a_rs, a_cs, b.data(), ldb, c.data(), ldc,
                        accumulate);
          for (int i = 0; i < s.m; ++i)
            for (int j = 0; j < ldc; ++j) {
              const size_t e = size_t(i * ldc + j);
              if (j >= s.n) {
                ASSERT_EQ(c[e], c0[e]) << "wrote past n";
                continue;
              }
              double want = accumulate ? c0[e] : 0.0;
              for (int q = 0; q < s.kw; ++q) {
                const uint32_t wa = a[size_t(i * a_rs + q * a_cs)], wb = b[size_t(q * ldb + j)];
                want += double(lo_of(wa)) * lo_of(wb) + double(hi_of(wa)) * hi_of(wb);
              }
              ASSERT_NEAR(c[e], want, 1e-5 * (1 + std::sqrt(2.0 * s.kw)))
                  << s.m << "x" << s.n << "x" << s.kw << " at " << i << "," << j;
            }
        }
    }
  }
}

// pack_pairs and pack_rows round to nearest even (as float_to_bf16), zero the partner past an
// odd count, and write nothing else.
TEST(CpuKernels, Bf16PackingRoundsAndPads) {
  std::mt19937_64 rng(fresh_seed());
  std::uniform_real_distribution<float> u(-3.f, 3.f);
  constexpr uint32_t kCanary = 0xdeadbeefu;
  for (const Kernels* kt : bf16_tables()) {
    SCOPED_TRACE(kt->name);
    for (int rows : {1, 2, 5, 16})
      for (int cols : {1, 7, 16, 17, 33, 96}) {
        const int64_t lds = cols + 3;
        std::vector<float> src(size_t(rows * lds));
        for (float& x : src) x = u(rng);
        src[0] = -kInf;  // masked score: bf16 keeps infinities
        const auto at = [&](int r, int c) {
          return (r < rows && c < cols) ? float_to_bf16(src[size_t(r * lds + c)]) : uint16_t(0);
        };
        const int qrows = (rows + 1) / 2, qcols = (cols + 1) / 2;
        const int64_t ldp = cols + 2, ldr = qcols + 2;
        std::vector<uint32_t> pairs(size_t(qrows * ldp + 4), kCanary),
            rowsw(size_t(rows * ldr + 4), kCanary);
        kt->pack_pairs(src.data(), lds, rows, cols, pairs.data(), ldp);
        kt->pack_rows(src.data(), lds, rows, cols, rowsw.data(), ldr);
        for (int q = 0; q < qrows; ++q)
          for (int c = 0; c < ldp; ++c) {
            const uint32_t got = pairs[size_t(q * ldp + c)];
            if (c < cols)
              ASSERT_EQ(got, word(at(2 * q, c), at(2 * q + 1, c))) << "pairs " << q << "," << c;
            else
              ASSERT_EQ(got, kCanary) << "pack_pairs wrote past cols";
          }
        for (int r = 0; r < rows; ++r)
          for (int q = 0; q < ldr; ++q) {
            const uint32_t got = rowsw[size_t(r * ldr + q)];
            if (q < qcols)
              ASSERT_EQ(got, word(at(r, 2 * q), at(r, 2 * q + 1))) << "rows " << r << "," << q;
            else
              ASSERT_EQ(got, kCanary) << "pack_rows wrote past its words";
          }
        ASSERT_EQ(pairs.back(), kCanary);
        ASSERT_EQ(rowsw.back(), kCanary);
      }
  }
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

// Calls back to back with a changing thread count (workers that spin between calls, workers
// left out of a call, workers that slept) and calls from two user threads at once (one of them
// runs inline): every item runs once, on a worker id below the call's thread count.
TEST(CpuThreadPool, BackToBackCallsWithChangingThreadCounts) {
  cpu::ThreadPool& pool = cpu::ThreadPool::instance();
  auto run = [&pool](int calls, int salt) {
    for (int c = 0; c < calls; ++c) {
      const int threads = 1 + (c * 7 + salt) % 9;
      const int64_t n = (c * 13 + salt) % 50;
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::atomic<int> bad_worker{0};
      pool.parallel_for(n, threads, [&](int64_t i, int worker) {
        if (worker < 0 || worker >= threads) ++bad_worker;
        ++hits[size_t(i)];
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), 1) << c;
      ASSERT_EQ(bad_worker.load(), 0) << c;
      if (c % 100 == 99) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  };
  run(2000, 0);
  std::thread other([&] { run(500, 3); });
  run(500, 5);
  other.join();
}

}  // namespace
}  // namespace flashattn
