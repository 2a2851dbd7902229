// FP8 (e4m3) attention on the CPU: the reference's emulation of the FP8 kernel (docs/fp8.md,
// docs/algorithm.md "FP8") and the CPU backend that runs it.
//
// What is checked:
//  - descales: the scores (hence the LSE, which the quantized P does not touch) equal those of an
//    fp32 attention on the dequantized inputs x * descale, built here independently of the
//    library's descale indexing, for per-head and per-block factors with odd strides, through
//    every mask, score modifier, GQA, varlen, seqused_k, paged KV, sinks, dv != d and the KV cache;
//  - the quantized P: the output stays within the e4m3 bound of that fp32 attention
//    (|P^ - P| <= 2^-4 P elementwise, so |o - o_fp32| <= 2^-4 max|v|, plus the output rounding),
//    and a hand-computed two-key case shows the quantization is really there;
//  - exact linearity of the descale folding (powers of two), and the backend (public API)
//    giving the reference's bits, with every output element written.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/fp8.h"
#include "cpu/reference.h"
#include "test_reference_util.h"
#include "testing/problem.h"

namespace flashattn {
namespace {

using reftest::fresh_seed;
using reftest::seed_str;
using testing::AttnConfig;
using testing::Buffer;
using testing::FwdProblem;
using testing::KVCacheConfig;
using testing::KVCacheProblem;

constexpr DType kFp8 = DType::kFloat8E4M3;

Buffer nan_buffer(DType t, int64_t n) {
  Buffer b = Buffer::make(t, n);
  b.fill_nan();
  return b;
}

// Descale factors with at most 5 significant bits, in [2^-3, 2^4): a product with an e4m3 value
// (4 bits) is exact in fp32, so the fp32 problem below holds exactly the values the emulation
// dequantizes to.
float random_descale(std::mt19937_64& rng) {
  std::uniform_int_distribution<int> e(-3, 3), m(0, 15);
  return std::ldexp(1.f + m(rng) / 16.f, e(rng));
}

// The descale tensors of one problem, in deliberately non-contiguous layouts: per head [b, h_k]
// stored head-major (batch stride 1, head stride b), per block [b, heads, blocks] with one
// padding element after each head's blocks.
struct Descales {
  bool per_head = false, per_block = false;
  int block_m = 0, block_n = 0;
  int b = 0, h = 0, h_k = 0, nq = 0, nk = 0;
  std::vector<float> q, k, v, qb, kb, vb;

  float head(const std::vector<float>& t, int bb, int hk) const {
    return per_head ? t[size_t(hk) * b + bb] : 1.f;
  }
  float block(const std::vector<float>& t, int n, int heads, int bb, int hh, int blk) const {
    (void)heads;
    return per_block ? t[(size_t(bb) * heads + hh) * (n + 1) + blk] : 1.f;
  }
  // The factor of q row r (query head hq), and of key row t (kv head hk) for k and v.
  float qf(int bb, int hq, int r) const {
    return head(q, bb, hq / (h / h_k)) * block(qb, nq, h, bb, hq, per_block ? r / block_m : 0);
  }
  float kf(int bb, int hk, int t) const {
    return head(k, bb, hk) * block(kb, nk, h_k, bb, hk, per_block ? t / block_n : 0);
  }
  float vf(int bb, int hk, int t) const {
    return head(v, bb, hk) * block(vb, nk, h_k, bb, hk, per_block ? t / block_n : 0);
  }

