// The CPU backend's KV-cache forward and split merge against the CPU reference: in-place append
// (cache contents checked element by element, untouched elsewhere), rotary (interleaved and
// GPT-NeoX halves, causal/local and not), contiguous caches with cache_batch_idx and left
// padding, paged caches of odd page sizes, GQA, split-KV (explicit and heuristic), decode
// shapes, fp16/bf16, attention sinks and a V head dim other than d with all of these; and
// mha_combine with empty splits.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <tuple>

#include "common/rotary.h"

#include "test_cpu_backend_util.h"

namespace flashattn {
namespace {

using namespace cputest;

KVCacheConfig kv(DType t, int b, int s_q, int h, int h_k, int d, int cap, int s_new) {
  KVCacheConfig k;
  k.attn.dtype = t;
  k.attn.b = b;
  k.attn.seqlen_q = s_q;
  k.attn.h = h;
  k.attn.h_k = h_k;
  k.attn.d = d;
  k.seqlen_cache = cap;
  k.seqlen_new = s_new;
  return k;
}

KVCacheProblem as_fp32(const KVCacheProblem& pr) {
  KVCacheProblem r = pr;
  r.cfg.attn.dtype = DType::kFloat32;
  r.params.dtype = DType::kFloat32;
  for (auto [dst, src] : {std::pair{&r.q, &pr.q}, std::pair{&r.k_cache, &pr.k_cache},
                          std::pair{&r.v_cache, &pr.v_cache}, std::pair{&r.knew, &pr.knew},
                          std::pair{&r.vnew, &pr.vnew}, std::pair{&r.rotary_cos, &pr.rotary_cos},
                          std::pair{&r.rotary_sin, &pr.rotary_sin}, std::pair{&r.o, &pr.o}})
    *dst = src->converted(DType::kFloat32);
  r.o.fill_nan();
  r.bind();
  return r;
}

// Cache after the call: equal to the reference's wherever the reference kept the old value or
// copied v (NaN where never written), and within 2x the dtype rounding of the exact rotated k.
void expect_cache_equal(const Buffer& got, const Buffer& want, DType t, const char* what) {
  ASSERT_EQ(got.numel, want.numel);
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < got.numel; ++i) {
    const float a = got.get(i), b = want.get(i);
    const bool ok = (std::isnan(a) && std::isnan(b)) ||
                    (std::isfinite(a) && std::isfinite(b) &&
                     std::fabs(double(a) - b) <=
                         2 * std::fabs(double(round_to_dtype(b, t)) - b) + 1e-6);
    if (!ok && bad++ == 0) first = i;
  }
  EXPECT_EQ(bad, 0) << what << ": first mismatch at " << first << ": " << got.get(first)
                    << " vs " << want.get(first);
}

// The reference for the attention part when the cache holds ROUNDED rotated keys (fp16/bf16
// with rotary and an append): exact attention over exactly what the backend's cache now holds,
// with q rotated in double here. (The reference run on fp32 copies would keep the rotated keys
// in fp32, a different input.)
KVCacheProblem attention_reference(const KVCacheProblem& after) {
  KVCacheProblem r = as_fp32(after);
  const KVCacheConfig& kc = after.cfg;
  const KVCacheParams& p = after.params;
  const bool local = p.is_causal || p.window_size_left >= 0 || p.window_size_right >= 0;
  const int half = kc.rotary_dim / 2;
  std::vector<double> x(size_t(kc.attn.d));
  for (int b = 0; b < kc.attn.b; ++b)
    for (int i = 0; i < kc.attn.seqlen_q; ++i)
      for (int h = 0; h < kc.attn.h; ++h) {
        const int64_t off = b * p.q_batch_stride + i * p.q_row_stride + h * p.q_head_stride;
        for (int e = 0; e < kc.attn.d; ++e) x[size_t(e)] = after.q.get(off + e);
        const int pos = after.cache_seqlens[size_t(b)] + (local ? i : 0);
        apply_rotary(x.data(), kc.rotary_dim, kc.rotary_interleaved, [&](int k, double* c, double* sn) {
          *c = after.rotary_cos.get(int64_t(pos) * half + k);
          *sn = after.rotary_sin.get(int64_t(pos) * half + k);
        });
        for (int e = 0; e < kc.attn.d; ++e) r.q.set(off + e, float(x[size_t(e)]));
      }
  for (int b = 0; b < kc.attn.b; ++b) r.cache_seqlens[size_t(b)] += kc.seqlen_new;
  r.bind();
  r.params.knew_ptr = r.params.vnew_ptr = nullptr;
  r.params.seqlen_knew = 0;
  r.params.rotary_cos = r.params.rotary_sin = nullptr;
  r.params.rotary_dim = 0;
  return r;
}

// tweak (optional) edits the params after every (re)binding, for options make_kvcache_problem
// does not expose.
void check_kvcache(const KVCacheConfig& kc, uint64_t seed, const std::string& what = "",
                   const std::function<void(KVCacheProblem&)>& tweak = nullptr) {
  KVCacheProblem pr = testing::make_kvcache_problem(kc, seed);
  if (tweak) tweak(pr);
  SCOPED_TRACE(what + " seed=" + std::to_string(seed) + " | " + kc.attn.str() +
               " cap=" + std::to_string(kc.seqlen_cache) + " new=" + std::to_string(kc.seqlen_new) +
               " page=" + std::to_string(kc.page_size) + " rot=" + std::to_string(kc.rotary_dim));
  KVCacheProblem ref = as_fp32(pr);
  if (tweak) tweak(ref);
  FA_ASSERT_OK(ref::mha_fwd_kvcache(ref.params));
  FA_ASSERT_OK(mha_fwd_kvcache(pr.params));
  expect_cache_equal(pr.k_cache, ref.k_cache, kc.attn.dtype, "k_cache");
  expect_cache_equal(pr.v_cache, ref.v_cache, kc.attn.dtype, "v_cache");
  if (kc.attn.dtype != DType::kFloat32 && kc.rotary_dim > 0 && kc.seqlen_new > 0) {
    ref = attention_reference(pr);
    FA_ASSERT_OK(ref::mha_fwd_kvcache(ref.params));
  }
  const KVCacheParams& p = pr.params;
  const auto oo = offsets(p.o_batch_stride, p.o_row_stride, p.o_head_stride, kc.attn.b,
                          kc.attn.seqlen_q, kc.attn.h, kc.attn.v_dim());
  expect_close(read(pr.o, oo), read(ref.o, oo), kc.attn.dtype, 2.0, kFwdSlack, "o");
  double lse_mag = 1;
  for (float x : ref.lse)
    if (std::isfinite(x)) lse_mag = std::max(lse_mag, double(std::fabs(x)));
  expect_close(pr.lse, ref.lse, DType::kFloat32, 1.0, kLseSlack * lse_mag, "lse");
  expect_padding_untouched(pr.o, oo, "o");
}

TEST(CpuKVCache, AttendWithoutAppend) {
  for_each_isa([&] {
    KVCacheConfig k = kv(DType::kFloat32, 3, 5, 4, 2, 64, 97, 0);
    check_kvcache(k, fresh_seed(), "plain");
    k.attn.causal = true;
    check_kvcache(k, fresh_seed(), "causal");
  });
}

TEST(CpuKVCache, ScalarCacheSeqlen) {
  // cache_seqlens null: every sequence has cache_seqlen tokens.
  KVCacheConfig k = kv(DType::kFloat32, 3, 4, 2, 1, 32, 60, 2);
  k.cache_seqlens = {33, 33, 33};
  k.attn.causal = true;
  check_kvcache(k, fresh_seed(), "scalar cache_seqlen", [](KVCacheProblem& p) {
    p.params.cache_seqlens = nullptr;
    p.params.cache_seqlen = 33;
  });
}

TEST(CpuKVCache, AppendWritesTheCacheInPlace) {
  for_each_isa([&] {
    KVCacheConfig k = kv(DType::kFloat32, 2, 3, 2, 2, 32, 64, 3);
    check_kvcache(k, fresh_seed(), "append");
    k.attn.causal = true;
    k.cache_seqlens = {0, 61};  // empty cache, and appending up to the capacity
    check_kvcache(k, fresh_seed(), "append edges");
  });
}

TEST(CpuKVCache, RotaryInterleavedAndHalves) {
  for_each_isa([&] {
    for (bool interleaved : {true, false})
      for (bool causal : {false, true}) {
        KVCacheConfig k = kv(DType::kFloat32, 2, 4, 4, 2, 64, 80, 4);
        k.rotary_dim = interleaved ? 64 : 32;  // partial rotary: dims >= rotary_dim untouched
        k.rotary_interleaved = interleaved;
        k.attn.causal = causal;
        check_kvcache(k, fresh_seed(), "rotary");
      }
  });
  // Local window without causal: queries also advance.
  KVCacheConfig k = kv(DType::kFloat32, 2, 6, 2, 1, 32, 50, 6);
  k.rotary_dim = 16;
  k.attn.window_left = 8;
  k.attn.window_right = 2;
  check_kvcache(k, fresh_seed(), "rotary local");
}

TEST(CpuKVCache, BatchIndexAndLeftPadding) {
  for_each_isa([&] {
    KVCacheConfig k = kv(DType::kFloat32, 3, 2, 4, 1, 32, 70, 2);
    k.b_cache = 5;
    k.batch_idx = true;
    k.leftpad = true;
    k.attn.causal = true;
    k.attn.alibi = true;
    k.rotary_dim = 32;
    check_kvcache(k, fresh_seed(), "batch_idx leftpad rotary alibi");
  });
}

TEST(CpuKVCache, PagedWithRotaryAndGqa) {
  for_each_isa([&] {
    for (int page : {1, 7, 16}) {
      KVCacheConfig k = kv(DType::kFloat32, 3, 3, 8, 2, 64, 90, 3);
      k.page_size = page;
      k.rotary_dim = 64;
      k.rotary_interleaved = page % 2 == 1;
      k.attn.causal = true;
      check_kvcache(k, fresh_seed(), "paged rotary");
    }
  });
}

TEST(CpuKVCache, SplitsExplicitAndHeuristic) {
  for (int splits : {0, 1, 2, 3, 5, 7}) {
    KVCacheConfig k = kv(DType::kFloat32, 2, 1, 8, 2, 128, 1000, 1);
    k.attn.num_splits = splits;
    k.cache_seqlens = {999, 300};
    check_kvcache(k, fresh_seed(), "decode splits=" + std::to_string(splits));
    k.page_size = 16;
    k.attn.causal = true;
    check_kvcache(k, fresh_seed(), "decode paged splits=" + std::to_string(splits));
  }
}

TEST(CpuKVCache, SoftcapAndWindowOverTheCache) {
  KVCacheConfig k = kv(DType::kFloat32, 2, 9, 2, 2, 32, 120, 4);
  k.attn.softcap = 2.f;
  k.attn.causal = true;
  k.attn.window_left = 30;
  check_kvcache(k, fresh_seed(), "softcap window");
}

TEST(CpuKVCache, HalfAndBFloat16) {
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    KVCacheConfig k = kv(t, 2, 4, 4, 2, 64, 100, 4);
    k.rotary_dim = 64;
    k.attn.causal = true;
    check_kvcache(k, fresh_seed(), "rotary");
    k.page_size = 5;
    k.rotary_interleaved = false;
    k.attn.num_splits = 3;
    check_kvcache(k, fresh_seed(), "paged splits");
    KVCacheConfig pd = kv(t, 2, 3, 2, 1, 40, 50, 2);
    pd.attn.padded_strides = true;
    pd.leftpad = true;
    check_kvcache(pd, fresh_seed(), "padded leftpad");
  }
}

