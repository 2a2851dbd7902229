// Tests of the SM80-path forward's inference and training features, skipped without a GPU:
//  - dense seqused_k and the KV-cache hooks (kv_batch_idx, k_leftpad of cuda::run_mha_fwd):
//    bitwise equal to the plain kernel on the same keys gathered into a fresh tensor;
//  - paged KV with page sizes 1 .. 512: bitwise equal to the contiguous layout of the same keys
//    (same math, same order), and against the CPU reference;
//  - split-KV with 1 .. 128 splits (and the heuristic): as accurate as the unsplit kernel against
//    the fp32 reference (within 2x its error), against the CPU reference, deterministic;
//  - dropout: outputs within the 2x rule of the reference drawing the same Philox mask, and the
//    keep pattern returned through p_ptr equal to the reference's sign pattern exactly;
//  - p_ptr without dropout, the combinations users combine, and large shapes against the GPU
//    fp32 reference.
// Outputs are NaN-poisoned before every call (fwd_checks_sm80.h checks every element written).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "api/validate.h"
#include "cpu/reference.h"
#include "cuda/fwd.h"
#include "flashattn/flashattn.h"
#include "gpu/fwd_checks_sm80.h"
#include "gpu/gpu_testing.h"
#include "sm80/tile_size_sm80.h"
#include "testing/problem.h"

namespace flashattn::testing {
namespace {

class FwdFeaturesSm80 : public GpuTest {};

void expect_bitwise_equal(const RunResult& a, const RunResult& b, const std::string& what) {
  ASSERT_EQ(a.o_raw.bytes.size(), b.o_raw.bytes.size()) << what;
  int64_t diff_o = 0;
  for (int64_t i = 0; i < a.o_raw.numel; ++i) {
    const float x = a.o_raw.get(i), y = b.o_raw.get(i);
    if (std::memcmp(&x, &y, sizeof(float)) != 0) ++diff_o;
  }
  EXPECT_EQ(diff_o, 0) << what << ": outputs differ bitwise";
  ASSERT_EQ(a.lse.size(), b.lse.size()) << what;
  EXPECT_EQ(0, std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)))
      << what << ": LSE differs bitwise";
}

// A dense problem run through the split-capable kernel family with the identity batch index
// (kv_batch_idx[i] = i, same math): the family the paged / KV-cache runs take, with the same
// tile, so their results can be compared bit for bit. (mha_fwd itself sends a contiguous
// request without splits to the plain family, whose tile differs: tile_size_sm80.h.)
RunResult run_gpu_split_family(const FwdProblem& pr) {
  DeviceFwdProblem dev(pr);
  std::vector<int> identity(pr.cfg.b);
  for (int i = 0; i < pr.cfg.b; ++i) identity[i] = i;
  DeviceBuffer bidx = DeviceBuffer::from(identity);
  cuda::FwdCacheArgs hooks;
  hooks.kv_batch_idx = bidx.as<int>();
  return collect(pr, dev, cuda::run_mha_fwd(detail::resolve(dev.params), hooks));
}

// The GPU fp32 reference (cuda::ref::mha_fwd) of pr: gathered o and the LSE.
struct RefResult {
  std::vector<float> o, lse;
};
RefResult gpu_reference(const FwdProblem& pr) {
  FwdProblem ref = as_fp32(pr);
  DeviceFwdProblem dref(ref);
  const Status s = cuda::ref::mha_fwd(detail::resolve(dref.params));
  EXPECT_TRUE(s.ok()) << "GPU reference: " << s.to_string();
  dref.copy_back(ref);
  return {gather_o(ref), ref.lse};
}

double max_err(const std::vector<float>& got, const std::vector<float>& want) {
  double e = 0;
  for (size_t i = 0; i < got.size(); ++i) e = std::max(e, double(std::fabs(got[i] - want[i])));
  return e;
}

