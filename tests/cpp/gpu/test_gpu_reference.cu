// The naive GPU reference (src/cuda/reference_fwd.cu) against the CPU reference, feature by
// feature, at small odd shapes; plus its own promises: every output element written and nothing
// else, bitwise repeatability, the exact Philox dropout mask, and long sequences (16k keys) for
// its role as the fp32 oracle of large-shape tests.
//
// Tolerance (stated once, used everywhere): the CPU reference runs on an fp32 copy of the very
// same inputs with double accumulation, so it is exact up to its final fp32 rounding. The GPU
// reference accumulates in fp32 (relative error ~1e-6 at these sizes) and rounds the result once
// to the output dtype, so
//     |gpu - cpu| <= u(dtype) * |cpu| + kAccumSlack / (1 - p_dropout)
// with u the dtype's unit roundoff (2^-8 bf16, 2^-11 fp16, 2^-24 fp32) and kAccumSlack = 2e-5:
// outputs are convex combinations of |v| <= 1, and fp32 accumulation over <= 16k keys stays an
// order of magnitude below that. LSE is fp32 on both sides: |err| <= 2e-5 + 1e-6 |lse|.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "api/validate.h"
#include "common/mask.h"
#include "common/philox.h"
#include "cpu/reference.h"
#include "cuda/reference.h"
#include "gpu/gpu_testing.h"