// Attention sinks and a V head dim of its own (MLA-style decode: V narrower than Q/K) with every
// KV-cache feature: append (v rows of dv columns), rotary, paged, batch index and left padding,
// split-KV, softcap, ALiBi, window, fp16/bf16.
KVCacheConfig with_sinks_dv(KVCacheConfig k, int dv, bool sinks = true) {
  k.attn.dv = dv;
  k.attn.sinks = sinks;
  return k;
}

TEST(CpuKVCache, SinksAndValueHeadDim) {
  for_each_isa([&] {
    for (auto [d, dv, sinks] : {std::tuple{64, 32, true}, std::tuple{32, 80, true},
                                std::tuple{48, 16, false}, std::tuple{40, 0, true}}) {
      KVCacheConfig k = with_sinks_dv(kv(DType::kFloat32, 3, 5, 4, 2, d, 97, 0), dv, sinks);
      check_kvcache(k, fresh_seed(), "attend");
      k.seqlen_new = 3;
      k.rotary_dim = 16;
      k.attn.causal = true;
      check_kvcache(k, fresh_seed(), "append rotary causal");
      k.page_size = 7;
      check_kvcache(k, fresh_seed(), "paged append rotary causal");
    }
  });
}

TEST(CpuKVCache, SinksAndValueHeadDimWithBatchIndexLeftpadAndScoreMods) {
  KVCacheConfig k = with_sinks_dv(kv(DType::kFloat32, 3, 2, 4, 1, 32, 70, 2), 24);
  k.b_cache = 5;
  k.batch_idx = true;
  k.leftpad = true;
  k.attn.causal = true;
  k.attn.alibi = true;
  k.rotary_dim = 32;
  check_kvcache(k, fresh_seed(), "batch_idx leftpad rotary alibi");
  KVCacheConfig w = with_sinks_dv(kv(DType::kFloat32, 2, 9, 2, 2, 32, 120, 4), 8);
  w.attn.softcap = 2.f;
  w.attn.causal = true;
  w.attn.window_left = 30;
  check_kvcache(w, fresh_seed(), "softcap window");
}

