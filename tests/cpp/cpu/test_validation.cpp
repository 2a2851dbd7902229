// Argument validation of mha_fwd, mha_varlen_fwd, mha_bwd, mha_varlen_bwd and mha_combine: one
// test per rule. Each starts from a valid random problem (checked to pass validation), breaks
// one thing, calls the PUBLIC entry point and asserts InvalidArgument, a message that starts with
// the offending argument's name, and that nothing was touched: outputs are still the NaN poison
// of testing/problem.h and inputs are byte-for-byte unchanged. Rules that only apply on the GPU
// (dtype, head dim, 16-byte alignment) call detail::validate_* with Backend::kCuda directly, as
// do the "valid edge case passes" tests, so none of this depends on a backend being built.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "api/validate.h"
#include "flashattn/flashattn.h"
#include "testing/problem.h"

namespace {

using flashattn::Backend;
using flashattn::BwdParams;
using flashattn::CombineParams;
using flashattn::DType;
using flashattn::FwdParams;
using flashattn::Status;
using flashattn::StatusCode;
using flashattn::testing::AttnConfig;
using flashattn::testing::BwdProblem;
using flashattn::testing::Buffer;
using flashattn::testing::FwdProblem;
namespace detail = flashattn::detail;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

uint64_t fresh_seed() {
  static std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}

// The status is `code` and its message starts with the argument name followed by ':' or '['
// (an element of an index array, e.g. "cu_seqlens_q[2]: ...").
::testing::AssertionResult Rejected(const Status& s, const std::string& arg,
                                    StatusCode code = StatusCode::kInvalidArgument) {
  if (s.code() != code)
    return ::testing::AssertionFailure() << "expected " << flashattn::status_code_name(code)
                                         << " naming '" << arg << "', got " << s.to_string();
  const std::string& m = s.message();
  if (m.compare(0, arg.size(), arg) != 0 || m.size() == arg.size() ||
      (m[arg.size()] != ':' && m[arg.size()] != '['))
    return ::testing::AssertionFailure() << "message does not start with '" << arg
                                         << "': " << m;
  return ::testing::AssertionSuccess();
}

bool all_nan(const Buffer& b) {
  for (int64_t i = 0; i < b.numel; ++i)
    if (!std::isnan(b.get(i))) return false;
  return true;
}
bool all_nan(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isnan(x)) return false;
  return true;
}

// A small valid problem: GQA, s_q != s_k, odd sizes, fp32 (the CPU dtype).
AttnConfig small_cfg() {
  AttnConfig c;
  c.dtype = DType::kFloat32;
  c.b = 2;
  c.seqlen_q = 7;
  c.seqlen_k = 13;
  c.h = 4;
  c.h_k = 2;
  c.d = 16;
  return c;
}

// The same shape in bf16 with d % 8 == 0: valid for the GPU rules too.
AttnConfig gpu_cfg() {
  AttnConfig c = small_cfg();
  c.dtype = DType::kBFloat16;
  c.d = 32;
  return c;
}

AttnConfig varlen_cfg() {
  AttnConfig c = small_cfg();
  c.b = 4;
  c.seqlens_q = {5, 0, 9, 1};
  c.seqlens_k = {7, 3, 0, 11};
  return c;
}

Status validate(const FwdParams& p, Backend be, bool varlen) {
  return detail::validate_fwd(detail::resolve(p), be, varlen);
}
Status validate(const BwdParams& p, Backend be, bool varlen) {
  return detail::validate_bwd(detail::resolve(p), be, varlen);
}

// Breaks a valid forward problem with `brk`, then calls the public entry point: it must be
// rejected naming `arg`, with o/lse/p still poisoned and q/k/v unchanged.
void expect_fwd_rejected(const AttnConfig& cfg, const std::string& arg,
                         const std::function<void(FwdProblem&)>& brk, bool varlen) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(cfg.str() + " seed=" + std::to_string(seed));
  FwdProblem pr = make_fwd_problem(cfg, seed);
  ASSERT_TRUE(validate(pr.params, Backend::kCpu, cfg.varlen()).ok());
  brk(pr);
  const auto q = pr.q.bytes, k = pr.k.bytes, v = pr.v.bytes;
  const Status s = varlen ? flashattn::mha_varlen_fwd(pr.params) : flashattn::mha_fwd(pr.params);
  EXPECT_TRUE(Rejected(s, arg));
  EXPECT_TRUE(all_nan(pr.o)) << "o was written by a rejected call";
  EXPECT_TRUE(all_nan(pr.lse)) << "softmax_lse was written by a rejected call";
  EXPECT_TRUE(all_nan(pr.p)) << "p was written by a rejected call";
  EXPECT_TRUE(q == pr.q.bytes && k == pr.k.bytes && v == pr.v.bytes) << "an input changed";
}
void expect_fwd_rejected(const AttnConfig& cfg, const std::string& arg,
                         const std::function<void(FwdProblem&)>& brk) {
  expect_fwd_rejected(cfg, arg, brk, cfg.varlen());
}

// GPU-only rules: validate with Backend::kCuda (host buffers stand in for device memory; the
// tensor data is never read).
void expect_gpu_rejected(const AttnConfig& cfg, const std::string& arg,
                         const std::function<void(FwdProblem&)>& brk) {
  FwdProblem pr = make_fwd_problem(cfg, fresh_seed());
  ASSERT_TRUE(validate(pr.params, Backend::kCuda, cfg.varlen()).ok());
  brk(pr);
  EXPECT_TRUE(Rejected(validate(pr.params, Backend::kCuda, cfg.varlen()), arg));
  EXPECT_TRUE(all_nan(pr.o));
}

const char* shift(const void* p, int64_t bytes) { return static_cast<const char*>(p) + bytes; }
char* shift(void* p, int64_t bytes) { return static_cast<char*>(p) + bytes; }

// ======================================================================== valid edge cases ==

TEST(ValidationValid, BaselineProblemsPass) {
  std::vector<AttnConfig> cfgs;
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    AttnConfig c = small_cfg();
    c.dtype = t;
    cfgs.push_back(c);
  }
  AttnConfig c = small_cfg();
  c.causal = true;
  c.alibi = true;
  c.alibi_per_batch = true;
  c.p_dropout = 0.17f;
  c.return_probs = true;
  c.padded_strides = true;
  cfgs.push_back(c);
  c = small_cfg();
  c.window_left = 3;
  c.window_right = 0;
  c.softcap = 30.f;
  c.num_splits = 3;
  c.seqlen_q = 97;
  c.seqlen_k = 1;
  cfgs.push_back(c);
  for (const AttnConfig& cfg : cfgs) {
    SCOPED_TRACE(cfg.str());
    FwdProblem pr = make_fwd_problem(cfg, fresh_seed());
    const Status s = validate(pr.params, Backend::kCpu, false);
    EXPECT_TRUE(s.ok()) << s.to_string();
  }
}