  void attach(FwdParams* p) const {
    if (per_head) {
      p->q_descale = q.data();
      p->k_descale = k.data();
      p->v_descale = v.data();
      p->q_descale_batch_stride = p->k_descale_batch_stride = p->v_descale_batch_stride = 1;
      p->q_descale_head_stride = p->k_descale_head_stride = p->v_descale_head_stride = b;
    }
    if (per_block) {
      p->descale_block_m = block_m;
      p->descale_block_n = block_n;
      p->q_block_descale = qb.data();
      p->q_block_descale_head_stride = nq + 1;
      p->q_block_descale_batch_stride = int64_t(h) * (nq + 1);
      p->k_block_descale = kb.data();
      p->v_block_descale = vb.data();
      p->k_block_descale_head_stride = p->v_block_descale_head_stride = nk + 1;
      p->k_block_descale_batch_stride = p->v_block_descale_batch_stride = int64_t(h_k) * (nk + 1);
    }
  }
};

Descales make_descales(const FwdParams& p, bool per_head, bool per_block, int block_m,
                       int block_n, std::mt19937_64& rng) {
  Descales d;
  d.per_head = per_head;
  d.per_block = per_block;
  d.block_m = block_m;
  d.block_n = block_n;
  d.b = p.b;
  d.h = p.h;
  d.h_k = p.h_k;
  d.nq = per_block ? (p.seqlen_q + block_m - 1) / block_m : 0;
  d.nk = per_block ? (p.seqlen_k + block_n - 1) / block_n : 0;
  auto fill = [&](std::vector<float>* t, size_t n) {
    t->resize(n);
    for (float& x : *t) x = random_descale(rng);
  };
  fill(&d.q, size_t(p.b) * p.h_k);
  fill(&d.k, size_t(p.b) * p.h_k);
  fill(&d.v, size_t(p.b) * p.h_k);
  fill(&d.qb, size_t(p.b) * p.h * (d.nq + 1));
  fill(&d.kb, size_t(p.b) * p.h_k * (d.nk + 1));
  fill(&d.vb, size_t(p.b) * p.h_k * (d.nk + 1));
  return d;
}

// An fp8 problem: inputs uniform in [-1, 1] rounded to e4m3, o in `out` poisoned with NaN.
FwdProblem fp8_problem(AttnConfig c, uint64_t seed, DType out = DType::kBFloat16) {
  c.dtype = kFp8;
  FwdProblem pr = testing::make_fwd_problem(c, seed);
  pr.o = nan_buffer(out, pr.o.numel);
  pr.bind();
  pr.params.out_dtype = out;
  return pr;
}

// Calls f(seq, row_in_seq, offset_of_row_head0) for the key rows of every sequence of a k-like
// tensor of an fp8 problem (dense, varlen or paged), with `rows_of(b)` rows per sequence.
template <typename F>
void for_key_rows(const FwdProblem& pr, int64_t bs, int64_t rs, F f) {
  const AttnConfig& c = pr.cfg;
  const FwdParams& p = pr.params;
  for (int bb = 0; bb < c.b; ++bb) {
    const int rows = c.varlen() ? c.seqlens_k[bb] : c.seqlen_k;
    for (int t = 0; t < rows; ++t) {
      int64_t off;
      if (p.block_table != nullptr) {
        const int page = p.block_table[bb * p.block_table_batch_stride + t / p.page_block_size];
        off = page * bs + int64_t(t % p.page_block_size) * rs;
      } else if (c.varlen()) {
        off = int64_t(pr.cu_k[bb] + t) * rs;
      } else {
        off = bb * bs + int64_t(t) * rs;
      }
      f(bb, t, off);
    }
  }
}

// The fp32 problem of the values an fp8 problem stands for: every element times its descales,
// with the output in fp32.
FwdProblem dequantized(const FwdProblem& pr, const Descales& ds) {
  FwdProblem f = pr;
  const AttnConfig& c = pr.cfg;
  const FwdParams& p = pr.params;
  f.q = pr.q.converted(DType::kFloat32);
  f.k = pr.k.converted(DType::kFloat32);
  f.v = pr.v.converted(DType::kFloat32);
  f.o = nan_buffer(DType::kFloat32, pr.o.numel);
  for (int bb = 0; bb < c.b; ++bb) {
    const int rows = c.varlen() ? c.seqlens_q[bb] : c.seqlen_q;
    for (int r = 0; r < rows; ++r)
      for (int hq = 0; hq < c.h; ++hq) {
        const int64_t off = (c.varlen() ? int64_t(pr.cu_q[bb] + r) * p.q_row_stride
                                        : bb * p.q_batch_stride + int64_t(r) * p.q_row_stride) +
                            hq * p.q_head_stride;
        for (int x = 0; x < c.d; ++x) f.q.set(off + x, f.q.get(off + x) * ds.qf(bb, hq, r));
      }
  }
  for_key_rows(pr, p.k_batch_stride, p.k_row_stride, [&](int bb, int t, int64_t off) {
    for (int hk = 0; hk < c.h_k; ++hk)
      for (int x = 0; x < c.d; ++x) {
        const int64_t e = off + hk * p.k_head_stride + x;
        f.k.set(e, f.k.get(e) * ds.kf(bb, hk, t));
      }
  });
  for_key_rows(pr, p.v_batch_stride, p.v_row_stride, [&](int bb, int t, int64_t off) {
    for (int hk = 0; hk < c.h_k; ++hk)
      for (int x = 0; x < c.v_dim(); ++x) {
        const int64_t e = off + hk * p.v_head_stride + x;
        f.v.set(e, f.v.get(e) * ds.vf(bb, hk, t));
      }
  });
  f.bind();
  FwdParams& fp = f.params;
  fp.dtype = DType::kFloat32;
  fp.out_dtype = DType::kUnset;
  fp.q_descale = fp.k_descale = fp.v_descale = nullptr;
  fp.q_block_descale = fp.k_block_descale = fp.v_block_descale = nullptr;
  fp.descale_block_m = fp.descale_block_n = 0;
  return f;
}

double max_abs_buffer(const Buffer& b) {
  double m = 0;
  for (int64_t i = 0; i < b.numel; ++i)
    if (std::isfinite(b.get(i))) m = std::max(m, double(std::fabs(b.get(i))));
  return m;
}

// The emulation against fp32 attention on the dequantized inputs: LSE to fp32 rounding (the
// scores carry the descales exactly and the LSE uses the unquantized row sum), output within the
// e4m3 bound of the quantized P plus the output dtype's rounding; every output element written.
void check_against_dequantized(FwdProblem& pr, const Descales& ds) {
  ds.attach(&pr.params);
  FwdProblem f = dequantized(pr, ds);
  ASSERT_TRUE(ref::mha_fwd(f.params).ok());
  const Status st = ref::mha_fwd(pr.params);
  ASSERT_TRUE(st.ok()) << st.to_string();

  for (size_t i = 0; i < pr.lse.size(); ++i) {
    if (std::isinf(f.lse[i])) {
      EXPECT_EQ(pr.lse[i], f.lse[i]) << "lse " << i;
      continue;
    }
    ASSERT_NEAR(pr.lse[i], f.lse[i], 2e-5 * (1 + std::fabs(f.lse[i]))) << "lse " << i;
  }
  const std::vector<float> o8 = testing::gather_o(pr), o32 = testing::gather_o(f);
  ASSERT_EQ(o8.size(), o32.size());
  const double vmax = max_abs_buffer(f.v);
  const double out_eps = pr.params.out_dtype == DType::kFloat16 ? std::ldexp(1.0, -11)
                                                                : std::ldexp(1.0, -8);
  double worst = 0;
  for (size_t i = 0; i < o8.size(); ++i) {
    ASSERT_TRUE(std::isfinite(o8[i])) << "o element " << i << " not written";
    const double err = std::fabs(double(o8[i]) - o32[i]);
    ASSERT_LE(err, std::ldexp(vmax, -4) + out_eps * std::fabs(o32[i]) + 1e-6)
        << "o element " << i << ": " << o8[i] << " vs " << o32[i];
    worst = std::max(worst, err);
  }
  // The probabilities are quantized: a random problem of any size shows it.
  if (o8.size() > 64) EXPECT_GT(worst, 0.0);

  // The CPU backend (public API) runs the same emulation: the same bits.
  FwdProblem viaapi = pr;
  viaapi.o = nan_buffer(pr.params.out_dtype, pr.o.numel);
  viaapi.bind();
  viaapi.params.out_dtype = pr.params.out_dtype;
  ds.attach(&viaapi.params);
  const Status s2 = pr.cfg.varlen() ? mha_varlen_fwd(viaapi.params) : mha_fwd(viaapi.params);
  ASSERT_TRUE(s2.ok()) << s2.to_string();
  EXPECT_EQ(testing::gather_o(viaapi), o8);
  EXPECT_EQ(viaapi.lse, pr.lse);
}

struct Fp8Case {
  AttnConfig cfg;
  bool per_head, per_block;
  int block_m, block_n;
  int page_size;  // > 0: paged KV
};

void run_case(const Fp8Case& k) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_str(seed) + " " + k.cfg.str());
  std::mt19937_64 rng(seed);
  FwdProblem pr = fp8_problem(k.cfg, seed);
  if (k.page_size > 0) {
    pr = testing::to_paged(pr, k.page_size, seed + 1);
    pr.params.out_dtype = DType::kBFloat16;
  }
  const Descales ds = make_descales(pr.params, k.per_head, k.per_block, k.block_m, k.block_n, rng);
  check_against_dequantized(pr, ds);
}