// Split vs unsplit. Both compute the same exact attention, but P is rounded to the dtype for the
// P V gemm against a different running max (each split's own), so the two differ by up to the
// kernels' own rounding error, not by one output rounding (measured: up to 1 bf16 ulp of the
// larger outputs). The tight check is that splitting costs no accuracy: the split output's
// error against the fp32 reference stays within 2x the unsplit kernel's (flash_attn's 2x rule
// with the unsplit kernel as the yardstick); the LSEs agree to fp32 log/exp rounding.
void expect_split_as_accurate(const RunResult& split, const RunResult& unsplit,
                              const RefResult& ref, const std::string& what) {
  ASSERT_EQ(split.o.size(), ref.o.size());
  const double err_split = max_err(split.o, ref.o), err_unsplit = max_err(unsplit.o, ref.o);
  EXPECT_LE(err_split, 2 * err_unsplit + 1e-5)
      << what << ": split error " << err_split << " vs unsplit " << err_unsplit;
  double lse_worst = 0;
  for (size_t i = 0; i < split.lse.size(); ++i) {
    const double a = split.lse[i], b = unsplit.lse[i];
    if (std::isinf(a) || std::isinf(b)) {
      EXPECT_EQ(a, b) << what << ": LSE infinity mismatch at " << i;
      continue;
    }
    lse_worst = std::max(lse_worst, std::fabs(a - b) / std::max(1.0, std::fabs(b)));
  }
  EXPECT_LE(lse_worst, 2e-5) << what << ": split LSE off the unsplit one";
  std::printf("[fwd-features] %s split_err=%.3g unsplit_err=%.3g split_vs_unsplit=%.3g "
              "lse_rel_diff=%.3g\n",
              what.c_str(), err_split, err_unsplit, max_err(split.o, unsplit.o), lse_worst);
  std::fflush(stdout);
}

AttnConfig with_splits(AttnConfig c, int s) {
  c.num_splits = s;
  return c;
}

// ------------------------------------------------------------- dense seqused_k, cache hooks --

TEST_F(FwdFeaturesSm80, DenseSequsedK) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128}) {
      if (!hdim_compiled(d)) continue;
      for (int variant = 0; variant < 3; ++variant) {
        AttnConfig c = base(t, 3, variant == 0 ? 1 : 37, 200, 4, 2, d);
        c.causal = variant == 1;
        if (variant == 2) {
          c.window_left = 20;
          c.window_right = 3;
        }
        const uint64_t seed = fresh_seed();
        FwdProblem pr = make_fwd_problem(c, seed);
        pr.seqused_k = {0, 131, 200};
        pr.bind();
        check_small_problem("dense seqused_k", pr, seed);
      }
    }
  }
}

// The keys of `dense` (with seqused_k) copied into a KV cache [b_cache, cap, h_k, d] at rows
// leftpad[i] + j of cache batch batch_idx[i]; every other cache row is NaN. The cache call must
// equal the dense call bitwise: the same keys, the same key indices (counted from leftpad), the
// same tiles.
struct CacheCase {
  Buffer k, v;
  std::vector<int> batch_idx, leftpad, seqused;
  FwdParams params;  // host pointers for the cache, resolved
};

CacheCase make_cache_case(const FwdProblem& dense, bool use_batch_idx, bool use_leftpad,
                          uint64_t seed) {
  std::mt19937_64 rng(seed);
  const AttnConfig& c = dense.cfg;
  CacheCase cc;
  const int b_cache = c.b + 2, max_pad = 40, cap = c.seqlen_k + max_pad;
  std::vector<int> perm(b_cache);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int i = 0; i < c.b; ++i) {
    cc.batch_idx.push_back(use_batch_idx ? perm[i] : i);
    cc.leftpad.push_back(use_leftpad ? int(rng() % (max_pad + 1)) : 0);
    cc.seqused.push_back(cc.leftpad[i] + dense.seqused_k[i]);
  }
  const Layout l = Layout::make(b_cache, cap, c.h_k, c.d, false);
  cc.k = Buffer::make(c.dtype, l.numel);
  cc.v = Buffer::make(c.dtype, l.numel);
  cc.k.fill_nan();
  cc.v.fill_nan();
  const FwdParams& dp = dense.params;
  for (int i = 0; i < c.b; ++i)
    for (int j = 0; j < dense.seqused_k[i]; ++j)
      for (int hh = 0; hh < c.h_k; ++hh)
        for (int x = 0; x < c.d; ++x) {
          const int64_t src = int64_t(i) * dp.k_batch_stride + int64_t(j) * dp.k_row_stride +
                              int64_t(hh) * dp.k_head_stride + x;
          const int64_t dst = int64_t(cc.batch_idx[i]) * l.batch_stride +
                              int64_t(cc.leftpad[i] + j) * l.row_stride + hh * l.head_stride + x;
          cc.k.set(dst, dense.k.get(src));
          cc.v.set(dst, dense.v.get(src));
        }
  cc.params = detail::resolve(dp);
  cc.params.seqlen_k = cap;
  cc.params.k_batch_stride = cc.params.v_batch_stride = l.batch_stride;
  cc.params.k_row_stride = cc.params.v_row_stride = l.row_stride;
  cc.params.k_head_stride = cc.params.v_head_stride = l.head_stride;
  return cc;
}