TEST(ValidationValid, GpuBaselinePasses) {
  for (bool padded : {false, true}) {
    AttnConfig c = gpu_cfg();
    c.padded_strides = padded;
    FwdProblem pr = make_fwd_problem(c, fresh_seed());
    const Status s = validate(pr.params, Backend::kCuda, false);
    EXPECT_TRUE(s.ok()) << c.str() << ": " << s.to_string();
  }
}

TEST(ValidationValid, EmptySequencesAndBatchPass) {
  // s_q = 0 and s_k = 0 leave q/o or k/v empty: their pointers may then be null.
  for (auto [sq, sk] : {std::pair{0, 13}, std::pair{7, 0}, std::pair{0, 0}}) {
    AttnConfig c = small_cfg();
    c.seqlen_q = sq;
    c.seqlen_k = sk;
    FwdProblem pr = make_fwd_problem(c, fresh_seed());
    if (sq == 0) pr.params.q_ptr = pr.params.o_ptr = nullptr;
    if (sk == 0) pr.params.k_ptr = pr.params.v_ptr = nullptr;
    const Status s = validate(pr.params, Backend::kCpu, false);
    EXPECT_TRUE(s.ok()) << c.str() << ": " << s.to_string();
  }
  AttnConfig c = small_cfg();
  c.b = 0;  // b = 0 is a valid no-op call
  FwdProblem pr = make_fwd_problem(c, fresh_seed());
  const Status s = validate(pr.params, Backend::kCpu, false);
  EXPECT_TRUE(s.ok()) << s.to_string();
}

TEST(ValidationValid, VarlenWithZeroLengthSequencesPasses) {
  AttnConfig c = varlen_cfg();
  c.seqused_k = {7, 0, 0, 5};
  FwdProblem pr = make_fwd_problem(c, fresh_seed());
  const Status s = validate(pr.params, Backend::kCpu, true);
  EXPECT_TRUE(s.ok()) << s.to_string();
  // Every sequence empty.
  c.seqlens_q = {0, 0};
  c.seqlens_k = {0, 0};
  c.seqused_k.clear();
  c.b = 2;
  FwdProblem empty = make_fwd_problem(c, fresh_seed());
  EXPECT_TRUE(validate(empty.params, Backend::kCpu, true).ok());
}

TEST(ValidationValid, MqaAndGqaPass) {
  for (int hk : {1, 2, 4, 8}) {
    AttnConfig c = gpu_cfg();
    c.h = 8;
    c.h_k = hk;
    FwdProblem pr = make_fwd_problem(c, fresh_seed());
    EXPECT_TRUE(validate(pr.params, Backend::kCpu, false).ok()) << c.str();
    EXPECT_TRUE(validate(pr.params, Backend::kCuda, false).ok()) << c.str();
  }
}

TEST(ValidationValid, PackedQkvStridesPass) {
  // flash_attn_qkvpacked_func: q, k, v are views of one (b, s, 3, h, d) tensor.
  const int b = 3, s = 11, h = 2, d = 64;
  Buffer qkv = Buffer::make(DType::kBFloat16, int64_t(b) * s * 3 * h * d);
  Buffer o = Buffer::make(DType::kBFloat16, int64_t(b) * s * h * d);
  std::vector<float> lse(size_t(b) * h * s);
  FwdParams p;
  p.dtype = DType::kBFloat16;
  p.b = b;
  p.seqlen_q = p.seqlen_k = s;
  p.h = p.h_k = h;
  p.d = d;
  p.q_ptr = qkv.data();
  p.k_ptr = shift(qkv.data(), int64_t(h) * d * 2);
  p.v_ptr = shift(qkv.data(), int64_t(2) * h * d * 2);
  p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = int64_t(s) * 3 * h * d;
  p.q_row_stride = p.k_row_stride = p.v_row_stride = 3 * h * d;
  p.q_head_stride = p.k_head_stride = p.v_head_stride = d;
  p.o_ptr = o.data();
  p.o_batch_stride = int64_t(s) * h * d;
  p.o_row_stride = h * d;
  p.o_head_stride = d;
  p.softmax_lse_ptr = lse.data();
  EXPECT_TRUE(validate(p, Backend::kCpu, false).ok());
  EXPECT_TRUE(validate(p, Backend::kCuda, false).ok());
}

TEST(ValidationValid, TransposedAndBroadcastLayoutsPass) {
  // q/o stored (b, h, s, d): head stride s*d, row stride d. k broadcast over the batch (batch
  // stride 0: one shared prefix read by every sequence) is a legitimate read-only input.
  AttnConfig c = gpu_cfg();
  FwdProblem pr = make_fwd_problem(c, fresh_seed());
  FwdParams& p = pr.params;
  p.q_head_stride = p.o_head_stride = int64_t(c.seqlen_q) * c.d;
  p.q_row_stride = p.o_row_stride = c.d;
  p.k_batch_stride = 0;
  EXPECT_TRUE(validate(p, Backend::kCpu, false).ok());
  EXPECT_TRUE(validate(p, Backend::kCuda, false).ok());
}

TEST(ValidationValid, OutputInterleavedWithInputWithoutSharingPasses) {
  // q and o as the two halves of one (b, s, 2, h, d) buffer: their byte ranges interleave but no
  // element is shared, so this is not aliasing.
  AttnConfig c = gpu_cfg();
  FwdProblem pr = make_fwd_problem(c, fresh_seed());
  Buffer qo = Buffer::make(c.dtype, int64_t(c.b) * c.seqlen_q * 2 * c.h * c.d);
  FwdParams& p = pr.params;
  p.q_ptr = qo.data();
  p.o_ptr = shift(qo.data(), int64_t(c.h) * c.d * 2);
  p.q_batch_stride = p.o_batch_stride = int64_t(c.seqlen_q) * 2 * c.h * c.d;
  p.q_row_stride = p.o_row_stride = 2 * c.h * c.d;
  p.q_head_stride = p.o_head_stride = c.d;
  EXPECT_TRUE(validate(p, Backend::kCpu, false).ok());
  EXPECT_TRUE(validate(p, Backend::kCuda, false).ok());
  // Shifted by 8 elements, o's heads now overlap q's.
  p.o_ptr = shift(qo.data(), int64_t(c.h) * c.d * 2 + 8 * 2);
  EXPECT_TRUE(Rejected(validate(p, Backend::kCpu, false), "o_ptr"));
}