TEST(CpuKVCache, SinksAndValueHeadDimDecodeSplits) {
  for (int splits : {0, 1, 3, 7}) {
    KVCacheConfig k = with_sinks_dv(kv(DType::kFloat32, 2, 1, 8, 2, 128, 1000, 1), 64);
    k.attn.num_splits = splits;
    k.cache_seqlens = {999, 0};  // the second sequence attends to its one new key
    check_kvcache(k, fresh_seed(), "decode splits=" + std::to_string(splits));
    k.page_size = 16;
    k.attn.causal = true;
    check_kvcache(k, fresh_seed(), "decode paged splits=" + std::to_string(splits));
  }
}

TEST(CpuKVCache, SinksAndValueHeadDimHalfAndBFloat16) {
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    KVCacheConfig k = with_sinks_dv(kv(t, 2, 4, 4, 2, 64, 100, 4), 96);
    k.rotary_dim = 64;
    k.attn.causal = true;
    check_kvcache(k, fresh_seed(), "rotary");
    k.page_size = 5;
    k.attn.num_splits = 3;
    check_kvcache(k, fresh_seed(), "paged splits");
  }
}

// MLA decode (DeepSeek): keys of 576 dims (512 latent + 64 rope), values the latent's 512, MQA
// over many query heads, one or a few new queries per sequence; V given as its own cache and as
// a view of the first 512 columns of K (the layout MLA serves from: one latent cache, read-only
// here; appending writes the caches, which then must not overlap), contiguous and paged.
TEST(CpuKVCache, MlaDecode576And512) {
  for (DType t : {DType::kFloat32, DType::kBFloat16}) {
    for (int s_q : {1, 2}) {
      KVCacheConfig k = kv(t, 2, s_q, 16, 1, 576, 300, 0);
      k.attn.dv = 512;
      k.attn.causal = s_q > 1;
      k.attn.num_splits = 0;
      const std::string what = std::string(dtype_name(t)) + " s_q=" + std::to_string(s_q);
      check_kvcache(k, fresh_seed(), "mla " + what);
      auto v_in_k = [](KVCacheProblem& pr) {
        KVCacheParams& p = pr.params;
        p.v_ptr = p.k_ptr;
        p.v_batch_stride = p.k_batch_stride;
        p.v_row_stride = p.k_row_stride;
        p.v_head_stride = p.k_head_stride;
      };
      check_kvcache(k, fresh_seed(), "mla v in k " + what, v_in_k);
      k.page_size = 64;
      check_kvcache(k, fresh_seed(), "mla paged v in k " + what, v_in_k);
      k.seqlen_new = s_q;
      check_kvcache(k, fresh_seed(), "mla paged append " + what);
    }
  }
}