AttnConfig base(int b, int sq, int sk, int h, int hk, int d) {
  AttnConfig c;
  c.b = b;
  c.seqlen_q = sq;
  c.seqlen_k = sk;
  c.h = h;
  c.h_k = hk;
  c.d = d;
  return c;
}

TEST(Fp8Reference, PerHeadDescales) { run_case({base(2, 33, 97, 4, 2, 64), true, false, 0, 0, 0}); }

TEST(Fp8Reference, PerBlockDescalesWithOddBlockSizes) {
  run_case({base(2, 50, 113, 4, 1, 32), false, true, 7, 13, 0});
  run_case({base(1, 97, 33, 2, 2, 16), false, true, 128, 1, 0});
}

TEST(Fp8Reference, PerHeadAndPerBlockTogether) {
  run_case({base(3, 40, 40, 6, 3, 48), true, true, 16, 16, 0});
}

TEST(Fp8Reference, NoDescalesMeansFactorOne) {
  run_case({base(1, 17, 29, 2, 1, 24), false, false, 0, 0, 0});
}

TEST(Fp8Reference, MasksAndScoreModifiers) {
  AttnConfig c = base(2, 45, 70, 4, 2, 32);
  c.causal = true;
  run_case({c, true, true, 8, 16, 0});
  c.causal = false;
  c.window_left = 11;
  c.window_right = 3;
  c.softcap = 2.5f;
  run_case({c, true, true, 8, 16, 0});
  c.window_left = c.window_right = -1;
  c.softcap = 0.f;
  c.alibi = true;
  c.alibi_per_batch = true;
  c.seqlen_q = 70;
  c.seqlen_k = 45;  // s_q > s_k: causal rows with no key give zeros and +inf
  c.causal = true;
  run_case({c, true, true, 16, 8, 0});
}