TEST(ValidationValid, PagedProblemsPass) {
  AttnConfig c = small_cfg();
  for (int page : {1, 3, 16}) {
    FwdProblem pr = flashattn::testing::to_paged(make_fwd_problem(c, fresh_seed()), page,
                                                 fresh_seed());
    const Status s = validate(pr.params, Backend::kCpu, false);
    EXPECT_TRUE(s.ok()) << "page " << page << ": " << s.to_string();
  }
  FwdProblem pv = flashattn::testing::to_paged(make_fwd_problem(varlen_cfg(), fresh_seed()), 4,
                                               fresh_seed());
  const Status s = validate(pv.params, Backend::kCpu, true);
  EXPECT_TRUE(s.ok()) << s.to_string();
}

TEST(ValidationValid, DeviceIndexArraysAreNotRead) {
  // On the GPU path cu_seqlens/seqused_k/block_table live in device memory: validation must not
  // dereference them. Bogus (aligned, unmapped) addresses would crash this test if it did.
  AttnConfig c = varlen_cfg();
  c.dtype = DType::kBFloat16;
  c.d = 32;
  FwdProblem pr = make_fwd_problem(c, fresh_seed());
  const int* bogus = reinterpret_cast<const int*>(uintptr_t(64));
  pr.params.cu_seqlens_q = bogus;
  pr.params.cu_seqlens_k = bogus + 64;
  pr.params.seqused_k = bogus + 128;
  const Status s = validate(pr.params, Backend::kCuda, true);
  EXPECT_TRUE(s.ok()) << s.to_string();
}

// ============================================================================ dtype, sizes ==

TEST(ValidationFwd, UnknownDtype) {
  expect_fwd_rejected(small_cfg(), "dtype",
                      [](FwdProblem& pr) { pr.params.dtype = static_cast<DType>(7); });
}

TEST(ValidationFwd, Fp32IsNotAGpuDtype) {
  AttnConfig c = small_cfg();
  FwdProblem pr = make_fwd_problem(c, fresh_seed());
  const Status s = validate(pr.params, Backend::kCuda, false);
  EXPECT_TRUE(Rejected(s, "dtype"));
  EXPECT_NE(s.message().find("fp32 is not supported on the GPU"), std::string::npos)
      << s.message();
}

TEST(ValidationFwd, NegativeBatch) {
  expect_fwd_rejected(small_cfg(), "b", [](FwdProblem& pr) { pr.params.b = -1; });
}

TEST(ValidationFwd, NegativeSeqlenQ) {
  expect_fwd_rejected(small_cfg(), "seqlen_q", [](FwdProblem& pr) { pr.params.seqlen_q = -3; });
}

TEST(ValidationFwd, NegativeSeqlenK) {
  expect_fwd_rejected(small_cfg(), "seqlen_k", [](FwdProblem& pr) { pr.params.seqlen_k = -1; });
}

TEST(ValidationFwd, ZeroHeads) {
  expect_fwd_rejected(small_cfg(), "h", [](FwdProblem& pr) { pr.params.h = 0; });
}

TEST(ValidationFwd, ZeroKvHeads) {
  expect_fwd_rejected(small_cfg(), "h_k", [](FwdProblem& pr) { pr.params.h_k = 0; });
}

TEST(ValidationFwd, HeadsNotMultipleOfKvHeads) {
  AttnConfig c = small_cfg();
  c.h = 12;
  c.h_k = 4;
  const uint64_t seed = fresh_seed();
  FwdProblem pr = make_fwd_problem(c, seed);
  pr.params.h_k = 5;
  const Status s = flashattn::mha_fwd(pr.params);
  EXPECT_TRUE(Rejected(s, "h"));
  EXPECT_NE(s.message().find("12 is not a multiple of h_k = 5"), std::string::npos)
      << s.message();
  EXPECT_TRUE(all_nan(pr.o));
}

TEST(ValidationFwd, HeadDimOutOfRange) {
  expect_fwd_rejected(small_cfg(), "d", [](FwdProblem& pr) { pr.params.d = 0; });
  expect_fwd_rejected(small_cfg(), "d", [](FwdProblem& pr) { pr.params.d = 577; });
}

// Head dims past 256 (MLA decode's 576 / 512) run on the CPU backend only; the GPU refuses them
// naming the limit.
TEST(ValidationFwd, HeadDimsPast256AreCpuOnly) {
  AttnConfig c = gpu_cfg();
  c.d = 576;
  c.dv = 512;
  FwdProblem pr = make_fwd_problem(c, fresh_seed());
  EXPECT_TRUE(validate(pr.params, Backend::kCpu, false).ok());
  const Status s = validate(pr.params, Backend::kCuda, false);
  EXPECT_TRUE(Rejected(s, "d"));
  EXPECT_NE(s.message().find("on the GPU"), std::string::npos) << s.message();
  c.d = 256;
  FwdProblem v = make_fwd_problem(c, fresh_seed());
  EXPECT_TRUE(Rejected(validate(v.params, Backend::kCuda, false), "dv"));
}

TEST(ValidationFwd, GpuHeadDimNotMultipleOf8) {
  AttnConfig c = gpu_cfg();
  c.d = 20;  // fine on the CPU
  FwdProblem pr = make_fwd_problem(c, fresh_seed());
  EXPECT_TRUE(validate(pr.params, Backend::kCpu, false).ok());
  EXPECT_TRUE(Rejected(validate(pr.params, Backend::kCuda, false), "d"));
}

// ============================================================================ pointers ==

TEST(ValidationFwd, NullQ) {
  expect_fwd_rejected(small_cfg(), "q_ptr", [](FwdProblem& pr) { pr.params.q_ptr = nullptr; });
}

TEST(ValidationFwd, NullK) {
  expect_fwd_rejected(small_cfg(), "k_ptr", [](FwdProblem& pr) { pr.params.k_ptr = nullptr; });
}

TEST(ValidationFwd, NullV) {
  expect_fwd_rejected(small_cfg(), "v_ptr", [](FwdProblem& pr) { pr.params.v_ptr = nullptr; });
}