// ---------------------------------------------------------------------------- combine --

TEST(CpuCombine, MatchesReferenceWithEmptySplits) {
  for (DType t : {DType::kFloat32, DType::kBFloat16}) {
    const int splits = 5, b = 2, s_q = 7, h = 3, d = 40;
    std::mt19937_64 rng(fresh_seed());
    std::uniform_real_distribution<float> u(-1.f, 1.f), ul(-3.f, 3.f);
    std::vector<float> out_p(size_t(splits) * b * s_q * h * d), lse_p(size_t(splits) * b * h * s_q);
    for (float& x : out_p) x = u(rng);
    for (size_t i = 0; i < lse_p.size(); ++i) {
      // Some splits empty; for row/head 0 of batch 0 every split is empty (out 0, lse +inf).
      const bool all_empty = (i % (size_t(b) * h * s_q)) == 0;
      lse_p[i] = (all_empty || rng() % 4 == 0) ? -kInf : ul(rng);
    }
    CombineParams p;
    p.num_splits = splits;
    p.b = b;
    p.seqlen_q = s_q;
    p.h = h;
    p.d = d;
    p.out_partial = out_p.data();
    p.lse_partial = lse_p.data();
    p.dtype = t;
    Buffer mine = Buffer::make(t, int64_t(b) * s_q * h * d), want = mine;
    mine.fill_nan();
    want = Buffer::make(DType::kFloat32, mine.numel);
    want.fill_nan();
    std::vector<float> lse_mine(size_t(b) * h * s_q, NAN), lse_want = lse_mine;
    p.out_row_stride = int64_t(h) * d;
    p.out_head_stride = d;
    p.out_batch_stride = int64_t(s_q) * h * d;
    p.out = mine.data();
    p.lse = lse_mine.data();
    FA_ASSERT_OK(mha_combine(p));
    CombineParams r = p;
    r.dtype = DType::kFloat32;
    r.out = want.data();
    r.lse = lse_want.data();
    FA_ASSERT_OK(ref::mha_combine(r));
    std::vector<float> a(size_t(mine.numel)), w(size_t(mine.numel));
    for (int64_t i = 0; i < mine.numel; ++i) {
      a[size_t(i)] = mine.get(i);
      w[size_t(i)] = want.get(i);
    }
    expect_close(a, w, t, 2.0, 1e-6, "out");
    expect_close(lse_mine, lse_want, DType::kFloat32, 1.0, 1e-6, "lse");
    EXPECT_EQ(lse_mine[0], kInf);
    for (int x = 0; x < d; ++x) EXPECT_EQ(a[size_t(x)], 0.f);
  }
}

}  // namespace
}  // namespace flashattn
