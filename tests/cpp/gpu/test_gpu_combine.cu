// The GPU split-KV merge (mha_combine on device memory, through the public API) against the
// CPU reference's merge, and end to end: attention over key splits merged on the GPU equals
// attention over all keys.
//
// Inputs: partial LSEs uniform in [-4, 4], about 30% of (split, row) entries empty (-inf) and
// every fifth row empty in all splits; an empty split's partial output is NaN on the GPU side
// (it must never be read) and 0 on the CPU side. Tolerance: the merge is a convex combination of
// |o| <= 1 in fp32, so |gpu - cpu| <= u(dtype) |cpu| + 1e-5 (u: unit roundoff of the output
// dtype); LSE |err| <= 1e-5 + 1e-6 |lse|; all-empty rows exactly 0 and +inf.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "api/validate.h"
#include "cpu/reference.h"
#include "cuda/reference.h"
#include "gpu/gpu_testing.h"

namespace flashattn::testing {
namespace {

constexpr double kSlack = 1e-5;
constexpr double kLseAbs = 1e-5;
constexpr double kLseRel = 1e-6;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct CombineCase {
  int splits, b, sq, h, d;
  bool padded;
};

void PrintTo(const CombineCase& c, std::ostream* os) {
  *os << "splits=" << c.splits << " b=" << c.b << " sq=" << c.sq << " h=" << c.h
      << " d=" << c.d << (c.padded ? " padded" : "");
}

std::string describe(const CombineCase& c, DType t) {
  std::ostringstream s;
  PrintTo(c, &s);
  return std::string(dtype_name(t)) + " " + s.str();
}

class GpuCombine : public GpuTest,
                   public ::testing::WithParamInterface<std::tuple<CombineCase, DType>> {};

TEST_P(GpuCombine, MatchesCpuReference) {
  const CombineCase c = std::get<0>(GetParam());
  const DType dtype = std::get<1>(GetParam());
  const uint64_t seed = fresh_seed();
  const std::string what = describe(c, dtype);
  SCOPED_TRACE("seed=" + std::to_string(seed) + " " + what);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uo(-1.f, 1.f), ul(-4.f, 4.f), coin(0.f, 1.f);

  const int64_t rows = int64_t(c.b) * c.sq * c.h;  // (bidb, i, head) rows of one split
  std::vector<float> lse_part(size_t(c.splits) * rows);
  std::vector<float> out_gpu(size_t(c.splits) * rows * c.d), out_cpu(out_gpu.size());
  for (int s = 0; s < c.splits; ++s)
    for (int bb = 0; bb < c.b; ++bb)
      for (int hh = 0; hh < c.h; ++hh)
        for (int i = 0; i < c.sq; ++i) {
          const int64_t row = (int64_t(bb) * c.sq + i) * c.h + hh;
          const bool empty = row % 5 == 0 || coin(rng) < 0.3f;
          const size_t li = size_t(s) * rows + (size_t(bb) * c.h + hh) * c.sq + i;
          lse_part[li] = empty ? kNegInf : ul(rng);
          for (int x = 0; x < c.d; ++x) {
            const size_t oi = (size_t(s) * rows + row) * c.d + x;
            const float v = uo(rng);
            out_gpu[oi] = empty ? std::numeric_limits<float>::quiet_NaN() : v;
            out_cpu[oi] = empty ? 0.f : v;
          }
        }

  // CPU oracle: fp32 output, contiguous.
  std::vector<float> want(size_t(rows) * c.d), want_lse(rows);
  CombineParams hp;
  hp.num_splits = c.splits;
  hp.b = c.b;
  hp.seqlen_q = c.sq;
  hp.h = c.h;
  hp.d = c.d;
  hp.out_partial = out_cpu.data();
  hp.lse_partial = lse_part.data();
  hp.dtype = DType::kFloat32;
  hp.out = want.data();
  hp.out_row_stride = int64_t(c.h) * c.d;
  hp.out_batch_stride = int64_t(c.sq) * hp.out_row_stride;
  hp.out_head_stride = c.d;
  hp.lse = want_lse.data();
  const Status sc = ref::mha_combine(hp);
  ASSERT_TRUE(sc.ok()) << "CPU reference: " << sc.to_string();

  // GPU, through the public API, into a NaN-poisoned (possibly strided) output of dtype.
  const Layout lo = Layout::make(c.b, c.sq, c.h, c.d, c.padded);
  Buffer out = Buffer::make(dtype, lo.numel);
  out.fill_nan();
  std::vector<float> lse(rows, std::numeric_limits<float>::quiet_NaN());
  DeviceBuffer d_part = DeviceBuffer::from(out_gpu), d_lse_part = DeviceBuffer::from(lse_part);
  DeviceBuffer d_out = DeviceBuffer::from(out), d_lse = DeviceBuffer::from(lse);
  CombineParams gp = hp;
  gp.out_partial = d_part.as<float>();
  gp.lse_partial = d_lse_part.as<float>();
  gp.dtype = dtype;
  gp.out = d_out.get();
  gp.out_batch_stride = lo.batch_stride;
  gp.out_row_stride = lo.row_stride;
  gp.out_head_stride = lo.head_stride;
  gp.lse = d_lse.as<float>();
  const Status sg = mha_combine(gp);
  ASSERT_TRUE(sg.ok()) << sg.to_string();
  sync_or_throw();
  d_out.to(out);
  d_lse.to(lse);

  const std::vector<float> got = gather(out, lo, c.b, c.sq, c.h, c.d, false, 0);
  const Closeness eo = closeness(got, want, unit_roundoff(dtype), kSlack);
  EXPECT_EQ(count_nonfinite(got), 0) << "out has unwritten (NaN) or non-finite elements";
  EXPECT_EQ(eo.violations, 0) << "out " << eo.str();
  int64_t padding_nan = 0;
  for (int64_t k = 0; k < out.numel; ++k) padding_nan += std::isnan(out.get(k));
  EXPECT_EQ(padding_nan, out.numel - int64_t(got.size())) << "out padding was written";
  const Closeness el = closeness(lse, want_lse, kLseRel, kLseAbs);
  EXPECT_EQ(el.violations, 0) << "lse " << el.str();
  // All-empty rows (every fifth): exactly zeros and +inf.
  for (int64_t row = 0; row < rows; row += 5) {
    const int hh = int(row % c.h), i = int((row / c.h) % c.sq), bb = int(row / (int64_t(c.h) * c.sq));
    EXPECT_EQ(lse[(size_t(bb) * c.h + hh) * c.sq + i], std::numeric_limits<float>::infinity());
    for (int x = 0; x < c.d; ++x) EXPECT_EQ(got[size_t(row) * c.d + x], 0.f);
  }
  report_error("gpu-combine", "max_abs_err", eo.max_abs_err, what);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GpuCombine,
    ::testing::Combine(::testing::Values(CombineCase{1, 1, 1, 1, 1, false},
                                         CombineCase{3, 2, 7, 3, 64, true},
                                         CombineCase{7, 1, 97, 2, 128, false},
                                         CombineCase{2, 3, 113, 1, 256, true},
                                         CombineCase{128, 1, 5, 2, 40, false},
                                         CombineCase{16, 2, 33, 4, 100, true},
                                         // 33 splits: more than a warp's lanes and not a
                                         // multiple of the kernel's batch of 8; d = 30 takes
                                         // the scalar (non-float4) path.
                                         CombineCase{33, 2, 9, 3, 30, false}),
                       ::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16)));

// Attention over key splits [0, 40), [40, 77), [77, 113) by the GPU reference (fp32 partials,
// written straight into the [splits, b, s_q, h, d] / [splits, b, h, s_q] partial layout), merged
// by the GPU combine, equals the GPU reference over all keys.
class GpuCombineEndToEnd : public GpuTest {};

TEST_F(GpuCombineEndToEnd, SplitAttentionMergesToFullAttention) {
  AttnConfig c;
  c.dtype = DType::kFloat32;
  c.b = 2;
  c.seqlen_q = 37;
  c.seqlen_k = 113;
  c.h = 4;
  c.h_k = 2;
  c.d = 64;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed) + " " + c.str());
  FwdProblem full = make_fwd_problem(c, seed);
  full.params = detail::resolve(full.params);
  DeviceFwdProblem dev(full);
  ASSERT_TRUE(cuda::ref::mha_fwd(dev.params).ok());
  dev.copy_back(full);

  const int bounds[] = {0, 40, 77, 113};
  const int splits = 3;
  const int64_t rows = int64_t(c.b) * c.seqlen_q * c.h;
  DeviceBuffer part(size_t(splits) * rows * c.d * sizeof(float));
  DeviceBuffer lse_part(size_t(splits) * rows * sizeof(float));
  for (int s = 0; s < splits; ++s) {
    FwdParams p = dev.params;
    p.seqlen_k = bounds[s + 1] - bounds[s];
    p.k_ptr = dev.k.as<float>() + bounds[s] * p.k_row_stride;
    p.v_ptr = dev.v.as<float>() + bounds[s] * p.v_row_stride;
    p.o_ptr = part.as<float>() + size_t(s) * rows * c.d;
    p.o_row_stride = int64_t(c.h) * c.d;
    p.o_batch_stride = int64_t(c.seqlen_q) * p.o_row_stride;
    p.o_head_stride = c.d;
    p.softmax_lse_ptr = lse_part.as<float>() + size_t(s) * rows;
    ASSERT_TRUE(cuda::ref::mha_fwd(p).ok());
  }
  const Layout lo = Layout::make(c.b, c.seqlen_q, c.h, c.d, false);
  Buffer merged = Buffer::make(DType::kFloat32, lo.numel);
  merged.fill_nan();
  std::vector<float> merged_lse(rows, std::numeric_limits<float>::quiet_NaN());
  DeviceBuffer d_out = DeviceBuffer::from(merged), d_lse = DeviceBuffer::from(merged_lse);
  CombineParams cp;
  cp.num_splits = splits;
  cp.b = c.b;
  cp.seqlen_q = c.seqlen_q;
  cp.h = c.h;
  cp.d = c.d;
  cp.out_partial = part.as<float>();
  cp.lse_partial = lse_part.as<float>();
  cp.dtype = DType::kFloat32;
  cp.out = d_out.get();
  cp.out_batch_stride = lo.batch_stride;
  cp.out_row_stride = lo.row_stride;
  cp.out_head_stride = lo.head_stride;
  cp.lse = d_lse.as<float>();
  const Status s = mha_combine(cp);
  ASSERT_TRUE(s.ok()) << s.to_string();
  sync_or_throw();
  d_out.to(merged);
  d_lse.to(merged_lse);

  const std::vector<float> got = gather(merged, lo, c.b, c.seqlen_q, c.h, c.d, false, 0);
  const Closeness eo = closeness(got, gather_o(full), 1e-6, kSlack);
  EXPECT_EQ(eo.violations, 0) << "merged o " << eo.str();
  const Closeness el = closeness(merged_lse, full.lse, kLseRel, kLseAbs);
  EXPECT_EQ(el.violations, 0) << "merged lse " << el.str();
  report_error("gpu-combine-e2e", "max_abs_err", eo.max_abs_err, c.str() + " splits=3");
}

}  // namespace
}  // namespace flashattn::testing