TEST(ValidationFwd, NullO) {
  expect_fwd_rejected(small_cfg(), "o_ptr", [](FwdProblem& pr) { pr.params.o_ptr = nullptr; });
}

TEST(ValidationFwd, MisalignedElementPointer) {
  // An fp32 tensor must start on a 4-byte boundary.
  expect_fwd_rejected(small_cfg(), "k_ptr",
                      [](FwdProblem& pr) { pr.params.k_ptr = shift(pr.k.data(), 2); });
}

// ============================================================================ strides ==

TEST(ValidationFwd, NegativeStride) {
  expect_fwd_rejected(small_cfg(), "q_head_stride",
                      [](FwdProblem& pr) { pr.params.q_head_stride = -pr.params.d; });
}

TEST(ValidationFwd, OutputHeadsOverlap) {
  expect_fwd_rejected(small_cfg(), "o_head_stride",
                      [](FwdProblem& pr) { pr.params.o_head_stride = pr.params.d / 2; });
}

TEST(ValidationFwd, OutputRowsOverlap) {
  // Rows one head apart: row r + 1 starts inside row r.
  expect_fwd_rejected(small_cfg(), "o_row_stride",
                      [](FwdProblem& pr) { pr.params.o_row_stride = pr.params.d; });
}

TEST(ValidationFwd, OutputBatchesOverlap) {
  // An expand()ed output (batch stride 0) would have every sequence write the same rows.
  expect_fwd_rejected(small_cfg(), "o_batch_stride",
                      [](FwdProblem& pr) { pr.params.o_batch_stride = 0; });
}

TEST(ValidationFwd, GpuMisalignedBasePointer) {
  // Element-aligned (fine on the CPU) but not 16-byte aligned.
  expect_gpu_rejected(gpu_cfg(), "q_ptr",
                      [](FwdProblem& pr) { pr.params.q_ptr = shift(pr.q.data(), 2 * 4); });
}

TEST(ValidationFwd, GpuStrideNotMultipleOf8) {
  expect_gpu_rejected(gpu_cfg(), "k_row_stride",
                      [](FwdProblem& pr) { pr.params.k_row_stride += 4; });
}

// ============================================================================ aliasing ==

TEST(ValidationFwd, OutputAliasesQuery) {
  expect_fwd_rejected(small_cfg(), "o_ptr", [](FwdProblem& pr) {
    pr.params.o_ptr = pr.q.data();  // same layout as q: o would overwrite q while reading it
  });
}

TEST(ValidationFwd, OutputOverlapsKeyRange) {
  expect_fwd_rejected(small_cfg(), "o_ptr", [](FwdProblem& pr) {
    // o starts in the middle of k's range (k is larger than o: s_k > s_q).
    pr.params.o_ptr = shift(pr.k.data(), 4 * 5);
  });
}

TEST(ValidationFwd, LseOverlapsValue) {
  expect_fwd_rejected(small_cfg(), "softmax_lse_ptr", [](FwdProblem& pr) {
    pr.params.softmax_lse_ptr = reinterpret_cast<float*>(pr.v.data()) + 3;
  });
}

// ===================================================================== scalar options ==

TEST(ValidationFwd, WindowLeftBelowMinusOne) {
  expect_fwd_rejected(small_cfg(), "window_size_left", [](FwdProblem& pr) {
    pr.params.window_size_left = -2;
  });
}

TEST(ValidationFwd, WindowRightBelowMinusOne) {
  expect_fwd_rejected(small_cfg(), "window_size_right", [](FwdProblem& pr) {
    pr.params.window_size_right = -7;
  });
}

TEST(ValidationFwd, SoftmaxScaleNotFinite) {
  expect_fwd_rejected(small_cfg(), "softmax_scale",
                      [](FwdProblem& pr) { pr.params.softmax_scale = kInf; });
  expect_fwd_rejected(small_cfg(), "softmax_scale",
                      [](FwdProblem& pr) { pr.params.softmax_scale = kNaN; });
}

TEST(ValidationFwd, SoftcapNegativeOrNotFinite) {
  expect_fwd_rejected(small_cfg(), "softcap", [](FwdProblem& pr) { pr.params.softcap = -1.f; });
  expect_fwd_rejected(small_cfg(), "softcap", [](FwdProblem& pr) { pr.params.softcap = kInf; });
}

TEST(ValidationFwd, SoftcapWithDropout) {
  AttnConfig c = small_cfg();
  c.p_dropout = 0.1f;
  expect_fwd_rejected(c, "p_dropout", [](FwdProblem& pr) { pr.params.softcap = 50.f; });
}

TEST(ValidationFwd, DropoutOutOfRange) {
  for (float p : {1.f, -0.25f, 1.5f, kNaN})
    expect_fwd_rejected(small_cfg(), "p_dropout",
                        [p](FwdProblem& pr) { pr.params.p_dropout = p; });
}

TEST(ValidationFwd, AlibiBatchStrideTooSmall) {
  AttnConfig c = small_cfg();
  c.alibi = true;
  c.alibi_per_batch = true;
  expect_fwd_rejected(c, "alibi_slopes_batch_stride", [](FwdProblem& pr) {
    pr.params.alibi_slopes_batch_stride = pr.params.h - 1;
  });
}

TEST(ValidationFwd, NumSplitsOutOfRange) {
  expect_fwd_rejected(small_cfg(), "num_splits", [](FwdProblem& pr) { pr.params.num_splits = -1; });
  expect_fwd_rejected(small_cfg(), "num_splits",
                      [](FwdProblem& pr) { pr.params.num_splits = 129; });
}

TEST(ValidationFwd, NumSplitsWithDropout) {
  AttnConfig c = small_cfg();
  c.p_dropout = 0.2f;
  expect_fwd_rejected(c, "num_splits", [](FwdProblem& pr) { pr.params.num_splits = 2; });
}

TEST(ValidationFwd, NumSplitsWithProbabilities) {
  AttnConfig c = small_cfg();
  c.return_probs = true;
  expect_fwd_rejected(c, "num_splits", [](FwdProblem& pr) { pr.params.num_splits = 4; });
}

TEST(ValidationFwd, ProbabilitiesOverlapOutput) {
  AttnConfig c = small_cfg();
  c.return_probs = true;
  expect_fwd_rejected(c, "o_ptr", [](FwdProblem& pr) { pr.params.p_ptr = pr.o.data(); });
}

// ============================================================================== varlen ==

