// Tests of the CPU reference KV-cache call (ref::mha_fwd_kvcache): after the call the cache
// holds the new tokens at cache_seqlens (k rotated at its absolute positions by an independently
// written rotary, rounded to dtype) and nothing else changed; the output equals ref::mha_fwd run
// on the assembled cache window [leftpad, cache_seqlens + seqlen_new) with q rotated at the
// documented positions. Covers causal/local/none, ALiBi, softcap, GQA, interleaved and halves
// rotary, partial rotary_dim, leftpad, cache_batch_idx, paged caches and no new tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <set>
#include <vector>

#include "common/numeric.h"
#include "test_reference_util.h"

namespace flashattn {
namespace {

using namespace reftest;
using testing::AttnConfig;
using testing::KVCacheConfig;
using testing::KVCacheProblem;
using testing::make_kvcache_problem;

// Test-side addressing (independent of the reference's): cache index t of sequence i, kv head hk.
int64_t cache_offset(const KVCacheProblem& pr, bool is_v, int i, int t, int hk) {
  const KVCacheParams& p = pr.params;
  const int64_t bs = is_v ? p.v_batch_stride : p.k_batch_stride;
  const int64_t rs = is_v ? p.v_row_stride : p.k_row_stride;
  const int64_t hs = is_v ? p.v_head_stride : p.k_head_stride;
  if (!pr.block_table.empty()) {
    const int page = pr.block_table[size_t(i) * p.max_blocks_per_seq + t / p.page_block_size];
    return page * bs + (t % p.page_block_size) * rs + hk * hs;
  }
  const int cb = pr.cache_batch_idx.empty() ? i : pr.cache_batch_idx[i];
  return cb * bs + int64_t(t) * rs + hk * hs;
}

bool rows_advance(const KVCacheProblem& pr) {
  const AttnConfig& c = pr.cfg.attn;
  return c.causal || c.window_left >= 0 || c.window_right >= 0;
}

// x rotated at position pos with the problem's cos/sin tables, written out from the formula:
// pairs (2k, 2k+1) interleaved or (k, k + rotary_dim/2) halves; x' = x0 c - x1 s, y' = x0 s + x1 c.
std::vector<double> rotated(const KVCacheProblem& pr, std::vector<double> x, int pos) {
  const int rd = pr.cfg.rotary_dim, half = rd / 2;
  if (rd == 0) return x;
  const std::vector<double> in = x;
  for (int k = 0; k < half; ++k) {
    const double c = pr.rotary_cos.get(int64_t(pos) * half + k);
    const double s = pr.rotary_sin.get(int64_t(pos) * half + k);
    const int a = pr.cfg.rotary_interleaved ? 2 * k : k;
    const int b = pr.cfg.rotary_interleaved ? 2 * k + 1 : k + half;
    x[a] = in[a] * c - in[b] * s;
    x[b] = in[a] * s + in[b] * c;
  }
  return x;
}

std::vector<double> knew_row(const KVCacheProblem& pr, bool is_v, int i, int t, int hk) {
  const KVCacheParams& p = pr.params;
  const testing::Buffer& buf = is_v ? pr.vnew : pr.knew;
  const int64_t off = i * (is_v ? p.vnew_batch_stride : p.knew_batch_stride) +
                      t * (is_v ? p.vnew_row_stride : p.knew_row_stride) +
                      hk * (is_v ? p.vnew_head_stride : p.knew_head_stride);
  std::vector<double> x(p.d);
  for (int e = 0; e < p.d; ++e) x[e] = buf.get(off + e);
  return x;
}

// Runs the KV-cache reference on pr and checks the cache contents and the output.
// o_tol/lse_tol: 0 (bitwise) without rotary; with rotary the comparison's q is rotated in double
// here and stored in fp32, which the reference keeps in double: differences ~1e-7.
void run_and_check(KVCacheProblem& pr, double o_tol, double lse_tol) {
  const KVCacheConfig& kc = pr.cfg;
  const AttnConfig& c = kc.attn;
  const KVCacheParams& p = pr.params;
  const testing::Buffer k_before = pr.k_cache, v_before = pr.v_cache;
  ASSERT_OK(ref::mha_fwd_kvcache(pr.params));

  // 1. The cache: new rows at [cache_seqlens, cache_seqlens + seqlen_new), everything else
  //    byte-for-byte unchanged (including the NaN poison outside the valid range).
  std::set<int64_t> appended;
  for (int i = 0; i < c.b; ++i)
    for (int t = 0; t < kc.seqlen_new; ++t)
      for (int hk = 0; hk < c.h_k; ++hk) {
        const int pos = pr.cache_seqlens[i] + t;
        const std::vector<double> k_want = rotated(pr, knew_row(pr, false, i, t, hk), pos);
        const std::vector<double> v_want = knew_row(pr, true, i, t, hk);
        const int64_t ko = cache_offset(pr, false, i, pos, hk), vo = cache_offset(pr, true, i, pos, hk);
        for (int e = 0; e < c.d; ++e) {
          ASSERT_EQ(pr.v_cache.get(vo + e), float(v_want[e])) << "batch " << i << " token " << t;
          ASSERT_EQ(pr.k_cache.get(ko + e), round_to_dtype(float(k_want[e]), c.dtype))
              << "batch " << i << " token " << t << " dim " << e;
          appended.insert(ko + e);
        }
      }
  const int es = dtype_size(c.dtype);
  for (int64_t n = 0; n < pr.k_cache.numel; ++n) {
    if (appended.count(n)) continue;
    ASSERT_EQ(std::memcmp(pr.k_cache.bytes.data() + n * es, k_before.bytes.data() + n * es, es), 0) << n;
    ASSERT_EQ(std::memcmp(pr.v_cache.bytes.data() + n * es, v_before.bytes.data() + n * es, es), 0) << n;
  }

  // 2. The output: per sequence, a dense fp32 forward over the assembled window of the cache.
  for (int i = 0; i < c.b; ++i) {
    const int leftpad = pr.cache_leftpad.empty() ? 0 : pr.cache_leftpad[i];
    const int s_q = c.seqlen_q, s_k = pr.cache_seqlens[i] + kc.seqlen_new - leftpad;
    std::vector<float> q(size_t(s_q) * c.h * c.d), k(size_t(s_k) * c.h_k * c.d), v(k.size());
    std::vector<float> o(q.size(), NAN), lse(size_t(c.h) * s_q, NAN);
    for (int r = 0; r < s_q; ++r)
      for (int h = 0; h < c.h; ++h) {
        std::vector<double> x(c.d);
        for (int e = 0; e < c.d; ++e)
          x[e] = pr.q.get(i * p.q_batch_stride + r * p.q_row_stride + h * p.q_head_stride + e);
        x = rotated(pr, x, pr.cache_seqlens[i] + (rows_advance(pr) ? r : 0));
        for (int e = 0; e < c.d; ++e) q[(size_t(r) * c.h + h) * c.d + e] = float(x[e]);
      }
    for (int j = 0; j < s_k; ++j)
      for (int hk = 0; hk < c.h_k; ++hk) {
        const int64_t ko = cache_offset(pr, false, i, leftpad + j, hk);
        const int64_t vo = cache_offset(pr, true, i, leftpad + j, hk);
        for (int e = 0; e < c.d; ++e) {
          k[(size_t(j) * c.h_k + hk) * c.d + e] = pr.k_cache.get(ko + e);
          v[(size_t(j) * c.h_k + hk) * c.d + e] = pr.v_cache.get(vo + e);
        }
      }
    FwdParams f;
    f.dtype = DType::kFloat32;
    f.b = 1;
    f.seqlen_q = s_q;
    f.seqlen_k = s_k;
    f.h = c.h;
    f.h_k = c.h_k;
    f.d = c.d;
    f.q_ptr = q.data();
    f.k_ptr = k.data();
    f.v_ptr = v.data();
    f.o_ptr = o.data();
    f.softmax_lse_ptr = lse.data();
    f.q_row_stride = f.o_row_stride = int64_t(c.h) * c.d;
    f.q_head_stride = f.o_head_stride = c.d;
    f.q_batch_stride = f.o_batch_stride = int64_t(s_q) * c.h * c.d;
    f.k_row_stride = f.v_row_stride = int64_t(c.h_k) * c.d;
    f.k_head_stride = f.v_head_stride = c.d;
    f.k_batch_stride = f.v_batch_stride = int64_t(s_k) * c.h_k * c.d;
    f.softmax_scale = p.softmax_scale;
    f.softcap = p.softcap;
    f.is_causal = p.is_causal;
    f.window_size_left = p.window_size_left;
    f.window_size_right = p.window_size_right;
    if (c.alibi) f.alibi_slopes = pr.alibi.data() + (c.alibi_per_batch ? i * c.h : 0);
    ASSERT_OK(ref::mha_fwd(f));
    for (int r = 0; r < s_q; ++r)
      for (int h = 0; h < c.h; ++h) {
        for (int e = 0; e < c.d; ++e) {
          const float got = pr.o.get(i * p.o_batch_stride + r * p.o_row_stride + h * p.o_head_stride + e);
          const float want = round_to_dtype(o[(size_t(r) * c.h + h) * c.d + e], c.dtype);
          ASSERT_TRUE(std::isfinite(got)) << "o not written: batch " << i << " row " << r;
          ASSERT_LE(std::fabs(got - want), o_tol) << "batch " << i << " row " << r << " head " << h;
        }
        const float got_lse = pr.lse[(size_t(i) * c.h + h) * s_q + r];
        const float want_lse = lse[size_t(h) * s_q + r];
        if (std::isinf(want_lse))
          ASSERT_EQ(got_lse, want_lse) << "batch " << i << " row " << r;
        else
          ASSERT_LE(std::fabs(got_lse - want_lse), lse_tol) << "batch " << i << " row " << r;
      }
  }
}

KVCacheConfig base_config() {
  KVCacheConfig kc;
  kc.attn.b = 3;
  kc.attn.seqlen_q = 4;
  kc.attn.h = 4;
  kc.attn.h_k = 2;
  kc.attn.d = 16;
  kc.seqlen_cache = 64;
  kc.seqlen_new = 3;
  return kc;
}

void check(const KVCacheConfig& kc, double o_tol = 0, double lse_tol = 0) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(kc.attn.str() + " new=" + std::to_string(kc.seqlen_new) + " rot=" +
               std::to_string(kc.rotary_dim) + (kc.rotary_interleaved ? "i" : "h") +
               " page=" + std::to_string(kc.page_size) + (kc.leftpad ? " leftpad" : "") +
               (kc.batch_idx ? " batch_idx" : "") + " " + seed_str(seed));
  KVCacheProblem pr = make_kvcache_problem(kc, seed);
  run_and_check(pr, o_tol, lse_tol);
}

TEST(RefKvCache, AppendThenAttendPlain) {
  KVCacheConfig kc = base_config();
  check(kc);
  kc.attn.padded_strides = true;
  check(kc);
}

TEST(RefKvCache, CausalWithAlibiAndSoftcap) {
  KVCacheConfig kc = base_config();
  kc.attn.seqlen_q = 5;
  kc.seqlen_new = 5;
  kc.attn.causal = true;
  kc.attn.alibi = true;
  kc.attn.alibi_per_batch = true;
  kc.attn.softcap = 2.f;
  check(kc);
}

TEST(RefKvCache, LocalWindow) {
  KVCacheConfig kc = base_config();
  kc.attn.window_left = 8;
  kc.attn.window_right = 0;
  check(kc);
  kc.attn.window_left = 3;
  kc.attn.window_right = 2;
  check(kc);
}

TEST(RefKvCache, QueriesBeyondTheCacheSeeNothing) {
  // Empty cache, 2 new tokens, 5 causal queries: bottom-right alignment leaves 3 rows empty.
  KVCacheConfig kc = base_config();
  kc.attn.seqlen_q = 5;
  kc.seqlen_new = 2;
  kc.attn.causal = true;
  kc.cache_seqlens = {0, 0, 0};
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_str(seed));
  KVCacheProblem pr = make_kvcache_problem(kc, seed);
  run_and_check(pr, 0, 0);
  for (int i = 0; i < kc.attn.b; ++i)
    for (int h = 0; h < kc.attn.h; ++h)
      for (int r = 0; r < 3; ++r) EXPECT_EQ(pr.lse[(size_t(i) * kc.attn.h + h) * 5 + r], kInfF);
}