TEST_F(FwdFeaturesSm80, CacheHooksMatchGatheredKeys) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128}) {
      if (!hdim_compiled(d)) continue;
      for (int variant = 0; variant < 6; ++variant) {
        const bool use_batch_idx = variant != 1, use_leftpad = variant != 0;
        const int splits = variant >= 3 ? 3 : 1;
        AttnConfig c = base(t, 3, variant % 2 == 0 ? 1 : 70, 300, 4, 2, d);
        c.causal = variant == 2 || variant == 4;
        if (variant == 5) {
          c.window_left = 50;
          c.alibi = true;
        }
        c.num_splits = splits;
        const uint64_t seed = fresh_seed();
        SCOPED_TRACE(c.str() + " seed=" + std::to_string(seed) + " variant=" + std::to_string(variant));
        FwdProblem dense = make_fwd_problem(c, seed);
        dense.seqused_k = {300, 0, 177};
        dense.bind();
        check_small_problem("cache hooks (gathered)", dense, seed);  // against the reference

        CacheCase cc = make_cache_case(dense, use_batch_idx, use_leftpad, seed + 1);
        DeviceFwdProblem dev(dense);
        DeviceBuffer k = DeviceBuffer::from(cc.k), v = DeviceBuffer::from(cc.v);
        DeviceBuffer bidx = DeviceBuffer::from(cc.batch_idx), lpad = DeviceBuffer::from(cc.leftpad);
        DeviceBuffer used = DeviceBuffer::from(cc.seqused);
        FwdParams p = cc.params;
        p.q_ptr = dev.params.q_ptr;
        p.o_ptr = dev.params.o_ptr;
        p.softmax_lse_ptr = dev.params.softmax_lse_ptr;
        p.alibi_slopes = dev.params.alibi_slopes;
        p.k_ptr = k.get();
        p.v_ptr = v.get();
        p.seqused_k = used.as<int>();
        cuda::FwdCacheArgs hooks;
        hooks.kv_batch_idx = use_batch_idx ? bidx.as<int>() : nullptr;
        hooks.k_leftpad = use_leftpad ? lpad.as<int>() : nullptr;
        const Status s = cuda::run_mha_fwd(p, hooks);
        ASSERT_TRUE(s.ok()) << s.to_string();
        FwdProblem out = dense;
        dev.copy_back(out);
        RunResult got;
        got.o = gather_o(out);
        got.lse = out.lse;
        got.o_raw = out.o;
        check_written(dense, got);
        const RunResult same_family = run_gpu_split_family(dense);
        ASSERT_TRUE(same_family.status.ok()) << same_family.status.to_string();
        expect_bitwise_equal(got, same_family, "cache hooks vs gathered keys");
      }
    }
  }
}

// ---------------------------------------------------------------------------------- paged --

TEST_F(FwdFeaturesSm80, PagedMatchesContiguousBitwise) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128, 256}) {
      if (!hdim_compiled(d)) continue;
      for (int page : {1, 3, 16, 64, 256, 512}) {
        // Dense: GQA + causal, s_q < s_k.
        AttnConfig c = base(t, 2, 77, 300, 4, 2, d);
        c.causal = true;
        const uint64_t seed = fresh_seed();
        SCOPED_TRACE(c.str() + " page=" + std::to_string(page) + " seed=" + std::to_string(seed));
        const FwdProblem pr = make_fwd_problem(c, seed);
        const FwdProblem pg = to_paged(pr, page, seed + 1);
        expect_bitwise_equal(run_gpu(pg), run_gpu_split_family(pr), "paged dense causal");
        // Varlen with seqused_k and a window, s_q > s_k in one sequence, an empty one; two
        // splits on both sides, so that both run the split-capable kernels (varlen takes no
        // batch-index hook).
        AttnConfig v = base(t, 4, 0, 0, 4, 1, d);
        v.num_splits = 2;
        v.seqlens_q = {17, 200, 1, 0};
        v.seqlens_k = {333, 97, 1, 64};
        v.seqused_k = {300, 97, 1, 0};
        v.window_left = 100;
        v.window_right = 10;
        const FwdProblem vr = make_fwd_problem(v, seed + 2);
        const FwdProblem vp = to_paged(vr, page, seed + 3);
        expect_bitwise_equal(run_gpu(vp), run_gpu(vr), "paged varlen window");
      }
    }
  }
}