TEST(ValidationVarlen, DenseEntryForbidsCuSeqlens) {
  expect_fwd_rejected(varlen_cfg(), "cu_seqlens_q", [](FwdProblem&) {}, /*varlen=*/false);
}

TEST(ValidationVarlen, VarlenEntryRequiresCuSeqlensQ) {
  expect_fwd_rejected(varlen_cfg(), "cu_seqlens_q",
                      [](FwdProblem& pr) { pr.params.cu_seqlens_q = nullptr; });
}

TEST(ValidationVarlen, VarlenEntryRequiresCuSeqlensK) {
  expect_fwd_rejected(varlen_cfg(), "cu_seqlens_k",
                      [](FwdProblem& pr) { pr.params.cu_seqlens_k = nullptr; });
}

TEST(ValidationVarlen, VarlenEntryOnDenseProblem) {
  expect_fwd_rejected(small_cfg(), "cu_seqlens_q", [](FwdProblem&) {}, /*varlen=*/true);
}

TEST(ValidationVarlen, NegativeTotal) {
  expect_fwd_rejected(varlen_cfg(), "total_q", [](FwdProblem& pr) { pr.params.total_q = -1; });
  expect_fwd_rejected(varlen_cfg(), "total_k", [](FwdProblem& pr) { pr.params.total_k = -4; });
}

TEST(ValidationVarlen, CuSeqlensMustStartAtZero) {
  expect_fwd_rejected(varlen_cfg(), "cu_seqlens_q", [](FwdProblem& pr) { pr.cu_q[0] = 1; });
}

TEST(ValidationVarlen, CuSeqlensMustNotDecrease) {
  expect_fwd_rejected(varlen_cfg(), "cu_seqlens_k", [](FwdProblem& pr) {
    // cu_k = {0, 7, 10, 10, 21}: make entry 2 dip below entry 1.
    pr.cu_k[2] = 5;
  });
}

TEST(ValidationVarlen, SequenceLongerThanMaxSeqlen) {
  expect_fwd_rejected(varlen_cfg(), "cu_seqlens_q",
                      [](FwdProblem& pr) { pr.params.seqlen_q = 8; });  // longest is 9
  expect_fwd_rejected(varlen_cfg(), "cu_seqlens_k",
                      [](FwdProblem& pr) { pr.params.seqlen_k = 10; });  // longest is 11
}

TEST(ValidationVarlen, LastCuSeqlenIsNotTotal) {
  expect_fwd_rejected(varlen_cfg(), "cu_seqlens_q",
                      [](FwdProblem& pr) { pr.params.total_q -= 1; });
  expect_fwd_rejected(varlen_cfg(), "cu_seqlens_k",
                      [](FwdProblem& pr) { pr.params.total_k -= 2; });
}

TEST(ValidationVarlen, SequsedKOutOfRange) {
  AttnConfig c = varlen_cfg();
  c.seqused_k = {7, 3, 0, 11};
  expect_fwd_rejected(c, "seqused_k", [](FwdProblem& pr) { pr.seqused_k[1] = 4; });
  expect_fwd_rejected(c, "seqused_k", [](FwdProblem& pr) { pr.seqused_k[3] = -1; });
}

TEST(ValidationVarlen, DenseSequsedKAboveSeqlenK) {
  expect_fwd_rejected(small_cfg(), "seqused_k", [](FwdProblem& pr) {
    pr.seqused_k = {13, 14};
    pr.params.seqused_k = pr.seqused_k.data();
  });
}

TEST(ValidationVarlen, ProbabilitiesAreDenseOnly) {
  expect_fwd_rejected(varlen_cfg(), "p_ptr", [](FwdProblem& pr) {
    pr.p = Buffer::make(DType::kFloat32, 4 * 4 * 9 * 11);
    pr.p.fill_nan();
    pr.params.p_ptr = pr.p.data();
  });
}

// =============================================================================== paged ==

FwdProblem paged_problem(const AttnConfig& c, int page) {
  return flashattn::testing::to_paged(make_fwd_problem(c, fresh_seed()), page, fresh_seed());
}

void expect_paged_rejected(const AttnConfig& c, const std::string& arg,
                           const std::function<void(FwdProblem&)>& brk) {
  FwdProblem pr = paged_problem(c, 4);
  ASSERT_TRUE(validate(pr.params, Backend::kCpu, c.varlen()).ok());
  brk(pr);
  const Status s =
      c.varlen() ? flashattn::mha_varlen_fwd(pr.params) : flashattn::mha_fwd(pr.params);
  EXPECT_TRUE(Rejected(s, arg));
  EXPECT_TRUE(all_nan(pr.o));
  EXPECT_TRUE(all_nan(pr.lse));
}

TEST(ValidationPaged, PageSizeMustBePositive) {
  expect_paged_rejected(small_cfg(), "page_block_size",
                        [](FwdProblem& pr) { pr.params.page_block_size = 0; });
}

TEST(ValidationPaged, NumBlocksMustBePositive) {
  expect_paged_rejected(small_cfg(), "num_blocks",
                        [](FwdProblem& pr) { pr.params.num_blocks = 0; });
}

TEST(ValidationPaged, MaxBlocksMustBePositive) {
  expect_paged_rejected(small_cfg(), "max_blocks_per_seq",
                        [](FwdProblem& pr) { pr.params.max_blocks_per_seq = 0; });
}

TEST(ValidationPaged, BlockTableRowsMustNotOverlap) {
  expect_paged_rejected(small_cfg(), "block_table_batch_stride", [](FwdProblem& pr) {
    pr.params.block_table_batch_stride = pr.params.max_blocks_per_seq - 1;
  });
}

TEST(ValidationPaged, CapacityBelowSeqlenK) {
  // 13 keys in pages of 4 need 4 pages.
  expect_paged_rejected(small_cfg(), "seqlen_k",
                        [](FwdProblem& pr) { pr.params.max_blocks_per_seq = 3; });
}

TEST(ValidationPaged, BlockTableEntryOutOfRange) {
  expect_paged_rejected(small_cfg(), "block_table", [](FwdProblem& pr) {
    pr.block_table[pr.params.max_blocks_per_seq + 1] = pr.params.num_blocks;
  });
  expect_paged_rejected(small_cfg(), "block_table",
                        [](FwdProblem& pr) { pr.block_table[0] = -1; });
}

TEST(ValidationPaged, VarlenBlockTableEntryOutOfRange) {
  // Sequence 3 has 11 keys: pages 0..2 of its row are used.
  expect_paged_rejected(varlen_cfg(), "block_table", [](FwdProblem& pr) {
    pr.block_table[3 * pr.params.block_table_batch_stride + 2] = 1 << 20;
  });
}