TEST(RefKvCache, RotaryInterleavedCausalRotatesEachQueryAtItsPosition) {
  KVCacheConfig kc = base_config();
  kc.attn.seqlen_q = 3;
  kc.attn.causal = true;
  kc.rotary_dim = 16;
  kc.rotary_interleaved = true;
  check(kc, 2e-6, 1e-5);
}

TEST(RefKvCache, RotaryHalvesNonCausalRotatesAllQueriesAtCacheSeqlen) {
  KVCacheConfig kc = base_config();
  kc.rotary_dim = 16;
  kc.rotary_interleaved = false;
  check(kc, 2e-6, 1e-5);
  // A partial rotary_dim leaves the tail dimensions alone.
  kc.rotary_dim = 6;
  check(kc, 2e-6, 1e-5);
  kc.rotary_interleaved = true;
  kc.attn.window_left = 5;  // local: per-row positions again
  check(kc, 2e-6, 1e-5);
}

TEST(RefKvCache, RotaryPositionsDifferBetweenCausalAndNot) {
  // Guard that the two conventions are really distinct on the same inputs: the output of query
  // rows > 0 changes with the mask only through the q positions when every key is visible.
  KVCacheConfig kc = base_config();
  kc.attn.seqlen_q = 3;
  kc.seqlen_new = 3;
  kc.rotary_dim = 16;
  kc.attn.window_left = 1000;  // local mask that hides nothing: differs from none only in rotary
  kc.attn.window_right = 1000;
  const uint64_t seed = fresh_seed();
  KVCacheProblem local = make_kvcache_problem(kc, seed);
  KVCacheProblem none = local;
  none.bind();
  none.params.window_size_left = -1;
  none.params.window_size_right = -1;
  ASSERT_OK(ref::mha_fwd_kvcache(local.params));
  ASSERT_OK(ref::mha_fwd_kvcache(none.params));
  const KVCacheParams& p = local.params;
  double row0 = 0, row2 = 0;
  for (int i = 0; i < kc.attn.b; ++i)
    for (int h = 0; h < kc.attn.h; ++h)
      for (int e = 0; e < kc.attn.d; ++e) {
        auto at = [&](const KVCacheProblem& pr, int r) {
          return pr.o.get(i * p.o_batch_stride + r * p.o_row_stride + h * p.o_head_stride + e);
        };
        row0 = std::max(row0, double(std::fabs(at(local, 0) - at(none, 0))));
        row2 = std::max(row2, double(std::fabs(at(local, 2) - at(none, 2))));
      }
  EXPECT_EQ(row0, 0.0);  // row 0 sits at cache_seqlens either way
  EXPECT_GT(row2, 1e-4);
}