// Block-table entries live in device memory and are never validated on the host: a sequence
// that uses an out-of-range page must come out empty (O = 0, LSE = +inf) with no read out of
// bounds, and every other sequence exactly as with a valid table.
TEST_F(FwdFeaturesSm80, PagedBadBlockTableEntryEmptiesTheSequence) {
  const DType t = compiled_dtypes().empty() ? DType::kBFloat16 : compiled_dtypes().front();
  for (int d : {64, 128, 256}) {
    if (!hdim_compiled(d) || compiled_dtypes().empty()) continue;
    AttnConfig dense = base(t, 3, 5, 200, 4, 2, d);
    dense.causal = true;
    AttnConfig varlen = base(t, 3, 0, 0, 4, 2, d);
    varlen.seqlens_q = {4, 9, 1};
    varlen.seqlens_k = {150, 77, 40};
    for (const AttnConfig& c : {dense, varlen}) {
      for (int page : {16, 64}) {
        for (int value : {-1, 1 << 20}) {
          const uint64_t seed = fresh_seed();
          SCOPED_TRACE(c.str() + " page=" + std::to_string(page) + " entry=" +
                       std::to_string(value) + " seed=" + std::to_string(seed));
          const FwdProblem good = to_paged(make_fwd_problem(c, seed), page, seed + 1);
          FwdProblem bad = good;
          // Sequence 1's last used page.
          const int keys = c.varlen() ? c.seqlens_k[1] : c.seqlen_k;
          bad.block_table[good.params.block_table_batch_stride + (keys - 1) / page] = value;
          bad.bind();
          const RunResult want = run_gpu(good), got = run_gpu(bad);
          ASSERT_TRUE(want.status.ok()) << want.status.to_string();
          ASSERT_TRUE(got.status.ok()) << got.status.to_string();
          const int64_t per_row = int64_t(c.h) * c.d;
          const int total_q = c.varlen() ? good.cu_q.back() : c.b * c.seqlen_q;
          for (int bb = 0; bb < c.b; ++bb) {
            const int r0 = c.varlen() ? good.cu_q[bb] : bb * c.seqlen_q;
            const int r1 = c.varlen() ? good.cu_q[bb + 1] : (bb + 1) * c.seqlen_q;
            for (int64_t x = r0 * per_row; x < r1 * per_row; ++x)
              ASSERT_EQ(got.o[x], bb == 1 ? 0.f : want.o[x]) << "b=" << bb << " element " << x;
            for (int hh = 0; hh < c.h; ++hh)
              for (int r = r0; r < r1; ++r) {
                const int64_t li = c.varlen() ? int64_t(hh) * total_q + r
                                              : (int64_t(bb) * c.h + hh) * c.seqlen_q + (r - r0);
                const float expect =
                    bb == 1 ? std::numeric_limits<float>::infinity() : want.lse[li];
                ASSERT_EQ(got.lse[li], expect) << "b=" << bb << " head " << hh << " row " << r;
              }
          }
        }
      }
    }
  }
}

TEST_F(FwdFeaturesSm80, PagedAgainstReference) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128}) {
      if (!hdim_compiled(d)) continue;
      for (int page : {1, 7, 64, 256}) {
        AttnConfig c = base(t, 2, 33, 129, 6, 2, d);  // paged + causal + GQA
        c.causal = true;
        uint64_t seed = fresh_seed();
        check_small_problem("paged+causal+gqa", to_paged(make_fwd_problem(c, seed), page, seed + 1),
                            seed);
        AttnConfig a = base(t, 1, 64, 200, 2, 2, d);  // paged + score mods + padded strides
        a.alibi = true;
        a.softcap = 4.f;
        a.padded_strides = true;
        seed = fresh_seed();
        check_small_problem("paged+alibi+softcap", to_paged(make_fwd_problem(a, seed), page, seed + 1),
                            seed);
        AttnConfig v = base(t, 3, 0, 0, 4, 2, d);  // paged varlen prefill
        v.seqlens_q = {40, 1, 90};
        v.seqlens_k = {40, 150, 90};
        v.causal = true;
        seed = fresh_seed();
        check_small_problem("paged varlen causal", to_paged(make_fwd_problem(v, seed), page, seed + 1),
                            seed);
      }
    }
  }
}