TEST(ValidationPaged, UnusedBlockTableEntriesAreNotChecked) {
  // Sequence 2 of varlen_cfg has no keys: its row may hold anything.
  FwdProblem pr = paged_problem(varlen_cfg(), 4);
  for (int j = 0; j < pr.params.max_blocks_per_seq; ++j)
    pr.block_table[2 * pr.params.block_table_batch_stride + j] = -1;
  const Status s = validate(pr.params, Backend::kCpu, true);
  EXPECT_TRUE(s.ok()) << s.to_string();
}

// ============================================================================ backward ==

BwdProblem bwd_problem(const AttnConfig& c) {
  BwdProblem bp = flashattn::testing::make_bwd_problem(c, fresh_seed());
  // Validation needs o/lse to exist, not to hold a forward's result.
  return bp;
}

void expect_bwd_rejected(const AttnConfig& cfg, const std::string& arg,
                         const std::function<void(BwdProblem&)>& brk) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(cfg.str() + " seed=" + std::to_string(seed));
  BwdProblem bp = flashattn::testing::make_bwd_problem(cfg, seed);
  ASSERT_TRUE(validate(bp.params, Backend::kCpu, cfg.varlen()).ok());
  brk(bp);
  const auto dout = bp.dout.bytes, q = bp.fwd.q.bytes;
  const Status s = cfg.varlen() ? flashattn::mha_varlen_bwd(bp.params)
                                : flashattn::mha_bwd(bp.params);
  EXPECT_TRUE(Rejected(s, arg));
  EXPECT_TRUE(all_nan(bp.dq)) << "dq was written by a rejected call";
  EXPECT_TRUE(all_nan(bp.dk)) << "dk was written by a rejected call";
  EXPECT_TRUE(all_nan(bp.dv)) << "dv was written by a rejected call";
  EXPECT_TRUE(all_nan(bp.dsinks)) << "dsinks was written by a rejected call";
  EXPECT_TRUE(dout == bp.dout.bytes && q == bp.fwd.q.bytes) << "an input changed";
}

TEST(ValidationBwd, BaselinesPass) {
  for (const AttnConfig& c : {small_cfg(), varlen_cfg(), gpu_cfg()}) {
    BwdProblem bp = bwd_problem(c);
    const Status s = validate(bp.params, Backend::kCpu, c.varlen());
    EXPECT_TRUE(s.ok()) << c.str() << ": " << s.to_string();
  }
  BwdProblem bp = bwd_problem(gpu_cfg());
  EXPECT_TRUE(validate(bp.params, Backend::kCuda, false).ok());
}

TEST(ValidationBwd, PackedGradientsPass) {
  // dq, dk, dv as views of one (b, s, 3, h, d) dqkv (flash_attn_qkvpacked_func's backward).
  AttnConfig c = gpu_cfg();
  c.seqlen_k = c.seqlen_q;
  c.h_k = c.h;
  BwdProblem bp = bwd_problem(c);
  Buffer dqkv = Buffer::make(c.dtype, int64_t(c.b) * c.seqlen_q * 3 * c.h * c.d);
  BwdParams& p = bp.params;
  const int64_t part = int64_t(c.h) * c.d * 2;
  p.dq_ptr = dqkv.data();
  p.dk_ptr = shift(dqkv.data(), part);
  p.dv_ptr = shift(dqkv.data(), 2 * part);
  p.dq_batch_stride = p.dk_batch_stride = p.dv_batch_stride =
      int64_t(c.seqlen_q) * 3 * c.h * c.d;
  p.dq_row_stride = p.dk_row_stride = p.dv_row_stride = 3 * c.h * c.d;
  p.dq_head_stride = p.dk_head_stride = p.dv_head_stride = c.d;
  Status s = validate(p, Backend::kCuda, false);
  EXPECT_TRUE(s.ok()) << s.to_string();
  // dk shifted half a head into dq's slot: now they share elements.
  p.dk_ptr = shift(dqkv.data(), part - c.d);
  EXPECT_TRUE(Rejected(validate(p, Backend::kCpu, false), "dq_ptr"));
}

// dqkv_fp32: the gradient tensors are checked as fp32 tensors (alignment, span, overlap).
TEST(ValidationBwd, Fp32GradientsAreFp32Tensors) {
  const AttnConfig c = gpu_cfg();  // bf16
  BwdProblem bp = bwd_problem(c);
  for (Buffer* g : {&bp.dq, &bp.dk, &bp.dv}) *g = g->converted(DType::kFloat32);
  bp.bind();
  bp.params.dqkv_fp32 = true;
  bp.params.dqkv_accumulate = true;
  Status s = validate(bp.params, Backend::kCpu, false);
  EXPECT_TRUE(s.ok()) << s.to_string();
  // A 2-byte offset is a valid bf16 address but not a float's.
  BwdParams p = bp.params;
  p.dk_ptr = shift(bp.dk.data(), 2);
  s = validate(p, Backend::kCpu, false);
  EXPECT_TRUE(Rejected(s, "dk_ptr"));
  EXPECT_NE(s.message().find("4-byte element size"), std::string::npos) << s.message();
  // dv starting in the second half of dq's fp32 bytes overlaps it (in bf16 units it would not).
  p = bp.params;
  const int64_t dq_bytes = bp.dq.numel * 4;
  Buffer both = Buffer::make(DType::kFloat32, bp.dq.numel + bp.dv.numel);
  p.dq_ptr = both.data();
  p.dv_ptr = shift(both.data(), dq_bytes / 2 / 4 * 4);
  EXPECT_TRUE(Rejected(validate(p, Backend::kCpu, false), "dq_ptr"));
  p.dv_ptr = shift(both.data(), dq_bytes);
  EXPECT_TRUE(validate(p, Backend::kCpu, false).ok());
}

TEST(ValidationBwd, NullDout) {
  expect_bwd_rejected(small_cfg(), "do_ptr", [](BwdProblem& bp) { bp.params.do_ptr = nullptr; });
}

TEST(ValidationBwd, NullDq) {
  expect_bwd_rejected(small_cfg(), "dq_ptr", [](BwdProblem& bp) { bp.params.dq_ptr = nullptr; });
}

TEST(ValidationBwd, NullDk) {
  expect_bwd_rejected(small_cfg(), "dk_ptr", [](BwdProblem& bp) { bp.params.dk_ptr = nullptr; });
}