TEST(RefKvCache, RotatedKeysAreStoredRoundedToDtype) {
  for (DType t : {DType::kBFloat16, DType::kFloat16}) {
    KVCacheConfig kc = base_config();
    kc.attn.dtype = t;
    kc.rotary_dim = 16;
    kc.attn.causal = true;
    kc.attn.seqlen_q = 3;
    // run_and_check compares the cache bitwise with the rounded rotation, and the output with a
    // fp32 forward rounded to dtype: half an ulp of bf16 or fp16 covers the q rotation rounding.
    check(kc, t == DType::kBFloat16 ? 8e-3 : 1e-3, 1e-5);
  }
}

TEST(RefKvCache, LeftPadding) {
  KVCacheConfig kc = base_config();
  kc.leftpad = true;
  kc.attn.causal = true;
  kc.attn.alibi = true;
  check(kc);
  kc.rotary_dim = 8;
  check(kc, 2e-6, 1e-5);
}

TEST(RefKvCache, CacheBatchIndex) {
  KVCacheConfig kc = base_config();
  kc.b_cache = 5;
  kc.batch_idx = true;
  check(kc);
  kc.rotary_dim = 16;
  kc.attn.causal = true;
  kc.attn.seqlen_q = 2;
  check(kc, 2e-6, 1e-5);
}