TEST(Fp8Reference, SinksAndSeparateVHeadDim) {
  AttnConfig c = base(2, 21, 37, 4, 2, 32);
  c.sinks = true;
  c.dv = 16;
  run_case({c, true, true, 4, 8, 0});
}

TEST(Fp8Reference, VarlenWithSequsedAndStrides) {
  AttnConfig c = base(3, 0, 0, 4, 2, 32);
  c.seqlens_q = {5, 0, 31};
  c.seqlens_k = {40, 9, 17};
  c.seqused_k = {33, 0, 17};
  c.padded_strides = true;
  c.causal = true;
  run_case({c, true, true, 8, 6, 0});
}

TEST(Fp8Reference, PagedKVDescalesFollowLogicalPositions) {
  run_case({base(2, 19, 77, 4, 2, 32), true, true, 8, 10, 16});
  run_case({base(2, 19, 77, 2, 2, 32), false, true, 8, 3, 5});
}

TEST(Fp8Reference, Fp16Output) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_str(seed));
  std::mt19937_64 rng(seed);
  FwdProblem pr = fp8_problem(base(1, 30, 30, 2, 2, 32), seed, DType::kFloat16);
  check_against_dequantized(pr, make_descales(pr.params, true, true, 8, 8, rng));
}

// One query, two keys, d = 1, by hand: q = 1, k = (0, -1.5) so s = (0, -1.5) with scale 1,
// v = (0, 1). The row max is 0, 256 exp(-1.5) = 57.1 quantizes to 56 (e4m3 steps of 4 between
// 32 and 64), and the unquantized row sum normalizes: o = (56 / 256) / (1 + exp(-1.5)).
TEST(Fp8Reference, ProbabilitiesAreQuantizedAsTheKernelWill) {
  const uint8_t q = float_to_e4m3(1.f);
  const uint8_t k[2] = {float_to_e4m3(0.f), float_to_e4m3(-1.5f)};
  const uint8_t v[2] = {float_to_e4m3(0.f), float_to_e4m3(1.f)};
  float o = std::nanf(""), lse = std::nanf("");
  FwdParams p;
  p.dtype = kFp8;
  p.out_dtype = DType::kFloat32;  // for the check only; validation wants 16 bits, ref does not
  p.b = p.seqlen_q = 1;
  p.seqlen_k = 2;
  p.h = p.h_k = p.d = 1;
  p.softmax_scale = 1.f;
  p.q_ptr = &q;
  p.k_ptr = const_cast<uint8_t*>(k);
  p.v_ptr = const_cast<uint8_t*>(v);
  p.o_ptr = &o;
  p.softmax_lse_ptr = &lse;
  p.q_row_stride = p.k_row_stride = p.v_row_stride = p.o_row_stride = 1;
  p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = 1;
  ASSERT_TRUE(ref::mha_fwd(p).ok());
  const double l = 1 + std::exp(-1.5);
  EXPECT_EQ(round_to_e4m3(256.f * std::exp(-1.5f)), 56.f);
  EXPECT_NEAR(o, 56.0 / 256.0 / l, 1e-7);
  EXPECT_GT(std::fabs(o - std::exp(-1.5) / l), 3e-3);  // not the unquantized value
  EXPECT_NEAR(lse, std::log(l), 1e-7);
}