// ------------------------------------------------------------------------------- split-KV --

TEST_F(FwdFeaturesSm80, SplitMatchesUnsplit) {
  for (DType t : compiled_dtypes()) {
    for (int d : {128, 64}) {
      if (!hdim_compiled(d)) continue;
      // Decode-like: 128 key blocks of 64, so 128 splits run one block each.
      AttnConfig c = base(t, 2, 3, 8190, 4, 1, d);
      const uint64_t seed = fresh_seed();
      SCOPED_TRACE(c.str() + " seed=" + std::to_string(seed));
      const FwdProblem pr = make_fwd_problem(c, seed);
      const RunResult unsplit = run_gpu(pr);
      ASSERT_TRUE(unsplit.status.ok());
      const RefResult ref = gpu_reference(pr);
      for (int s : {1, 2, 3, 7, 64, 128, 0}) {
        FwdProblem ps = pr;
        ps.params.num_splits = s;
        const RunResult got = run_gpu(ps);
        ASSERT_TRUE(got.status.ok()) << got.status.to_string();
        check_written(ps, got);
        const std::string what = "splits=" + std::to_string(s) + " " + c.str();
        if (s == 1) {
          expect_bitwise_equal(got, unsplit, what);
        } else {
          expect_split_as_accurate(got, unsplit, ref, what);
        }
        expect_bitwise_equal(run_gpu(ps), got, what + " (repeat)");
      }
      // Masks and score mods: splits of the visible key range of each query block.
      struct M { bool causal; int left, right; bool alibi; float softcap; };
      for (M m : {M{true, -1, -1, false, 0.f}, M{false, 300, 40, false, 0.f},
                  M{true, 500, -1, true, 0.f}, M{false, -1, -1, true, 5.f}}) {
        AttnConfig mc = base(t, 2, 150, 1500, 4, 2, d);
        mc.causal = m.causal;
        mc.window_left = m.left;
        mc.window_right = m.right;
        mc.alibi = m.alibi;
        mc.softcap = m.softcap;
        const uint64_t ms = fresh_seed();
        const FwdProblem mp = make_fwd_problem(mc, ms);
        const RunResult base_run = run_gpu(mp);
        const RefResult mref = gpu_reference(mp);
        for (int s : {3, 7, 64}) {
          FwdProblem ps = mp;
          ps.params.num_splits = s;
          const RunResult got = run_gpu(ps);
          ASSERT_TRUE(got.status.ok()) << got.status.to_string();
          check_written(ps, got);
          expect_split_as_accurate(got, base_run, mref, "splits=" + std::to_string(s) + " " + mc.str());
        }
      }
    }
  }
}

TEST_F(FwdFeaturesSm80, SplitAgainstReference) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128, 256}) {
      if (!hdim_compiled(d)) continue;
      AttnConfig c = with_splits(base(t, 2, 16, 1000, 8, 2, d), 7);  // split + GQA
      check_small("split+gqa", c);
      AttnConfig w = with_splits(base(t, 1, 100, 900, 2, 2, d), 3);  // split + window
      w.window_left = 200;
      w.window_right = 0;
      check_small("split+window", w);
      AttnConfig v = with_splits(base(t, 4, 0, 0, 4, 2, d), 64);  // split + varlen (+ empty)
      v.seqlens_q = {1, 5, 0, 70};
      v.seqlens_k = {700, 0, 30, 400};
      v.seqused_k = {650, 0, 30, 399};
      v.causal = true;
      check_small("split+varlen+causal", v);
      AttnConfig sc = with_splits(base(t, 1, 7, 640, 4, 4, d), 2);  // split + softcap + ALiBi
      sc.softcap = 3.f;
      sc.alibi = true;
      sc.alibi_per_batch = true;
      check_small("split+softcap+alibi", sc);
      // Split + paged (+ GQA), also bitwise against the contiguous split.
      for (int page : {1, 16, 64}) {
        AttnConfig pc = with_splits(base(t, 2, 4, 777, 8, 2, d), 5);
        pc.causal = true;
        const uint64_t seed = fresh_seed();
        const FwdProblem contiguous = make_fwd_problem(pc, seed);
        const FwdProblem paged = to_paged(contiguous, page, seed + 1);
        const RunResult got = check_small_problem("split+paged+gqa", paged, seed);
        expect_bitwise_equal(got, run_gpu(contiguous), "split paged vs contiguous page=" + std::to_string(page));
      }
    }
  }
}