TEST(RefKvCache, PagedCache) {
  for (int page : {1, 7, 16}) {
    KVCacheConfig kc = base_config();
    kc.page_size = page;
    kc.attn.causal = true;
    kc.attn.seqlen_q = 3;
    check(kc);
    kc.rotary_dim = 16;
    kc.rotary_interleaved = false;
    check(kc, 2e-6, 1e-5);
  }
}

TEST(RefKvCache, PagedEqualsContiguous) {
  KVCacheConfig kc = base_config();
  kc.page_size = 16;
  kc.rotary_dim = 8;
  kc.attn.causal = true;
  kc.attn.seqlen_q = 3;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_str(seed));
  KVCacheProblem paged = make_kvcache_problem(kc, seed);
  // The same logical cache, laid out contiguously [b, capacity, h_k, d].
  KVCacheProblem flat = paged;
  const KVCacheParams& pp = paged.params;
  const int cap = pp.max_blocks_per_seq * pp.page_block_size;
  const testing::Layout l = testing::Layout::make(kc.attn.b, cap, kc.attn.h_k, kc.attn.d, false);
  flat.k_cache = testing::Buffer::make(kc.attn.dtype, l.numel);
  flat.v_cache = testing::Buffer::make(kc.attn.dtype, l.numel);
  flat.k_cache.fill_nan();
  flat.v_cache.fill_nan();
  for (int i = 0; i < kc.attn.b; ++i)
    for (int t = 0; t < cap; ++t)
      for (int hk = 0; hk < kc.attn.h_k; ++hk)
        for (int e = 0; e < kc.attn.d; ++e) {
          const int64_t dst = i * l.batch_stride + t * l.row_stride + hk * l.head_stride + e;
          flat.k_cache.set(dst, paged.k_cache.get(cache_offset(paged, false, i, t, hk) + e));
          flat.v_cache.set(dst, paged.v_cache.get(cache_offset(paged, true, i, t, hk) + e));
        }
  flat.block_table.clear();
  flat.bind();
  flat.params.seqlen_k = cap;
  flat.params.k_batch_stride = flat.params.v_batch_stride = l.batch_stride;
  flat.params.k_row_stride = flat.params.v_row_stride = l.row_stride;
  flat.params.k_head_stride = flat.params.v_head_stride = l.head_stride;
  flat.params.b_cache = kc.attn.b;
  flat.params.page_block_size = 0;
  flat.params.max_blocks_per_seq = 0;
  flat.params.num_blocks = 0;
  ASSERT_OK(ref::mha_fwd_kvcache(paged.params));
  ASSERT_OK(ref::mha_fwd_kvcache(flat.params));
  const auto d = testing::diff(testing::gather(paged.o, testing::Layout::make(kc.attn.b, kc.attn.seqlen_q, kc.attn.h, kc.attn.d, false), kc.attn.b, kc.attn.seqlen_q, kc.attn.h, kc.attn.d, false, 0),
                               testing::gather(flat.o, testing::Layout::make(kc.attn.b, kc.attn.seqlen_q, kc.attn.h, kc.attn.d, false), kc.attn.b, kc.attn.seqlen_q, kc.attn.h, kc.attn.d, false, 0));
  EXPECT_EQ(d.max_abs, 0.0);
  EXPECT_EQ(d.finiteness_mismatches, 0);
  EXPECT_EQ(testing::diff(paged.lse, flat.lse).max_abs, 0.0);
  // The appended keys landed at the same logical places.
  for (int i = 0; i < kc.attn.b; ++i)
    for (int t = paged.cache_seqlens[i]; t < paged.cache_seqlens[i] + kc.seqlen_new; ++t)
      for (int e = 0; e < kc.attn.d; ++e)
        EXPECT_EQ(paged.k_cache.get(cache_offset(paged, false, i, t, 1) + e),
                  flat.k_cache.get(i * l.batch_stride + t * l.row_stride + l.head_stride + e));
}