TEST(ValidationBwd, NullDv) {
  expect_bwd_rejected(small_cfg(), "dv_ptr", [](BwdProblem& bp) { bp.params.dv_ptr = nullptr; });
}

TEST(ValidationBwd, NullForwardOutput) {
  expect_bwd_rejected(small_cfg(), "o_ptr", [](BwdProblem& bp) { bp.params.o_ptr = nullptr; });
}

TEST(ValidationBwd, LseRequired) {
  expect_bwd_rejected(small_cfg(), "softmax_lse_ptr",
                      [](BwdProblem& bp) { bp.params.softmax_lse_ptr = nullptr; });
}

TEST(ValidationBwd, PagedHasNoBackward) {
  const AttnConfig c = small_cfg();
  BwdProblem bp = bwd_problem(c);
  FwdProblem paged = paged_problem(c, 4);
  static_cast<FwdParams&>(bp.params) = paged.params;
  bp.params.do_ptr = bp.dout.data();
  bp.params.dq_ptr = bp.dq.data();
  bp.params.dk_ptr = bp.dk.data();
  bp.params.dv_ptr = bp.dv.data();
  const Status s = flashattn::mha_bwd(bp.params);
  EXPECT_TRUE(Rejected(s, "block_table"));
  EXPECT_NE(s.message().find("paged KV has no backward"), std::string::npos) << s.message();
  EXPECT_TRUE(all_nan(bp.dq) && all_nan(bp.dk) && all_nan(bp.dv));
}

TEST(ValidationBwd, ProbabilitiesPointerMustBeNull) {
  expect_bwd_rejected(small_cfg(), "p_ptr", [](BwdProblem& bp) {
    bp.fwd.p = Buffer::make(DType::kFloat32, 2 * 4 * 7 * 13);
    bp.params.p_ptr = bp.fwd.p.data();
  });
}

TEST(ValidationBwd, GradientsMustNotAlias) {
  expect_bwd_rejected(small_cfg(), "dq_ptr",
                      [](BwdProblem& bp) { bp.params.dk_ptr = bp.dq.data(); });
}

TEST(ValidationBwd, GradientMustNotAliasInput) {
  expect_bwd_rejected(small_cfg(), "dk_ptr",
                      [](BwdProblem& bp) { bp.params.dk_ptr = bp.fwd.k.data(); });
}

TEST(ValidationBwd, NegativeDoutStride) {
  expect_bwd_rejected(small_cfg(), "do_row_stride",
                      [](BwdProblem& bp) { bp.params.do_row_stride = -1; });
}

TEST(ValidationBwd, GradientHeadsOverlap) {
  expect_bwd_rejected(small_cfg(), "dv_head_stride",
                      [](BwdProblem& bp) { bp.params.dv_head_stride = 1; });
}

TEST(ValidationBwd, VarlenRequiresCuSeqlens) {
  expect_bwd_rejected(varlen_cfg(), "cu_seqlens_k",
                      [](BwdProblem& bp) { bp.params.cu_seqlens_k = nullptr; });
}

TEST(ValidationBwd, VarlenCuSeqlensValues) {
  expect_bwd_rejected(varlen_cfg(), "cu_seqlens_q",
                      [](BwdProblem& bp) { bp.fwd.cu_q[2] = bp.fwd.cu_q[1] - 1; });
}

TEST(ValidationBwd, DropoutRulesApply) {
  AttnConfig c = small_cfg();
  c.p_dropout = 0.3f;
  expect_bwd_rejected(c, "p_dropout", [](BwdProblem& bp) { bp.params.softcap = 5.f; });
}

// ================================================================== sinks and dv != d ==

// Sinks and a V head dim of its own, on every entry point's baseline shapes.
AttnConfig with_sinks_dv(AttnConfig c, int dv) {
  c.sinks = true;
  c.dv = dv;
  return c;
}

TEST(ValidationValid, SinksAndOwnValueHeadDimPass) {
  for (const AttnConfig& c : {with_sinks_dv(small_cfg(), 24), with_sinks_dv(varlen_cfg(), 5),
                              with_sinks_dv(small_cfg(), 0)}) {
    FwdProblem pr = make_fwd_problem(c, fresh_seed());
    Status s = validate(pr.params, Backend::kCpu, c.varlen());
    EXPECT_TRUE(s.ok()) << c.str() << ": " << s.to_string();
    BwdProblem bp = bwd_problem(c);
    s = validate(bp.params, Backend::kCpu, c.varlen());
    EXPECT_TRUE(s.ok()) << c.str() << ": " << s.to_string();
    bp.params.dsinks = nullptr;  // the sinks' gradient is optional
    EXPECT_TRUE(validate(bp.params, Backend::kCpu, c.varlen()).ok());
  }
  // Valid for the GPU rules as well (the GPU dispatch then says NotSupported: validation never
  // does, test_gpu_sinks_dv.cu).
  const AttnConfig g = with_sinks_dv(gpu_cfg(), 64);
  FwdProblem pr = make_fwd_problem(g, fresh_seed());
  EXPECT_TRUE(validate(pr.params, Backend::kCuda, false).ok());
  BwdProblem bp = bwd_problem(g);
  EXPECT_TRUE(validate(bp.params, Backend::kCuda, false).ok());
}

TEST(ValidationFwd, ValueHeadDimOutOfRange) {
  expect_fwd_rejected(small_cfg(), "dv", [](FwdProblem& pr) { pr.params.dv = -1; });
  expect_fwd_rejected(small_cfg(), "dv", [](FwdProblem& pr) { pr.params.dv = 577; });
}

TEST(ValidationFwd, GpuValueHeadDimNotMultipleOf8) {
  AttnConfig c = gpu_cfg();
  c.dv = 20;  // fine on the CPU
  FwdProblem pr = make_fwd_problem(c, fresh_seed());
  EXPECT_TRUE(validate(pr.params, Backend::kCpu, false).ok());
  EXPECT_TRUE(Rejected(validate(pr.params, Backend::kCuda, false), "dv"));
}

TEST(ValidationFwd, OutputAndValueHaveTheValueHeadDim) {
  // d = 16, dv = 24: a head stride of d elements makes o's heads overlap, since o is checked
  // with rows of dv columns.
  const AttnConfig c = with_sinks_dv(small_cfg(), 24);
  expect_fwd_rejected(c, "o_head_stride", [](FwdProblem& pr) { pr.params.o_head_stride = 16; });
  // dv = 0 means d: o is then checked with rows of 16 columns, which that stride fits.
  FwdProblem pr = make_fwd_problem(c, fresh_seed());
  pr.params.dv = 0;
  pr.params.o_head_stride = 16;
  EXPECT_TRUE(validate(pr.params, Backend::kCpu, false).ok());
}