// -------------------------------------------------------------------------------- dropout --

TEST_F(FwdFeaturesSm80, DropoutKeepPatternAndOutputs) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128, 256, 96}) {
      if (!hdim_compiled(d)) continue;
      AttnConfig c = base(t, 2, 97, 113, 3, 3, d);
      c.p_dropout = 0.17f;
      c.return_probs = true;
      check_dropout_probs("dropout", c);
      AttnConfig cc = base(t, 1, 130, 70, 4, 2, d);  // dropout + causal + GQA, s_q > s_k
      cc.p_dropout = 0.5f;
      cc.causal = true;
      cc.return_probs = true;
      check_dropout_probs("dropout+causal", cc);
      AttnConfig a = base(t, 2, 33, 257, 2, 1, d);  // dropout + ALiBi + window
      a.p_dropout = 0.3f;
      a.alibi = true;
      a.window_left = 40;
      a.window_right = 7;
      a.return_probs = true;
      check_dropout_probs("dropout+alibi+window", a);
      AttnConfig v = base(t, 4, 0, 0, 6, 2, d);  // dropout + GQA + varlen (no p_ptr: dense only)
      v.seqlens_q = {1, 77, 0, 140};
      v.seqlens_k = {50, 200, 9, 140};
      v.p_dropout = 0.25f;
      v.causal = true;
      check_dropout_probs("dropout+gqa+varlen", v);
    }
  }
}

TEST_F(FwdFeaturesSm80, ProbsWithoutDropout) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128}) {
      if (!hdim_compiled(d)) continue;
      AttnConfig c = base(t, 2, 45, 70, 2, 1, d);
      c.return_probs = true;
      check_dropout_probs("probs", c);
      AttnConfig s = base(t, 1, 70, 45, 2, 2, d);
      s.return_probs = true;
      s.softcap = 2.f;
      s.causal = true;
      check_dropout_probs("probs+softcap+causal", s);
      // Without an LSE buffer the forward's LSE goes to scratch.
      FwdProblem pr = make_fwd_problem(c, fresh_seed());
      DeviceFwdProblem dev(pr);
      dev.params.softmax_lse_ptr = nullptr;
      ASSERT_TRUE(mha_fwd(dev.params).ok());
      FwdProblem out = pr;
      dev.copy_back(out);
      FwdProblem ref = as_fp32(pr);
      ASSERT_TRUE(ref::mha_fwd(ref.params).ok());
      double worst = 0;
      for (int64_t i = 0; i < out.p.numel; ++i)
        worst = std::max(worst, std::fabs(double(out.p.get(i)) - double(ref.p.get(i))));
      EXPECT_LE(worst, 2 * unit_roundoff(t)) << "p_ptr without an LSE buffer";
    }
  }
}

// ------------------------------------------------------------------------- large shapes --

TEST_F(FwdFeaturesSm80, LargeAgainstGpuReference) {
  for (DType t : compiled_dtypes()) {
    if (hdim_compiled(128)) {
      // Decode against a long paged cache, GQA, heuristic splits.
      AttnConfig c = with_splits(base(t, 2, 1, 32768, 8, 2, 128), 0);
      uint64_t seed = fresh_seed();
      check_large_problem("large decode paged split", to_paged(make_fwd_problem(c, seed), 16, seed + 1), seed);
      // Chunked prefill: 16 queries, causal, explicit 128 splits.
      AttnConfig p = with_splits(base(t, 1, 16, 20000, 4, 4, 128), 128);
      p.causal = true;
      check_large("large prefill split=128 causal", p);
      // Dropout over many key blocks.
      AttnConfig dr = base(t, 1, 2048, 3000, 4, 2, 128);
      dr.p_dropout = 0.2f;
      dr.causal = true;
      check_large("large dropout causal", dr);
    }
    if (hdim_compiled(64)) {
      AttnConfig v = with_splits(base(t, 3, 0, 0, 4, 2, 64), 0);  // varlen, heuristic splits
      v.seqlens_q = {3, 1, 2};
      v.seqlens_k = {9000, 1, 20000};
      check_large("large varlen split", v);
    }
  }
}

}  // namespace
}  // namespace flashattn::testing