namespace flashattn::testing {
namespace {

constexpr double kAccumSlack = 2e-5;
constexpr double kLseAbs = 2e-5;
constexpr double kLseRel = 1e-6;

// One problem run by both references: gpu holds the dtype inputs and the GPU outputs, cpu the
// fp32 copy and the CPU reference's outputs.
struct Compared {
  FwdProblem gpu, cpu;
};

FwdProblem make_problem(const AttnConfig& cfg, int page_size, uint64_t seed) {
  FwdProblem pr = make_fwd_problem(cfg, seed);
  if (page_size > 0) pr = to_paged(pr, page_size, seed ^ 0x5bd1e995u);
  pr.params = detail::resolve(pr.params);
  pr.bind();
  return pr;
}

void run_gpu(FwdProblem& pr) {
  DeviceFwdProblem dev(pr);
  const Status s = cuda::ref::mha_fwd(dev.params);
  ASSERT_TRUE(s.ok()) << s.to_string();
  dev.copy_back(pr);
}

void run_cpu(FwdProblem& pr32) {
  const Status s = ref::mha_fwd(pr32.params);
  ASSERT_TRUE(s.ok()) << "CPU reference: " << s.to_string();
}

void run_both(Compared& r, const AttnConfig& cfg, int page_size, uint64_t seed) {
  r.gpu = make_problem(cfg, page_size, seed);
  const Status v = detail::validate_fwd(r.gpu.params, Backend::kCpu, cfg.varlen());
  ASSERT_TRUE(v.ok()) << "test problem is invalid: " << v.to_string();
  r.cpu = as_fp32(r.gpu);
  ASSERT_NO_FATAL_FAILURE(run_cpu(r.cpu));
  ASSERT_NO_FATAL_FAILURE(run_gpu(r.gpu));
}

std::vector<float> all_of(const Buffer& b) {
  std::vector<float> v(static_cast<size_t>(b.numel));
  for (int64_t i = 0; i < b.numel; ++i) v[i] = b.get(i);
  return v;
}

int64_t count_nan(const std::vector<float>& v) {
  int64_t n = 0;
  for (float x : v) n += std::isnan(x);
  return n;
}

// Every check that ties the GPU outputs to the CPU reference's. Returns o's max error.
double expect_matches_cpu(const Compared& r, const std::string& what) {
  const AttnConfig& c = r.gpu.cfg;
  const double u = unit_roundoff(c.dtype);
  const double slack = kAccumSlack / (1.0 - c.p_dropout);

  const std::vector<float> go = gather_o(r.gpu), co = gather_o(r.cpu);
  EXPECT_EQ(count_nonfinite(go), 0) << what << ": o has unwritten (NaN) or non-finite elements";
  const Closeness eo = closeness(go, co, u, slack);
  EXPECT_EQ(eo.violations, 0) << what << ": o " << eo.str()
                              << (eo.worst_index >= 0
                                      ? " got=" + std::to_string(go[eo.worst_index]) +
                                            " want=" + std::to_string(co[eo.worst_index])
                                      : std::string());
  // Only the logical elements are written: strided padding keeps its NaN poison.
  const std::vector<float> raw_o = all_of(r.gpu.o);
  EXPECT_EQ(count_nan(raw_o), r.gpu.o.numel - static_cast<int64_t>(go.size()))
      << what << ": o padding was written (or logical elements left NaN)";

  EXPECT_EQ(count_nan(r.gpu.lse), 0) << what << ": lse has unwritten elements";
  const Closeness el = closeness(r.gpu.lse, r.cpu.lse, kLseRel, kLseAbs);
  EXPECT_EQ(el.violations, 0) << what << ": lse " << el.str()
                              << (el.worst_index >= 0
                                      ? " got=" + std::to_string(r.gpu.lse[el.worst_index]) +
                                            " want=" + std::to_string(r.cpu.lse[el.worst_index])
                                      : std::string());
  if (c.return_probs) {
    const std::vector<float> gp = all_of(r.gpu.p), cp = all_of(r.cpu.p);
    EXPECT_EQ(count_nan(gp), 0) << what << ": p has unwritten elements";
    const Closeness ep = closeness(gp, cp, u, slack);
    EXPECT_EQ(ep.violations, 0) << what << ": p " << ep.str();
  }
  report_error("gpu-ref", "max_abs_err", eo.max_abs_err, c.str());
  report_error("gpu-ref-lse", "max_abs_err", el.max_abs_err, c.str());
  return eo.max_abs_err;
}

// ------------------------------------------------------------------ feature x dtype sweep --

struct Case {
  std::string name;
  AttnConfig cfg;
  int page_size = 0;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name << " page=" << c.page_size; }

std::vector<Case> feature_cases() {
  std::vector<Case> v;
  auto add = [&](std::string name, AttnConfig c, int page = 0) {
    v.push_back({std::move(name), std::move(c), page});
  };
  // Shapes: s_q != s_k both ways, GQA / MQA, head dims that are not multiples of 8 or 32.
  add("s1", base(DType::kFloat32, 1, 1, 1, 1, 1, 32));
  add("sq7_sk97_gqa", base(DType::kFloat32, 2, 7, 97, 4, 2, 64));
  add("sq113_sk7_mqa", base(DType::kFloat32, 2, 113, 7, 3, 1, 128));
  add("sq97_sk113_d256", base(DType::kFloat32, 1, 97, 113, 2, 2, 256));
  add("d40", base(DType::kFloat32, 2, 33, 17, 2, 1, 40));
  add("d1", base(DType::kFloat32, 1, 7, 13, 2, 1, 1));
  // Masks. Causal with s_q > s_k leaves the first s_q - s_k rows with no visible key.
  {
    AttnConfig c = base(DType::kFloat32, 2, 7, 97, 4, 2, 64);
    c.causal = true;
    add("causal_sq7_sk97", c);
    c = base(DType::kFloat32, 2, 113, 7, 2, 1, 64);
    c.causal = true;
    add("causal_sq113_sk7_empty_rows", c);
    c = base(DType::kFloat32, 1, 97, 97, 2, 1, 128);
    c.causal = true;
    add("causal_square", c);
    c = base(DType::kFloat32, 2, 97, 113, 2, 1, 64);
    c.window_left = 5;
    c.window_right = 3;
    add("window_5_3", c);
    c = base(DType::kFloat32, 1, 113, 97, 2, 2, 64);
    c.window_left = 0;
    c.window_right = 0;
    add("window_0_0_empty_rows", c);
    c = base(DType::kFloat32, 2, 33, 97, 2, 1, 32);
    c.window_left = 10;
    add("window_left_only", c);
    c = base(DType::kFloat32, 2, 97, 33, 2, 1, 32);
    c.window_right = 2;
    add("window_right_only", c);
    c = base(DType::kFloat32, 1, 113, 113, 4, 2, 64);
    c.causal = true;
    c.window_left = 16;
    add("local_causal", c);
  }
  // Score modifiers.
  {
    AttnConfig c = base(DType::kFloat32, 2, 37, 53, 2, 1, 64);
    c.softcap = 5.f;
    c.softmax_scale = 0.5f;  // large scores, so the cap actually bends them
    add("softcap", c);
    c.causal = true;
    c.softcap = 2.f;
    add("softcap_causal", c);
    c = base(DType::kFloat32, 2, 97, 113, 4, 2, 64);
    c.alibi = true;
    c.causal = true;
    add("alibi_h_causal", c);
    c = base(DType::kFloat32, 3, 113, 7, 2, 1, 64);
    c.alibi = true;
    c.alibi_per_batch = true;
    add("alibi_bh", c);
  }
  // Varlen: zero-length q and k sequences, seqused_k, padded strides.
  {
    AttnConfig c = base(DType::kFloat32, 4, 0, 0, 4, 2, 64);
    c.seqlens_q = {7, 0, 97, 1};
    c.seqlens_k = {113, 13, 0, 1};
    add("varlen_zero_len", c);
    AttnConfig cc = c;
    cc.causal = true;
    add("varlen_causal", cc);
    AttnConfig cu = c;
    cu.seqused_k = {50, 0, 0, 1};
    add("varlen_seqused_k", cu);
    AttnConfig cp = c;
    cp.padded_strides = true;
    cp.window_left = 7;
    cp.window_right = 0;
    add("varlen_padded_local", cp);
    AttnConfig d = base(DType::kFloat32, 2, 33, 65, 4, 2, 64);
    d.padded_strides = true;
    d.causal = true;
    add("padded_strides_causal", d);
  }
  // Paged KV: page sizes 1, 5, 16; dense and varlen.
  {
    add("paged1", base(DType::kFloat32, 2, 7, 97, 4, 2, 64), 1);
    AttnConfig c = base(DType::kFloat32, 2, 97, 113, 2, 1, 64);
    c.causal = true;
    add("paged16_causal", c, 16);
    add("paged5", base(DType::kFloat32, 2, 33, 50, 2, 2, 32), 5);
    AttnConfig v = base(DType::kFloat32, 4, 0, 0, 4, 2, 64);
    v.seqlens_q = {7, 0, 97, 1};
    v.seqlens_k = {113, 13, 0, 1};
    add("paged16_varlen", v, 16);
    v.seqused_k = {100, 1, 0, 1};
    v.padded_strides = true;
    add("paged1_varlen_seqused_padded", v, 1);
  }
  // Dropout (mask from the shared Philox counter layout), alone and with other features.
  {
    AttnConfig c = base(DType::kFloat32, 2, 33, 47, 4, 2, 64);
    c.p_dropout = 0.17f;
    add("dropout", c);
    AttnConfig v = base(DType::kFloat32, 3, 0, 0, 2, 1, 64);
    v.seqlens_q = {5, 113, 0};
    v.seqlens_k = {97, 7, 3};
    v.p_dropout = 0.3f;
    v.causal = true;
    add("dropout_varlen_causal", v);
    AttnConfig pg = base(DType::kFloat32, 2, 37, 61, 4, 1, 32);
    pg.p_dropout = 0.5f;
    pg.alibi = true;
    add("dropout_paged_alibi", pg, 16);
  }
  // Medium size (the largest the CPU oracle affords per case).
  {
    AttnConfig c = base(DType::kFloat32, 1, 1025, 1023, 2, 1, 128);
    c.causal = true;
    add("medium_causal_1025x1023", c);
  }
  return v;
}

class GpuRefVsCpu : public GpuTest,
                    public ::testing::WithParamInterface<std::tuple<Case, DType>> {};

TEST_P(GpuRefVsCpu, MatchesCpuReference) {
  AttnConfig cfg = std::get<0>(GetParam()).cfg;
  cfg.dtype = std::get<1>(GetParam());
  const int page = std::get<0>(GetParam()).page_size;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed) + " page=" + std::to_string(page) + " " +
               cfg.str());
  Compared r;
  ASSERT_NO_FATAL_FAILURE(run_both(r, cfg, page, seed));
  expect_matches_cpu(r, cfg.str());
}