// Descales are linear factors: doubling q's per-head factor equals doubling the softmax scale,
// and doubling every v factor doubles the output, bit for bit (powers of two are exact, and the
// quantized P depends only on the scores).
TEST(Fp8Reference, DescaleFoldingIsExactForPowersOfTwo) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_str(seed));
  std::mt19937_64 rng(seed);
  AttnConfig c = base(2, 23, 41, 4, 2, 32);
  c.causal = true;
  FwdProblem a = fp8_problem(c, seed), b2 = fp8_problem(c, seed), c2 = fp8_problem(c, seed);
  Descales ds = make_descales(a.params, true, true, 8, 8, rng);
  ds.attach(&a.params);
  ASSERT_TRUE(ref::mha_fwd(a.params).ok());

  Descales dq = ds;
  for (float& x : dq.q) x *= 2.f;
  dq.attach(&b2.params);
  b2.params.softmax_scale = 0.5f / std::sqrt(32.f);
  ASSERT_TRUE(ref::mha_fwd(b2.params).ok());
  EXPECT_EQ(testing::gather_o(b2), testing::gather_o(a));
  EXPECT_EQ(b2.lse, a.lse);

  Descales dv = ds;
  for (float& x : dv.vb) x *= 2.f;
  dv.attach(&c2.params);
  ASSERT_TRUE(ref::mha_fwd(c2.params).ok());
  const std::vector<float> oa = testing::gather_o(a), oc = testing::gather_o(c2);
  for (size_t i = 0; i < oa.size(); ++i) ASSERT_EQ(oc[i], 2.f * oa[i]) << i;
  EXPECT_EQ(c2.lse, a.lse);
}