TEST(RefKvCache, NoNewTokensOnlyAttends) {
  KVCacheConfig kc = base_config();
  kc.seqlen_new = 0;
  kc.attn.causal = true;
  kc.cache_seqlens = {1, 17, 64};  // includes a full cache
  check(kc);
}

TEST(RefKvCache, DecodeWithMqaAndScalarCacheSeqlen) {
  KVCacheConfig kc = base_config();
  kc.attn.seqlen_q = 1;
  kc.attn.h = 6;
  kc.attn.h_k = 1;
  kc.seqlen_new = 1;
  kc.attn.causal = true;
  kc.cache_seqlens = {20, 20, 20};
  check(kc);
  // cache_seqlens == null: the scalar cache_seqlen applies to every sequence.
  const uint64_t seed = fresh_seed();
  KVCacheProblem with_ptr = make_kvcache_problem(kc, seed);
  KVCacheProblem scalar = with_ptr;
  scalar.bind();
  scalar.params.cache_seqlens = nullptr;
  scalar.params.cache_seqlen = 20;
  ASSERT_OK(ref::mha_fwd_kvcache(with_ptr.params));
  ASSERT_OK(ref::mha_fwd_kvcache(scalar.params));
  EXPECT_EQ(testing::diff(with_ptr.lse, scalar.lse).max_abs, 0.0);
  EXPECT_EQ(std::memcmp(with_ptr.o.bytes.data(), scalar.o.bytes.data(), with_ptr.o.bytes.size()), 0);
  EXPECT_EQ(std::memcmp(with_ptr.k_cache.bytes.data(), scalar.k_cache.bytes.data(), with_ptr.k_cache.bytes.size()), 0);
}

}  // namespace
}  // namespace flashattn