std::string case_name(const ::testing::TestParamInfo<std::tuple<Case, DType>>& info) {
  return std::get<0>(info.param).name + "_" + dtype_name(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Features, GpuRefVsCpu,
                         ::testing::Combine(::testing::ValuesIn(feature_cases()),
                                            ::testing::Values(DType::kFloat16, DType::kBFloat16,
                                                              DType::kFloat32)),
                         case_name);

// ------------------------------------------------------------------------------- dropout --

class GpuReference : public GpuTest {};

// p_ptr's sign pattern is the keep mask: it must be exactly the one DropoutRng (the CPU's own
// definition of the mask) gives for every visible (batch, head, row, key), with invisible
// entries written as +0; and the kept fraction must be 1 - p within 5 sigma.
TEST_F(GpuReference, DropoutMaskIsThePhiloxMask) {
  for (DType t : {DType::kBFloat16, DType::kFloat16}) {
    AttnConfig c = base(DType::kFloat32, 2, 97, 113, 4, 2, 64);
    c.dtype = t;
    c.causal = true;
    c.window_left = 40;
    c.p_dropout = 0.23f;
    c.return_probs = true;
    c.philox_seed = fresh_seed();
    c.philox_offset = fresh_seed() >> 8;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed=" + std::to_string(seed) + " " + c.str());
    Compared r;
    ASSERT_NO_FATAL_FAILURE(run_both(r, c, 0, seed));
    expect_matches_cpu(r, c.str());

    DropoutRng rng;
    rng.seed = c.philox_seed;
    rng.offset = c.philox_offset;
    rng.threshold = dropout_threshold(c.p_dropout);
    const FwdParams& p = r.gpu.params;
    const VisibilityMask mask = VisibilityMask::make(c.seqlen_q, c.seqlen_k, p.is_causal,
                                                     p.window_size_left, p.window_size_right);
    int64_t visible = 0, kept = 0, sign_errors = 0, invisible_errors = 0;
    for (int bb = 0; bb < c.b; ++bb)
      for (int hh = 0; hh < c.h; ++hh)
        for (int i = 0; i < c.seqlen_q; ++i)
          for (int j = 0; j < c.seqlen_k; ++j) {
            const int64_t idx = ((int64_t(bb) * c.h + hh) * c.seqlen_q + i) * c.seqlen_k + j;
            const float g = r.gpu.p.get(idx);
            if (!mask.visible(i, j)) {
              invisible_errors += !(g == 0.f && !std::signbit(g));
              continue;
            }
            const bool keep = rng.keep(uint64_t(bb) * c.h + hh, i, j);
            ++visible;
            kept += keep;
            sign_errors += std::signbit(g) == keep;
          }
    EXPECT_EQ(sign_errors, 0) << "dropped entries (negative p) differ from DropoutRng's mask";
    EXPECT_EQ(invisible_errors, 0) << "invisible keys must read +0 in p";
    ASSERT_GT(visible, 0);
    const double frac = double(kept) / double(visible), q = 1.0 - c.p_dropout;
    EXPECT_NEAR(frac, q, 5.0 * std::sqrt(q * (1.0 - q) / double(visible)));
  }
}

// ------------------------------------------------------------------------- repeatability --

// Fixed reduction orders: the same call twice gives the same bits (o, lse, p).
TEST_F(GpuReference, RepeatedRunsAreBitwiseIdentical) {
  std::vector<std::pair<AttnConfig, int>> cfgs;
  {
    AttnConfig c = base(DType::kFloat32, 2, 97, 113, 4, 2, 128);
    c.dtype = DType::kBFloat16;
    c.causal = true;
    c.p_dropout = 0.1f;
    c.return_probs = true;
    c.alibi = true;
    cfgs.push_back({c, 0});
    AttnConfig v = base(DType::kFloat32, 3, 0, 0, 4, 1, 64);
    v.dtype = DType::kFloat16;
    v.seqlens_q = {113, 0, 7};
    v.seqlens_k = {97, 5, 1023};
    v.softcap = 4.f;
    cfgs.push_back({v, 16});
  }
  for (const auto& [c, page] : cfgs) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed=" + std::to_string(seed) + " " + c.str());
    FwdProblem a = make_problem(c, page, seed);
    FwdProblem b = a;
    b.bind();
    DeviceFwdProblem dev(a);
    ASSERT_TRUE(cuda::ref::mha_fwd(dev.params).ok());
    dev.copy_back(a);
    ASSERT_TRUE(cuda::ref::mha_fwd(dev.params).ok());
    dev.copy_back(b);
    EXPECT_EQ(a.o.bytes, b.o.bytes) << "o differs between runs";
    EXPECT_EQ(0, std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)))
        << "lse differs between runs";
    EXPECT_EQ(a.p.bytes, b.p.bytes) << "p differs between runs";
    EXPECT_EQ(count_nonfinite(gather_o(a)), 0);
  }
}