TEST(ValidationFwd, MisalignedSinks) {
  expect_fwd_rejected(with_sinks_dv(small_cfg(), 0), "sinks", [](FwdProblem& pr) {
    pr.params.sinks = reinterpret_cast<const float*>(shift(pr.sinks.data(), 2));
  });
}

TEST(ValidationFwd, LseMustNotAliasSinks) {
  expect_fwd_rejected(with_sinks_dv(small_cfg(), 0), "softmax_lse_ptr",
                      [](FwdProblem& pr) { pr.params.softmax_lse_ptr = pr.sinks.data(); });
}

TEST(ValidationBwd, DsinksNeedSinks) {
  const AttnConfig c = with_sinks_dv(small_cfg(), 0);
  expect_bwd_rejected(c, "dsinks", [](BwdProblem& bp) { bp.params.sinks = nullptr; });
}

TEST(ValidationBwd, DsinksMustNotAliasSinks) {
  const AttnConfig c = with_sinks_dv(small_cfg(), 0);
  expect_bwd_rejected(c, "dsinks", [](BwdProblem& bp) { bp.params.dsinks = bp.fwd.sinks.data(); });
  expect_bwd_rejected(c, "dsinks", [](BwdProblem& bp) {
    bp.params.dsinks = reinterpret_cast<float*>(bp.fwd.v.data()) + 1;
  });
}

TEST(ValidationBwd, MisalignedDsinks) {
  const AttnConfig c = with_sinks_dv(small_cfg(), 0);
  expect_bwd_rejected(c, "dsinks", [](BwdProblem& bp) {
    bp.params.dsinks = reinterpret_cast<float*>(shift(bp.dsinks.data(), 2));
  });
}

TEST(ValidationBwd, ValueGradientHasTheValueHeadDim) {
  const AttnConfig c = with_sinks_dv(small_cfg(), 24);
  expect_bwd_rejected(c, "dv_head_stride", [](BwdProblem& bp) { bp.params.dv_head_stride = 16; });
}

// ============================================================================= combine ==

struct CombineProblem {
  int splits = 3, b = 2, s = 5, h = 3, d = 24;
  std::vector<float> out_partial, lse_partial, lse;
  Buffer out;
  CombineParams params;
};

CombineProblem make_combine(DType t) {
  CombineProblem c;
  std::mt19937_64 rng(fresh_seed());
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  c.out_partial.resize(size_t(c.splits) * c.b * c.s * c.h * c.d);
  c.lse_partial.resize(size_t(c.splits) * c.b * c.h * c.s);
  for (float& x : c.out_partial) x = u(rng);
  for (float& x : c.lse_partial) x = u(rng);
  c.lse.assign(size_t(c.b) * c.h * c.s, kNaN);
  c.out = Buffer::make(t, int64_t(c.b) * c.s * c.h * c.d);
  c.out.fill_nan();
  CombineParams& p = c.params;
  p.num_splits = c.splits;
  p.b = c.b;
  p.seqlen_q = c.s;
  p.h = c.h;
  p.d = c.d;
  p.dtype = t;
  p.out_partial = c.out_partial.data();
  p.lse_partial = c.lse_partial.data();
  p.out = c.out.data();
  p.out_batch_stride = int64_t(c.s) * c.h * c.d;
  p.out_row_stride = c.h * c.d;
  p.out_head_stride = c.d;
  p.lse = c.lse.data();
  return c;
}

void expect_combine_rejected(const std::string& arg,
                             const std::function<void(CombineProblem&)>& brk) {
  CombineProblem c = make_combine(DType::kBFloat16);
  ASSERT_TRUE(detail::validate_combine(c.params, Backend::kCpu).ok());
  brk(c);
  const auto partial = c.out_partial;
  EXPECT_TRUE(Rejected(flashattn::mha_combine(c.params), arg));
  EXPECT_TRUE(all_nan(c.out)) << "out was written by a rejected call";
  EXPECT_TRUE(all_nan(c.lse)) << "lse was written by a rejected call";
  EXPECT_TRUE(partial == c.out_partial);
}

TEST(ValidationCombine, ValidPasses) {
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    CombineProblem c = make_combine(t);
    EXPECT_TRUE(detail::validate_combine(c.params, Backend::kCpu).ok());
    EXPECT_TRUE(detail::validate_combine(c.params, Backend::kCuda).ok());
    c.params.lse = nullptr;  // the merged LSE is optional
    EXPECT_TRUE(detail::validate_combine(c.params, Backend::kCpu).ok());
  }
}

TEST(ValidationCombine, NumSplitsAtLeastOne) {
  expect_combine_rejected("num_splits", [](CombineProblem& c) { c.params.num_splits = 0; });
}

TEST(ValidationCombine, SizesInRange) {
  expect_combine_rejected("b", [](CombineProblem& c) { c.params.b = -1; });
  expect_combine_rejected("seqlen_q", [](CombineProblem& c) { c.params.seqlen_q = -2; });
  expect_combine_rejected("h", [](CombineProblem& c) { c.params.h = 0; });
  expect_combine_rejected("d", [](CombineProblem& c) { c.params.d = 600; });
}

TEST(ValidationCombine, UnknownDtype) {
  expect_combine_rejected("dtype",
                          [](CombineProblem& c) { c.params.dtype = static_cast<DType>(-1); });
}

TEST(ValidationCombine, NullPointers) {
  expect_combine_rejected("out_partial", [](CombineProblem& c) { c.params.out_partial = nullptr; });
  expect_combine_rejected("lse_partial", [](CombineProblem& c) { c.params.lse_partial = nullptr; });
  expect_combine_rejected("out", [](CombineProblem& c) { c.params.out = nullptr; });
}

TEST(ValidationCombine, OutputMustNotAliasPartials) {
  expect_combine_rejected("out", [](CombineProblem& c) {
    c.params.out = c.out_partial.data() + 10;
  });
  expect_combine_rejected("lse", [](CombineProblem& c) { c.params.lse = c.lse_partial.data(); });
}

TEST(ValidationCombine, OutputRowsOverlap) {
  expect_combine_rejected("out_row_stride", [](CombineProblem& c) { c.params.out_row_stride = 8; });
}

}  // namespace