// Descales of the KV cache are indexed by the call's sequence and the cache index (left padding
// counted), the appended tokens taking the factors of the positions they land at.
TEST(Fp8Reference, KVCacheAppendWithDescales) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_str(seed));
  std::mt19937_64 rng(seed);
  KVCacheConfig kc;
  kc.attn = base(3, 3, 0, 4, 2, 32);
  kc.attn.dtype = kFp8;
  kc.attn.causal = true;
  kc.seqlen_cache = 40;
  kc.b_cache = 4;
  kc.seqlen_new = 3;
  kc.batch_idx = true;
  kc.leftpad = true;
  KVCacheProblem pr = testing::make_kvcache_problem(kc, seed);
  pr.o = nan_buffer(DType::kBFloat16, pr.o.numel);
  pr.bind();
  pr.params.out_dtype = DType::kBFloat16;
  FwdParams shape = pr.params;
  shape.b = kc.attn.b;
  shape.seqlen_k = kc.seqlen_cache;
  const Descales ds = make_descales(shape, true, true, 2, 8, rng);
  ds.attach(&pr.params);

  // fp32 twin: the cache and the new tokens dequantized with the factors of their cache index.
  KVCacheProblem f = pr;
  f.q = pr.q.converted(DType::kFloat32);
  f.k_cache = pr.k_cache.converted(DType::kFloat32);
  f.v_cache = pr.v_cache.converted(DType::kFloat32);
  f.knew = pr.knew.converted(DType::kFloat32);
  f.vnew = pr.vnew.converted(DType::kFloat32);
  f.o = nan_buffer(DType::kFloat32, pr.o.numel);
  const KVCacheParams& p = pr.params;
  for (int bb = 0; bb < kc.attn.b; ++bb) {
    const int cb = pr.cache_batch_idx[bb];
    for (int hk = 0; hk < 2; ++hk) {
      for (int t = 0; t < kc.seqlen_cache; ++t)
        for (int x = 0; x < 32; ++x) {
          const int64_t e = cb * p.k_batch_stride + t * p.k_row_stride + hk * p.k_head_stride + x;
          f.k_cache.set(e, f.k_cache.get(e) * ds.kf(bb, hk, t));
          const int64_t ev = cb * p.v_batch_stride + t * p.v_row_stride + hk * p.v_head_stride + x;
          f.v_cache.set(ev, f.v_cache.get(ev) * ds.vf(bb, hk, t));
        }
      for (int t = 0; t < kc.seqlen_new; ++t)
        for (int x = 0; x < 32; ++x) {
          const int pos = pr.cache_seqlens[bb] + t;
          const int64_t e = bb * p.knew_batch_stride + t * p.knew_row_stride +
                            hk * p.knew_head_stride + x;
          f.knew.set(e, f.knew.get(e) * ds.kf(bb, hk, pos));
          const int64_t ev = bb * p.vnew_batch_stride + t * p.vnew_row_stride +
                             hk * p.vnew_head_stride + x;
          f.vnew.set(ev, f.vnew.get(ev) * ds.vf(bb, hk, pos));
        }
    }
    for (int r = 0; r < kc.attn.seqlen_q; ++r)
      for (int hq = 0; hq < 4; ++hq)
        for (int x = 0; x < 32; ++x) {
          const int64_t e = bb * p.q_batch_stride + r * p.q_row_stride + hq * p.q_head_stride + x;
          f.q.set(e, f.q.get(e) * ds.qf(bb, hq, r));
        }
  }
  f.bind();
  KVCacheParams& fp = f.params;
  fp.dtype = DType::kFloat32;
  fp.out_dtype = DType::kUnset;
  fp.q_descale = fp.k_descale = fp.v_descale = nullptr;
  fp.q_block_descale = fp.k_block_descale = fp.v_block_descale = nullptr;
  fp.descale_block_m = fp.descale_block_n = 0;
  ASSERT_TRUE(ref::mha_fwd_kvcache(fp).ok());

  const Buffer knew_before = pr.knew;
  const Status st = mha_fwd_kvcache(pr.params);  // the public API: validation, then the backend
  ASSERT_TRUE(st.ok()) << st.to_string();
  for (size_t i = 0; i < pr.lse.size(); ++i)
    ASSERT_NEAR(pr.lse[i], f.lse[i], 2e-5 * (1 + std::fabs(f.lse[i]))) << i;
  double vmax = max_abs_buffer(f.v_cache);
  for (int64_t i = 0; i < pr.o.numel; ++i) {
    const float a = pr.o.get(i), b = f.o.get(i);
    if (std::isnan(b)) continue;  // stride padding (none here) stays poisoned in both
    ASSERT_LE(std::fabs(a - b), std::ldexp(vmax, -4) + std::ldexp(std::fabs(b), -8) + 1e-6) << i;
  }
  // The appended tokens are the e4m3 bytes of knew, unchanged.
  for (int bb = 0; bb < kc.attn.b; ++bb)
    for (int t = 0; t < kc.seqlen_new; ++t)
      for (int x = 0; x < 32; ++x) {
        const int64_t dst = pr.cache_batch_idx[bb] * p.k_batch_stride +
                            (pr.cache_seqlens[bb] + t) * p.k_row_stride + x;
        EXPECT_EQ(pr.k_cache.bytes[size_t(dst)],
                  knew_before.bytes[size_t(bb * p.knew_batch_stride + t * p.knew_row_stride + x)]);
      }
}

}  // namespace
}  // namespace flashattn