// ----------------------------------------------------------------------- long sequences --

// 16k keys at d = 256 against the CPU reference (16 query rows keep the CPU side cheap).
TEST_F(GpuReference, SixteenThousandKeysD256) {
  for (bool causal : {false, true}) {
    AttnConfig c = base(DType::kFloat32, 1, 16, 16384, 2, 1, 256);
    c.dtype = DType::kBFloat16;
    c.causal = causal;
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed=" + std::to_string(seed) + " " + c.str());
    Compared r;
    ASSERT_NO_FATAL_FAILURE(run_both(r, c, 0, seed));
    expect_matches_cpu(r, c.str());
  }
}

// The oracle at full size: a causal 16k x 16k problem at d = 256. Bottom-right alignment makes
// its last 16 rows the same computation as the 16 x 16k problem with the same keys and those
// query rows, so they must equal that problem's GPU result bit for bit, which in turn matches
// the CPU reference; every other row must be written and finite.
TEST_F(GpuReference, FullSizeCausal16kMatchesItsTail) {
  const int s = 16384, tail = 16;
  AttnConfig c = base(DType::kFloat32, 1, tail, s, 2, 1, 256);
  c.dtype = DType::kBFloat16;
  c.causal = true;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed) + " " + c.str());
  Compared small;
  ASSERT_NO_FATAL_FAILURE(run_both(small, c, 0, seed));
  expect_matches_cpu(small, c.str());

  AttnConfig cb = c;
  cb.seqlen_q = s;
  FwdProblem big = make_problem(cb, 0, seed + 1);
  ASSERT_EQ(big.k.numel, small.gpu.k.numel);
  big.k = small.gpu.k;
  big.v = small.gpu.v;
  const size_t row_bytes = size_t(big.params.q_row_stride) * dtype_size(c.dtype);
  std::memcpy(big.q.bytes.data() + size_t(s - tail) * row_bytes, small.gpu.q.bytes.data(),
              size_t(tail) * row_bytes);
  big.bind();
  ASSERT_NO_FATAL_FAILURE(run_gpu(big));

  const std::vector<float> ob = gather_o(big), os = gather_o(small.gpu);
  EXPECT_EQ(count_nonfinite(ob), 0) << "full-size o has unwritten or non-finite elements";
  EXPECT_EQ(count_nonfinite(big.lse), 0) << "every causal row sees a key: lse finite";
  const size_t row = size_t(c.h) * c.d;
  ASSERT_EQ(os.size(), size_t(tail) * row);
  int64_t o_mismatch = 0, lse_mismatch = 0;
  for (size_t k = 0; k < os.size(); ++k)
    o_mismatch += std::memcmp(&ob[size_t(s - tail) * row + k], &os[k], sizeof(float)) != 0;
  for (int hh = 0; hh < c.h; ++hh)
    for (int i = 0; i < tail; ++i)
      lse_mismatch += std::memcmp(&big.lse[size_t(hh) * s + s - tail + i],
                                  &small.gpu.lse[size_t(hh) * tail + i], sizeof(float)) != 0;
  EXPECT_EQ(o_mismatch, 0) << "last rows of the 16k problem differ from the 16-row problem";
  EXPECT_EQ(lse_mismatch, 0);
  report_error("gpu-ref-16k", "tail_bitwise_mismatches", double(o_mismatch + lse_mismatch),
               cb.str());
}

}  // namespace
}  // namespace flashattn::testing
