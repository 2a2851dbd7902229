// Tests of the GPU KV-cache path (mha_fwd_kvcache on device memory: src/cuda/kvcache.cu and the
// forward kernel behind it), skipped without a GPU.
//
// Each case builds a random KVCacheProblem (testing/problem.h: outputs and unused cache rows
// poisoned with NaN), runs it on the GPU and checks:
//  - the cache after the append, bitwise against the CPU backend's: v is a copy; k is rotated in
//    fp32 from the stored dtype (separate products and sum, no FMA) and rounded once on both
//    sides, so they agree exactly (results in the fp32 subnormal range, where the GPU flushes to
//    zero, cannot occur with these inputs). k is also within one rounding to the dtype (plus
//    1e-6 for the fp32 formula) of the double-precision reference's rotation;
//  - outputs and LSE by flash_attn's rule, max|out - ref| <= 2 max|out_lowp - ref| + 1e-5 (LSE:
//    + 1e-3), where ref is the CPU reference (double) and out_lowp the same attention computed
//    in the input dtype like PyTorch's fp16/bf16 path (lowp_row). Two oracles:
//      A. the reference over exactly the values the kernel attends: the cache after the append
//         and q rotated in fp32 and rounded to the dtype (the kernel reads dtype q);
//      B. (rotary cases) the reference run end to end on the original inputs, rotary in double,
//         so the rounding of the rotated q and k to the dtype is inside the rule too;
//  - every logical output written (finite), padding untouched (still NaN), no NaN LSE;
//  - repeatability: a second run is bitwise identical (splits included).
// Large caches (up to 128k keys) use the GPU fp32 reference (src/cuda/reference.h) instead of
// the CPU one. Nothing here times anything.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "api/validate.h"
#include "common/mask.h"
#include "common/numeric.h"
#include "common/rotary.h"
#include "cpu/reference.h"
#include "cuda/kvcache.h"
#include "cuda/reference.h"
#include "flashattn/flashattn.h"
#include "gpu/gpu_testing.h"
#include "testing/problem.h"

namespace flashattn::testing {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr DType kF32 = DType::kFloat32;

bool hdim_compiled(int d) {
  const int rounded =
      d <= 32 ? 32 : d <= 64 ? 64 : d <= 96 ? 96 : d <= 128 ? 128 : d <= 192 ? 192 : 256;
  for (int hd : build_info().head_dims)
    if (hd == rounded) return true;
  return false;
}

std::vector<DType> compiled_dtypes() {
  std::vector<DType> v;
  for (DType t : {DType::kBFloat16, DType::kFloat16})
    for (const std::string& s : build_info().dtypes)
      if (s == dtype_name(t)) v.push_back(t);
  return v;
}

// ---------------------------------------------------------------------------- problems --

struct Case {
  KVCacheConfig kc;
  bool scalar_seqlen = false;  // one cache_seqlen for all sequences (cache_seqlens = null)
};

std::string describe(const Case& c) {
  const KVCacheConfig& k = c.kc;
  AttnConfig a = k.attn;
  a.seqlen_k = k.seqlen_cache;  // sk = the cache capacity
  std::ostringstream s;
  s << a.str() << " new=" << k.seqlen_new;
  if (k.b_cache > 0) s << " b_cache=" << k.b_cache;
  if (k.batch_idx) s << " batch_idx";
  if (k.leftpad) s << " leftpad";
  if (k.page_size > 0) s << " page=" << k.page_size;
  if (k.rotary_dim > 0) s << " rotary=" << k.rotary_dim << (k.rotary_interleaved ? "i" : "h");
  if (c.scalar_seqlen) s << " scalar_seqlen";
  return s.str();
}

Case make_case(DType t, int b, int sq, int h, int hk, int d, int cap, int knew) {
  Case c;
  AttnConfig& a = c.kc.attn;
  a.dtype = t;
  a.b = b;
  a.seqlen_q = sq;
  a.h = h;
  a.h_k = hk;
  a.d = d;
  c.kc.seqlen_cache = cap;
  c.kc.seqlen_new = knew;
  return c;
}

// Re-points params after a copy, keeping the scalar-length mode of `model`.
void rebind(KVCacheProblem& x, const KVCacheParams& model) {
  x.bind();
  if (model.cache_seqlens == nullptr) {
    x.params.cache_seqlens = nullptr;
    x.params.cache_seqlen = model.cache_seqlen;
  }
}

KVCacheProblem make_problem(const Case& c, uint64_t seed) {
  KVCacheConfig kc = c.kc;
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  const AttnConfig& a = kc.attn;
  const bool q_advances = a.causal || a.window_left >= 0 || a.window_right >= 0;
  // Lengths leave room for the appended keys and every rotated position (rotary table = cap).
  if (kc.cache_seqlens.empty()) {
    const int reserve = std::max(kc.seqlen_new, kc.rotary_dim > 0 && q_advances ? a.seqlen_q : 1);
    std::uniform_int_distribution<int> u(0, std::max(0, kc.seqlen_cache - reserve));
    const int first = u(rng);
    for (int i = 0; i < a.b; ++i) kc.cache_seqlens.push_back(c.scalar_seqlen ? first : u(rng));
  }
  KVCacheProblem pr = make_kvcache_problem(kc, seed);
  if (c.scalar_seqlen) {
    pr.params.cache_seqlens = nullptr;
    pr.params.cache_seqlen = pr.cache_seqlens[0];
  }
  return pr;
}

Buffer to_f32(const Buffer& b) { return b.bytes.empty() ? b : b.converted(kF32); }

// The same problem with every floating-point buffer upcast to fp32 (exact).
KVCacheProblem as_fp32(const KVCacheProblem& pr) {
  KVCacheProblem c = pr;
  for (Buffer* b : {&c.q, &c.k_cache, &c.v_cache, &c.knew, &c.vnew, &c.o, &c.rotary_cos,
                    &c.rotary_sin})
    *b = to_f32(*b);
  c.cfg.attn.dtype = kF32;
  c.params.dtype = kF32;
  rebind(c, pr.params);
  return c;
}

int cache_len(const KVCacheProblem& pr, int i) {
  return pr.params.cache_seqlens != nullptr ? pr.cache_seqlens[i] : pr.params.cache_seqlen;
}

// q rotated the way the kernel does it: fp32 from the dtype, one rounding back to the dtype.
Buffer rotated_q(const KVCacheProblem& pr) {
  const KVCacheParams p = detail::resolve(pr.params);
  const bool q_advances = p.is_causal || p.window_size_left >= 0 || p.window_size_right >= 0;
  const int half = p.rotary_dim / 2;
  Buffer q = pr.q;
  std::vector<float> row(p.d);
  for (int bb = 0; bb < p.b; ++bb)
    for (int r = 0; r < p.seqlen_q; ++r)
      for (int hh = 0; hh < p.h; ++hh) {
        const int64_t off = bb * p.q_batch_stride + r * p.q_row_stride + hh * p.q_head_stride;
        for (int x = 0; x < p.d; ++x) row[x] = q.get(off + x);
        const int pos = cache_len(pr, bb) + (q_advances ? r : 0);
        auto table = [&](int k, float* c, float* s) {
          *c = pr.rotary_cos.get(int64_t(pos) * half + k);
          *s = pr.rotary_sin.get(int64_t(pos) * half + k);
        };
        apply_rotary(row.data(), p.rotary_dim, p.rotary_interleaved, table);
        for (int x = 0; x < p.d; ++x) q.set(off + x, row[x]);
      }
  return q;
}

// The problem the kernel's attention step sees: the cache after the append (taken from `after`),
// q rotated and rounded, lengths cache_seqlens + seqlen_knew, nothing left to append or rotate.
KVCacheProblem post_append(const KVCacheProblem& pr, const KVCacheProblem& after) {
  KVCacheProblem post = pr;
  post.k_cache = after.k_cache;
  post.v_cache = after.v_cache;
  if (pr.cfg.rotary_dim > 0) post.q = rotated_q(pr);
  const int knew = pr.params.knew_ptr != nullptr ? pr.params.seqlen_knew : 0;
  for (int& cs : post.cache_seqlens) cs += knew;
  post.cfg.seqlen_new = 0;
  post.cfg.rotary_dim = 0;
  post.knew = post.vnew = post.rotary_cos = post.rotary_sin = Buffer{};
  post.params.seqlen_knew = 0;
  post.params.rotary_dim = 0;
  post.params.seqlen_ro = 0;
  KVCacheParams model = pr.params;
  model.cache_seqlen += knew;
  rebind(post, model);
  return post;
}

// ------------------------------------------------------------------ low-precision attention --

// Element offset of cache index c, kv head hk, of sequence bb (contiguous or paged).
int64_t cache_offset(const KVCacheProblem& pr, int bb, int c, int hk, bool is_v) {
  const KVCacheParams& p = pr.params;
  const int64_t bs = is_v ? p.v_batch_stride : p.k_batch_stride;
  const int64_t rs = is_v ? p.v_row_stride : p.k_row_stride;
  const int64_t hs = is_v ? p.v_head_stride : p.k_head_stride;
  if (p.block_table != nullptr) {
    const int page =
        pr.block_table[int64_t(bb) * p.block_table_batch_stride + c / p.page_block_size];
    return int64_t(page) * bs + int64_t(c % p.page_block_size) * rs + int64_t(hk) * hs;
  }
  const int cb = pr.cache_batch_idx.empty() ? bb : pr.cache_batch_idx[bb];
  return int64_t(cb) * bs + int64_t(c) * rs + int64_t(hk) * hs;
}

// Attention of one (sequence bb, query row i, query head hh) of a post-append problem computed
// like PyTorch's fp16/bf16 path (flash_attn's attention_ref with upcast=False): q * scale rounded
// to the dtype, scores rounded, softcap steps rounded, ALiBi added in fp32, softmax in fp32 then
// probabilities rounded, output rounded. q/k/v are the problem's values as fp32 arrays.
void lowp_row(const KVCacheProblem& post, DType t, const float* q, const float* k, const float* v,
              int bb, int i, int hh, float* out, double* lse_out) {
  const KVCacheParams p = detail::resolve(post.params);
  const int lp = post.cache_leftpad.empty() ? 0 : post.cache_leftpad[bb];
  const int s_k = cache_len(post, bb) - lp;
  const VisibilityMask mask = VisibilityMask::make(p.seqlen_q, s_k, p.is_causal,
                                                   p.window_size_left, p.window_size_right);
  const int kvh = hh / (p.h / p.h_k);
  const int64_t qo = bb * p.q_batch_stride + i * p.q_row_stride + hh * p.q_head_stride;
  std::vector<double> qs(p.d);
  for (int x = 0; x < p.d; ++x) qs[x] = round_to_dtype(q[qo + x] * p.softmax_scale, t);
  const double slope = p.alibi_slopes ? p.alibi_slopes[bb * p.alibi_slopes_batch_stride + hh] : 0.0;
  const int cb = mask.col_begin(i), ce = mask.col_end(i);
  std::vector<double> s;
  double m = -kInf;
  for (int j = cb; j < ce; ++j) {
    const int64_t ko = cache_offset(post, bb, lp + j, kvh, false);
    double dot = 0;
    for (int x = 0; x < p.d; ++x) dot += qs[x] * k[ko + x];
    double val = round_to_dtype(float(dot), t);
    if (p.softcap > 0) {
      val = round_to_dtype(float(val / p.softcap), t);
      val = round_to_dtype(float(std::tanh(val)), t);
      val = round_to_dtype(float(val * p.softcap), t);
    }
    if (slope != 0) val = float(val - slope * std::abs(i + s_k - p.seqlen_q - j));
    s.push_back(val);
    m = std::max(m, val);
  }
  // Attention sinks: one more fp32 softmax term with no value (a row with no key: lse = sink).
  const double sink = p.sinks != nullptr ? double(p.sinks[hh]) : -kInf;
  if (s.empty()) {
    for (int x = 0; x < p.d; ++x) out[x] = 0.f;
    *lse_out = sink == -kInf ? kInf : sink;
    return;
  }
  m = std::max(m, sink);
  double l = std::exp(sink - m);
  for (double val : s) l += std::exp(val - m);
  std::vector<double> acc(p.d, 0.0);
  for (int j = cb; j < ce; ++j) {
    const double pj = round_to_dtype(float(std::exp(s[j - cb] - m) / l), t);
    const int64_t vo = cache_offset(post, bb, lp + j, kvh, true);
    for (int x = 0; x < p.d; ++x) acc[x] += pj * v[vo + x];
  }
  for (int x = 0; x < p.d; ++x) out[x] = round_to_dtype(float(acc[x]), t);
  *lse_out = m + std::log(l);
}

// ------------------------------------------------------------------------------ running --

Layout q_layout(const KVCacheProblem& pr) {
  const AttnConfig& a = pr.cfg.attn;
  return Layout::make(a.b, a.seqlen_q, a.h, a.d, a.padded_strides);
}

// o as dense [b * s_q, h, d] floats.
std::vector<float> gather_o(const KVCacheProblem& pr) {
  const AttnConfig& a = pr.cfg.attn;
  return gather(pr.o, q_layout(pr), a.b, a.seqlen_q, a.h, a.d, false, 0);
}

struct GpuResult {
  Status status;
  KVCacheProblem out;  // the problem with o, lse and the cache copied back from the device
};

// Runs on the GPU through the public entry point (or `fn` on the device params).
template <typename Fn>
GpuResult run_gpu_with(const KVCacheProblem& pr, Fn fn) {
  DeviceKVCacheProblem dev(pr);
  GpuResult r;
  r.status = fn(dev.params);
  r.out = pr;
  dev.copy_back(r.out);
  rebind(r.out, pr.params);
  return r;
}

GpuResult run_gpu(const KVCacheProblem& pr) {
  return run_gpu_with(pr, [](const KVCacheParams& p) { return mha_fwd_kvcache(p); });
}

// o and LSE of two runs are the same bits; `what` names the pair in the failure message.
void expect_same_bits(const KVCacheProblem& a, const KVCacheProblem& b, const std::string& what) {
  EXPECT_EQ(0, std::memcmp(a.o.data(), b.o.data(), a.o.bytes.size())) << what << " differ (output)";
  EXPECT_EQ(0, std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)))
      << what << " differ (LSE)";
}

void check_written(const KVCacheProblem& pr, const KVCacheProblem& got) {
  int64_t nonfinite = 0;
  for (float x : gather_o(got)) nonfinite += std::isfinite(x) ? 0 : 1;
  EXPECT_EQ(nonfinite, 0) << "output elements not written (still NaN) or non-finite";
  const AttnConfig& a = pr.cfg.attn;
  int64_t nan_total = 0;
  for (int64_t x = 0; x < got.o.numel; ++x) nan_total += std::isnan(got.o.get(x)) ? 1 : 0;
  EXPECT_EQ(nan_total, got.o.numel - int64_t(a.b) * a.seqlen_q * a.h * a.d)
      << "elements outside the output view were written";
  int64_t lse_nan = 0;
  for (float x : got.lse) lse_nan += std::isnan(x) ? 1 : 0;
  EXPECT_EQ(lse_nan, 0) << "LSE entries not written";
}

// Appended k against the double-precision reference's (stored as fp32): within one rounding to
// the dtype; NaN (never written) positions must agree.
void check_k_against_reference(const KVCacheProblem& got, const KVCacheProblem& ref32, DType t) {
  const double u = unit_roundoff(t);
  int64_t bad = 0, first = -1;
  for (int64_t x = 0; x < got.k_cache.numel; ++x) {
    const double g = got.k_cache.get(x), w = ref32.k_cache.get(x);
    const bool ok = std::isnan(w) ? std::isnan(g) : std::fabs(g - w) <= u * std::fabs(w) + 1e-6;
    if (!ok && bad++ == 0) first = x;
  }
  EXPECT_EQ(bad, 0) << "k cache differs from the reference's rotation beyond one rounding (first "
                    << "at element " << first << ")";
}

struct Errors {
  double out = 0, out_lowp = 0, lse = 0, lse_lowp = 0;
};

// Max errors of the GPU result and of the low-precision attention against an oracle, over every
// (sequence, row, head); LSE infinities must match exactly.
Errors measure(const KVCacheProblem& post, DType t, const std::vector<float>& got_o,
               const std::vector<float>& got_lse, const std::vector<float>& ref_o,
               const std::vector<float>& ref_lse, const Buffer& q32, const Buffer& k32,
               const Buffer& v32) {
  const KVCacheParams& p = post.params;
  Errors e;
  std::vector<float> lo(p.d);
  const float* qf = static_cast<const float*>(q32.data());
  const float* kf = static_cast<const float*>(k32.data());
  const float* vf = static_cast<const float*>(v32.data());
  for (int bb = 0; bb < p.b; ++bb)
    for (int i = 0; i < p.seqlen_q; ++i)
      for (int hh = 0; hh < p.h; ++hh) {
        double lse_lowp;
        lowp_row(post, t, qf, kf, vf, bb, i, hh, lo.data(), &lse_lowp);
        const int64_t base = ((int64_t(bb) * p.seqlen_q + i) * p.h + hh) * p.d;
        for (int x = 0; x < p.d; ++x) {
          e.out_lowp = std::max(e.out_lowp, double(std::fabs(lo[x] - ref_o[base + x])));
          e.out = std::max(e.out, double(std::fabs(got_o[base + x] - ref_o[base + x])));
        }
        const int64_t li = (int64_t(bb) * p.h + hh) * p.seqlen_q + i;
        const double rl = ref_lse[li], gl = got_lse[li];
        if (std::isinf(rl) || std::isinf(gl)) {
          EXPECT_EQ(gl, rl) << "LSE infinity mismatch at b=" << bb << " i=" << i << " h=" << hh;
          EXPECT_TRUE(std::isinf(lse_lowp)) << "lowp reference disagrees on an empty row";
          continue;
        }
        e.lse = std::max(e.lse, std::fabs(gl - rl));
        e.lse_lowp = std::max(e.lse_lowp, std::fabs(lse_lowp - rl));
      }
  return e;
}

void check_bounds(const char* group, const std::string& cfg, DType t, const Errors& e) {
  const double bound = 2 * e.out_lowp + 1e-5;
  const double lse_bound = 2 * e.lse_lowp + 1e-3;
  std::printf("[gpu-kvcache] %s max_err=%.3g bound=%.3g lse_err=%.3g lse_bound=%.3g cfg=%s\n",
              group, e.out, bound, e.lse, lse_bound, cfg.c_str());
  std::fflush(stdout);
  EXPECT_LE(e.out, bound) << group << ": " << cfg;
  EXPECT_LE(e.lse, lse_bound) << group << ": " << cfg;
  // The oracle pair must agree on the semantics, or the bound above would mean nothing.
  EXPECT_LE(e.out_lowp, t == DType::kBFloat16 ? 0.05 : 0.01) << "lowp far from the oracle: " << cfg;
}

// The attention of `got` (a GPU result) against oracle A (and B for rotary problems).
void check_attention(const char* group, const std::string& cfg, const KVCacheProblem& pr,
                     const KVCacheProblem& got) {
  const DType t = pr.cfg.attn.dtype;
  const KVCacheProblem post = post_append(pr, got);
  KVCacheProblem post32 = as_fp32(post);
  const Status rs = ref::mha_fwd_kvcache(post32.params);
  ASSERT_TRUE(rs.ok()) << "CPU reference (post-append): " << rs.to_string();
  const std::vector<float> got_o = gather_o(got);
  const Errors a = measure(post, t, got_o, got.lse, gather_o(post32), post32.lse, post32.q,
                           post32.k_cache, post32.v_cache);
  check_bounds(group, cfg, t, a);
  if (pr.cfg.rotary_dim > 0) {
    KVCacheProblem ref32 = as_fp32(pr);
    ASSERT_TRUE(ref::mha_fwd_kvcache(ref32.params).ok());
    const Errors b = measure(post, t, got_o, got.lse, gather_o(ref32), ref32.lse, post32.q,
                             post32.k_cache, post32.v_cache);
    check_bounds((std::string(group) + " end-to-end").c_str(), cfg, t, b);
  }
}

// The whole check of one small case (see the file comment).
void check_case(const char* group, const Case& c) {
  const uint64_t seed = fresh_seed();
  const std::string cfg = describe(c);
  SCOPED_TRACE(cfg + " seed=" + std::to_string(seed));
  const KVCacheProblem pr = make_problem(c, seed);
  const GpuResult g = run_gpu(pr);
  ASSERT_TRUE(g.status.ok()) << g.status.to_string();
  check_written(pr, g.out);

  // The cache after the append: bitwise equal to the CPU backend's.
  KVCacheProblem cpu = pr;
  rebind(cpu, pr.params);
  const Status cs = mha_fwd_kvcache(cpu.params);
  ASSERT_TRUE(cs.ok()) << "CPU backend: " << cs.to_string();
  EXPECT_EQ(0, std::memcmp(g.out.v_cache.data(), cpu.v_cache.data(), cpu.v_cache.bytes.size()))
      << "v cache differs from the CPU backend's";
  EXPECT_EQ(0, std::memcmp(g.out.k_cache.data(), cpu.k_cache.data(), cpu.k_cache.bytes.size()))
      << "k cache differs from the CPU backend's";
  if (c.kc.rotary_dim > 0 && c.kc.seqlen_new > 0) {
    KVCacheProblem ref32 = as_fp32(pr);
    ASSERT_TRUE(ref::mha_fwd_kvcache(ref32.params).ok());
    check_k_against_reference(g.out, ref32, c.kc.attn.dtype);
  }

  check_attention(group, cfg, pr, g.out);

  // Repeatable: the same call again (appending the same rows) gives the same bits.
  const GpuResult again = run_gpu(pr);
  ASSERT_TRUE(again.status.ok());
  expect_same_bits(g.out, again.out, "two runs");
  EXPECT_EQ(0, std::memcmp(g.out.k_cache.data(), again.out.k_cache.data(),
                           g.out.k_cache.bytes.size()))
      << "two runs differ (k cache)";
}

class KVCacheGpu : public GpuTest {};

// ------------------------------------------------------------------------------ the tests --

TEST_F(KVCacheGpu, AppendAndAttendContiguous) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128}) {
      if (!hdim_compiled(d)) continue;
      for (int sq : {1, 2, 7, 16}) {
        for (int knew : {0, 1, 5, 16}) {
          Case c = make_case(t, 3, sq, 4, 4, d, sq == 7 ? 97 : 300, knew);
          check_case("contiguous", c);
        }
      }
      Case s = make_case(t, 2, 3, 6, 2, d, 129, 2);
      s.scalar_seqlen = true;
      check_case("scalar cache_seqlen", s);
      s.kc.seqlen_new = 0;
      check_case("scalar cache_seqlen, no append", s);
      Case pad = make_case(t, 2, 5, 4, 2, d, 200, 3);
      pad.kc.attn.padded_strides = true;
      check_case("padded strides", pad);
    }
  }
}

TEST_F(KVCacheGpu, Rotary) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128}) {
      if (!hdim_compiled(d)) continue;
      for (bool interleaved : {true, false}) {
        for (int rd : {d, d / 2, 18, 2}) {
          for (auto [sq, knew, causal] : {std::tuple{1, 1, false}, {3, 3, true}, {16, 5, true},
                                          {6, 16, false}, {4, 2, true}}) {
            Case c = make_case(t, 2, sq, 4, 2, d, 211, knew);
            c.kc.rotary_dim = rd;
            c.kc.rotary_interleaved = interleaved;
            c.kc.attn.causal = causal;
            check_case("rotary", c);
          }
        }
      }
      // Rotary on q only: knew given with zero new tokens.
      Case q_only = make_case(t, 2, 3, 4, 4, d, 150, 0);
      q_only.kc.rotary_dim = d;
      q_only.kc.attn.window_left = 20;
      {
        const uint64_t seed = fresh_seed();
        KVCacheProblem pr = make_problem(q_only, seed);
        pr.knew = Buffer::make(t, 8 * d);
        pr.vnew = Buffer::make(t, 8 * d);
        pr.params.knew_ptr = pr.knew.data();
        pr.params.vnew_ptr = pr.vnew.data();
        pr.params.knew_batch_stride = pr.params.vnew_batch_stride = 0;
        pr.params.knew_row_stride = pr.params.vnew_row_stride = d;
        pr.params.knew_head_stride = pr.params.vnew_head_stride = 0;
        const GpuResult g = run_gpu(pr);
        ASSERT_TRUE(g.status.ok()) << g.status.to_string();
        check_written(pr, g.out);
        check_attention("rotary q only", describe(q_only), pr, g.out);
      }
      // Window and padded strides with halves rotary of an odd pair count.
      Case w = make_case(t, 3, 5, 6, 3, d, 260, 4);
      w.kc.rotary_dim = 22;
      w.kc.rotary_interleaved = false;
      w.kc.attn.window_left = 7;
      w.kc.attn.window_right = 2;
      w.kc.attn.padded_strides = true;
      check_case("rotary+window+padded", w);
    }
  }
}

TEST_F(KVCacheGpu, BatchIdxAndLeftpad) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128}) {
      if (!hdim_compiled(d)) continue;
      for (int sq : {1, 4, 13}) {
        Case bi = make_case(t, 3, sq, 4, 2, d, 190, 3);
        bi.kc.b_cache = 5;
        bi.kc.batch_idx = true;
        check_case("batch_idx", bi);
        Case lp = make_case(t, 4, sq, 4, 4, d, 190, sq == 13 ? 0 : 2);
        lp.kc.leftpad = true;
        check_case("leftpad", lp);
        lp.kc.attn.causal = true;
        check_case("leftpad+causal", lp);
        Case both = make_case(t, 3, sq, 8, 2, d, 233, 4);
        both.kc.b_cache = 4;
        both.kc.batch_idx = true;
        both.kc.leftpad = true;
        both.kc.rotary_dim = d / 2;
        both.kc.rotary_interleaved = sq % 2 == 0;
        both.kc.attn.causal = sq > 1;
        check_case("batch_idx+leftpad+rotary", both);
        both.kc.attn.window_left = 9;
        both.kc.attn.alibi = true;
        check_case("batch_idx+leftpad+rotary+window+alibi", both);
      }
    }
  }
}

TEST_F(KVCacheGpu, MasksAndScoreMods) {
  for (DType t : compiled_dtypes()) {
    for (int d : {64, 128}) {
      if (!hdim_compiled(d)) continue;
      for (int sq : {1, 5, 16}) {
        Case c = make_case(t, 2, sq, 8, 2, d, 270, 2);
        c.kc.attn.causal = true;
        check_case("causal", c);
        Case w = c;
        w.kc.attn.causal = false;
        w.kc.attn.window_left = 30;
        w.kc.attn.window_right = 0;
        check_case("window", w);
        w.kc.attn.window_left = 0;
        w.kc.attn.window_right = 3;
        check_case("window", w);
        Case cap = make_case(t, 3, sq, 6, 6, d, 150, 1);
        cap.kc.attn.softcap = 4.f;
        check_case("softcap", cap);
        cap.kc.attn.causal = true;
        cap.kc.leftpad = true;
        check_case("softcap+causal+leftpad", cap);
        Case al = make_case(t, 2, sq, 4, 1, d, 180, 3);
        al.kc.attn.alibi = true;
        check_case("alibi+mqa", al);
        al.kc.attn.alibi_per_batch = true;
        al.kc.attn.causal = true;
        al.kc.rotary_dim = d;
        check_case("alibi[b,h]+causal+rotary", al);
        Case mqa = make_case(t, 2, sq, 12, 1, d, 120, 4);
        mqa.kc.attn.softmax_scale = 0.3f;
        check_case("mqa+scale", mqa);
      }
    }
  }
}

// Decode with GQA packs the query heads of a KV head into one CTA: the packed and the unpacked
// runs are the same math row by row (the kernel's rows are independent and the key blocks are
// the same), so with one split they must agree bit for bit.
TEST_F(KVCacheGpu, GqaDecodePackingMatchesUnpacked) {
  for (DType t : compiled_dtypes()) {
    for (int d : {128, 64}) {
      if (!hdim_compiled(d)) continue;
      struct G { int h, hk, page; float softcap; bool rotary, causal; };
      for (G gc : {G{32, 8, 0, 0.f, false, false}, G{8, 1, 0, 0.f, true, true},
                   G{6, 2, 0, 5.f, false, true}, G{16, 4, 16, 0.f, true, false}}) {
        Case c = make_case(t, 3, 1, gc.h, gc.hk, d, 700, 1);
        c.kc.page_size = gc.page;
        c.kc.attn.softcap = gc.softcap;
        c.kc.attn.causal = gc.causal;
        c.kc.rotary_dim = gc.rotary ? d : 0;
        c.kc.attn.num_splits = 1;
        const std::string cfg = describe(c);
        const uint64_t seed = fresh_seed();
        SCOPED_TRACE(cfg + " seed=" + std::to_string(seed));
        const KVCacheProblem pr = make_problem(c, seed);
        auto direct = [](bool pack) {
          return [pack](const KVCacheParams& dp) {
            const KVCacheParams r = detail::resolve(dp);
            if (Status s = detail::validate_kvcache(r, Backend::kCuda); !s.ok()) return s;
            cuda::KVCacheRunOptions opt;
            opt.pack_gqa = pack;
            return cuda::run_mha_fwd_kvcache(r, opt);
          };
        };
        const GpuResult packed = run_gpu_with(pr, direct(true));
        const GpuResult plain = run_gpu_with(pr, direct(false));
        ASSERT_TRUE(packed.status.ok()) << packed.status.to_string();
        ASSERT_TRUE(plain.status.ok()) << plain.status.to_string();
        check_written(pr, packed.out);
        check_written(pr, plain.out);
        expect_same_bits(packed.out, plain.out, "packed and unpacked GQA decode");
        check_attention("gqa packed", cfg, pr, packed.out);
        check_attention("gqa unpacked", cfg, pr, plain.out);
        // The public entry (packing, split heuristic) on the same problem.
        Case h = c;
        h.kc.attn.num_splits = 0;
        check_case("gqa decode, heuristic splits", h);
      }
    }
  }
}

// Every KV-cache call runs the split-capable kernels, so a contiguous cache and a paged one
// holding the same keys give the same bits with one split. With the heuristic's splits both are
// checked against the reference instead: on sm_90 a contiguous cache merges its splits inside
// thread-block clusters (and the heuristic may pick another count for that), a paged one in the
// combine kernel.
TEST_F(KVCacheGpu, ContiguousAndPagedCachesGiveTheSameBits) {
  for (DType t : compiled_dtypes()) {
    for (int d : {128, 64}) {
      if (!hdim_compiled(d)) continue;
      for (int splits : {1, 0}) {
        for (int page : {16, 64}) {
          Case c = make_case(t, 3, 1, 8, 2, d, 512, 0);
          c.kc.cache_seqlens = {500, 37, 256};
          c.kc.attn.num_splits = splits;
          Case cp = c;
          cp.kc.page_size = page;
          const uint64_t seed = fresh_seed();
          SCOPED_TRACE(describe(cp) + " seed=" + std::to_string(seed));
          const KVCacheProblem contiguous = make_problem(c, seed);
          KVCacheProblem paged = make_problem(cp, seed + 1);
          // The contiguous problem's keys, values and queries, copied into the paged one.
          const AttnConfig& a = c.kc.attn;
          const Layout lc = Layout::make(a.b, c.kc.seqlen_cache, a.h_k, d, a.padded_strides);
          const int max_blocks = (c.kc.seqlen_cache + page - 1) / page;
          // make_kvcache_problem's pool: b * max_blocks pages plus 2 spare ones.
          const Layout lp = Layout::make(a.b * max_blocks + 2, page, a.h_k, d, a.padded_strides);
          for (int i = 0; i < a.b; ++i)
            for (int tk = 0; tk < c.kc.cache_seqlens[i]; ++tk)
              for (int hh = 0; hh < a.h_k; ++hh)
                for (int x = 0; x < d; ++x) {
                  const int64_t src = i * lc.batch_stride + tk * lc.row_stride +
                                      hh * lc.head_stride + x;
                  const int64_t dst =
                      int64_t(paged.block_table[i * max_blocks + tk / page]) * lp.batch_stride +
                      (tk % page) * lp.row_stride + hh * lp.head_stride + x;
                  paged.k_cache.set(dst, contiguous.k_cache.get(src));
                  paged.v_cache.set(dst, contiguous.v_cache.get(src));
                }
          paged.q = contiguous.q;
          paged.bind();
          const GpuResult rc = run_gpu(contiguous), rp = run_gpu(paged);
          ASSERT_TRUE(rc.status.ok()) << rc.status.to_string();
          ASSERT_TRUE(rp.status.ok()) << rp.status.to_string();
          if (splits == 1) {
            expect_same_bits(rc.out, rp.out, "paged and contiguous caches");
          } else {
            const std::string cfg = describe(cp);
            check_attention("contiguous cache, heuristic splits", cfg, contiguous, rc.out);
            check_attention("paged cache, heuristic splits", cfg, paged, rp.out);
          }
        }
      }
    }
  }
}

TEST_F(KVCacheGpu, PagedAnyPageSize) {
  for (DType t : compiled_dtypes()) {
    for (int d : {128, 64}) {
      if (!hdim_compiled(d)) continue;
      for (int page : {1, 16, 64, 256, 512, 3}) {
        Case c = make_case(t, 3, 1, 8, 2, d, 1300, 1);
        c.kc.page_size = page;
        c.kc.attn.num_splits = 0;
        check_case("paged decode", c);
        Case p = make_case(t, 2, 6, 4, 4, d, 1100, 6);
        p.kc.page_size = page;
        p.kc.attn.causal = true;
        p.kc.rotary_dim = d / 2;
        p.kc.rotary_interleaved = page % 2 == 0;
        check_case("paged append+rotary+causal", p);
        if (page == 16 || page == 1) {
          Case w = make_case(t, 2, 16, 6, 1, d, 900, 16);
          w.kc.page_size = page;
          w.kc.attn.window_left = 100;
          w.kc.attn.softcap = 3.f;
          w.kc.attn.alibi = true;
          w.kc.attn.padded_strides = true;
          check_case("paged window+softcap+alibi+padded", w);
        }
      }
    }
  }
}

TEST_F(KVCacheGpu, SplitKV) {
  for (DType t : compiled_dtypes()) {
    const int d = hdim_compiled(128) ? 128 : 64;
    if (!hdim_compiled(d)) continue;
    // 8 and 9: the combine kernel loads the partials of up to 8 splits at once.
    for (int splits : {1, 2, 3, 7, 8, 9, 64, 128, 0}) {
      Case c = make_case(t, 2, 1, 8, 2, d, 8300, 1);
      c.kc.cache_seqlens = {8299, 4000};
      c.kc.attn.num_splits = splits;
      check_case("split decode", c);
      Case p = make_case(t, 2, 5, 4, 1, d, 8500, 3);
      p.kc.cache_seqlens = {8400, 97};
      p.kc.page_size = 16;
      p.kc.attn.causal = true;
      p.kc.rotary_dim = d;
      p.kc.attn.num_splits = splits;
      check_case("split paged+causal+rotary", p);
      if (splits == 7 || splits == 8 || splits == 128) {
        Case l = make_case(t, 3, 2, 4, 2, d, 8200, 2);
        l.kc.leftpad = true;
        l.kc.batch_idx = true;
        l.kc.b_cache = 4;
        l.kc.attn.window_left = 3000;
        l.kc.attn.num_splits = splits;
        check_case("split leftpad+batch_idx+window", l);
      }
    }
  }
}

// Where two CTAs of the split-capable tile do not fit in an SM's shared memory (an A100: 164 KB),
// d = 256 runs the compact 64 x 32 tile (tile_size_fwd_split_compact_sm80), and without clusters
// merges its splits through the combine kernel. Emulated here by overriding the shared memory the
// dispatch sees (the split count then also follows the compact tile's grid).
TEST_F(KVCacheGpu, CompactSplitTileWhereSharedMemoryIsSmaller) {
  const ScopedSmemPerSm a100(164 * 1024);
  const int d = 256;
  if (!hdim_compiled(d)) GTEST_SKIP() << "head dim 256 not compiled";
  for (DType t : compiled_dtypes()) {
    for (int splits : {1, 3, 0}) {
      Case c = make_case(t, 2, 1, 8, 2, d, 3000, 1);
      c.kc.cache_seqlens = {2999, 700};
      c.kc.attn.num_splits = splits;
      check_case("compact split decode", c);
      Case p = make_case(t, 2, 5, 4, 1, d, 2100, 3);
      p.kc.cache_seqlens = {2050, 97};
      p.kc.page_size = splits == 3 ? 16 : 64;
      p.kc.attn.causal = true;
      p.kc.rotary_dim = d / 2;
      p.kc.attn.num_splits = splits;
      check_case("compact split paged+causal+rotary", p);
    }
    Case w = make_case(t, 2, 16, 6, 1, d, 900, 16);
    w.kc.page_size = 16;
    w.kc.attn.window_left = 100;
    w.kc.attn.softcap = 3.f;
    w.kc.attn.alibi = true;
    check_case("compact paged window+softcap+alibi", w);
    Case l = make_case(t, 3, 2, 4, 2, d, 1200, 2);
    l.kc.leftpad = true;
    l.kc.batch_idx = true;
    l.kc.b_cache = 4;
    l.kc.attn.alibi = true;
    l.kc.attn.num_splits = 4;
    check_case("compact split leftpad+batch_idx+alibi", l);
  }
}

TEST_F(KVCacheGpu, EmptySequencesAndNullLse) {
  for (DType t : compiled_dtypes()) {
    const int d = hdim_compiled(64) ? 64 : 128;
    if (!hdim_compiled(d)) continue;
    // Sequence 0 has no keys at all, sequence 2 only padding: o = 0, LSE = +inf.
    Case e = make_case(t, 3, 2, 4, 2, d, 64, 0);
    e.kc.cache_seqlens = {0, 40, 17};
    check_case("empty sequence", e);
    {
      const uint64_t seed = fresh_seed();
      KVCacheProblem pr = make_problem(e, seed);
      pr.cache_leftpad = {0, 3, 17};
      rebind(pr, pr.params);
      const GpuResult g = run_gpu(pr);
      ASSERT_TRUE(g.status.ok()) << g.status.to_string();
      check_written(pr, g.out);
      check_attention("leftpad = cache_seqlens", describe(e), pr, g.out);
    }
    {
      Case c = make_case(t, 2, 3, 4, 2, d, 100, 2);
      KVCacheProblem pr = make_problem(c, fresh_seed());
      const GpuResult g = run_gpu_with(pr, [](KVCacheParams p) {
        p.softmax_lse_ptr = nullptr;
        return mha_fwd_kvcache(p);
      });
      ASSERT_TRUE(g.status.ok()) << g.status.to_string();
      for (float x : gather_o(g.out)) ASSERT_TRUE(std::isfinite(x));
      for (float x : g.out.lse)
        ASSERT_TRUE(std::isnan(x)) << "LSE written although the pointer was null";
    }
  }
}

// Attention sinks on the KV-cache path: the sink joins each row once, whichever way the splits
// merge (one split, the cluster merge of a contiguous cache on sm_90, the combine kernel of a
// paged one or of more than 8 splits); a sequence with no key gets o = 0 and LSE = the sink; GQA
// decode runs unpacked (the sinks are per query head).
TEST_F(KVCacheGpu, Sinks) {
  for (DType t : compiled_dtypes()) {
    const int d = hdim_compiled(128) ? 128 : 64;
    if (!hdim_compiled(d)) continue;
    for (int splits : {1, 3, 9, 0}) {
      Case c = make_case(t, 2, 1, 8, 2, d, 4200, 1);
      c.kc.cache_seqlens = {4199, 900};
      c.kc.attn.sinks = true;
      c.kc.attn.num_splits = splits;
      check_case("sinks decode gqa", c);
      Case p = make_case(t, 2, 5, 4, 1, d, 4300, 3);
      p.kc.cache_seqlens = {4200, 97};
      p.kc.page_size = 16;
      p.kc.attn.causal = true;
      p.kc.rotary_dim = d;
      p.kc.attn.sinks = true;
      p.kc.attn.num_splits = splits;
      check_case("sinks split paged+causal+rotary", p);
    }
    Case l = make_case(t, 3, 2, 4, 2, d, 1200, 2);
    l.kc.leftpad = true;
    l.kc.batch_idx = true;
    l.kc.b_cache = 4;
    l.kc.attn.alibi = true;
    l.kc.attn.softcap = 3.f;
    l.kc.attn.window_left = 300;
    l.kc.attn.sinks = true;
    l.kc.attn.num_splits = 4;
    check_case("sinks split leftpad+batch_idx+alibi+softcap+window", l);
    // Sequence 0 sees no key: o = 0, LSE = its head's sink, with and without splits.
    for (int splits : {1, 3}) {
      Case e = make_case(t, 3, 2, 4, 2, d, 640, 0);
      e.kc.cache_seqlens = {0, 600, 17};
      e.kc.attn.sinks = true;
      e.kc.attn.num_splits = splits;
      check_case("sinks empty sequence", e);
    }
  }
}

// Index values in device memory (docs/kvcache.md). By default the call checks them on the device
// and waits for the verdict: a bad value fails the call with InvalidArgument naming the argument
// (host validation's message) and nothing is touched. Where it cannot wait (CUDA graph capture,
// or FLASHATTN_CHECK_DEVICE_INDICES=0) a sequence with a bad value is skipped (no key read, no
// write outside the cache: o = 0, LSE = +inf) and every other sequence is computed exactly as
// without it.

// Runs the call while a fresh stream is captured into a CUDA graph, then replays the graph once.
GpuResult run_gpu_captured(const KVCacheProblem& pr) {
  struct Graph {
    cudaStream_t stream = nullptr;
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    ~Graph() {
      if (exec != nullptr) cudaGraphExecDestroy(exec);
      if (graph != nullptr) cudaGraphDestroy(graph);
      if (stream != nullptr) cudaStreamDestroy(stream);
    }
  };
  return run_gpu_with(pr, [](KVCacheParams p) {
    Graph g;
    cuda_or_throw(cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    p.stream = g.stream;
    cuda_or_throw(cudaStreamBeginCapture(g.stream, cudaStreamCaptureModeThreadLocal),
                  "cudaStreamBeginCapture");
    const Status s = mha_fwd_kvcache(p);
    cuda_or_throw(cudaStreamEndCapture(g.stream, &g.graph), "cudaStreamEndCapture");
    if (!s.ok()) return s;
    cuda_or_throw(cudaGraphInstantiate(&g.exec, g.graph, 0), "cudaGraphInstantiate");
    cuda_or_throw(cudaGraphLaunch(g.exec, g.stream), "cudaGraphLaunch");
    cuda_or_throw(cudaStreamSynchronize(g.stream), "cudaStreamSynchronize (graph replay)");
    return s;
  });
}

// Sequence 1 of `got` was skipped (o = 0, LSE = +inf); every other sequence equals `ref`.
void expect_sequence_1_skipped(const Case& c, const KVCacheProblem& got, const KVCacheProblem& ref,
                               const char* how) {
  SCOPED_TRACE(how);
  const AttnConfig& a = c.kc.attn;
  const int64_t per_seq = int64_t(a.seqlen_q) * a.h * a.d;
  const std::vector<float> o = gather_o(got), o_ref = gather_o(ref);
  for (int bb = 0; bb < a.b; ++bb) {
    for (int64_t x = bb * per_seq; x < (bb + 1) * per_seq; ++x) {
      if (bb == 1) {
        ASSERT_EQ(o[x], 0.f) << "skipped sequence's output";
      } else {
        ASSERT_EQ(o[x], o_ref[x]) << "a valid sequence changed (b=" << bb << ")";
      }
    }
    for (int hh = 0; hh < a.h; ++hh)
      for (int i = 0; i < a.seqlen_q; ++i) {
        const int64_t li = (int64_t(bb) * a.h + hh) * a.seqlen_q + i;
        if (bb == 1) {
          ASSERT_EQ(got.lse[li], std::numeric_limits<float>::infinity());
        } else {
          ASSERT_EQ(got.lse[li], ref.lse[li]);
        }
      }
  }
}

TEST_F(KVCacheGpu, DeviceIndexValuesOutOfRange) {
  const DType t = compiled_dtypes().empty() ? DType::kBFloat16 : compiled_dtypes().front();
  const int d = hdim_compiled(64) ? 64 : 128;
  if (!hdim_compiled(d) || compiled_dtypes().empty()) GTEST_SKIP() << "no kernel compiled";
  struct Bad {
    const char* what;    // what the error message must contain (the argument named first)
    Case c;
    std::vector<int>* (*array)(KVCacheProblem&);
    int index;
    int value;
  };
  Case contiguous = make_case(t, 3, 2, 4, 2, d, 120, 2);
  contiguous.kc.b_cache = 4;
  contiguous.kc.batch_idx = true;
  contiguous.kc.leftpad = true;
  contiguous.kc.rotary_dim = d;
  // Capacity 8 pages x 16 = 128 keys per sequence.
  Case paged = make_case(t, 3, 1, 4, 2, d, 120, 1);
  paged.kc.page_size = 16;
  paged.kc.cache_seqlens = {50, 100, 70};
  // Per-sequence lengths are the only device values here (nothing appended or rotated): the
  // forward reads them itself, without the prepare kernel. s_q = 1 with h > h_k also takes the
  // GQA decode packing, s_q = 3 does not.
  Case lengths_only = make_case(t, 3, 1, 4, 2, d, 120, 0);
  lengths_only.kc.cache_seqlens = {50, 100, 70};
  Case lengths_only_rows = lengths_only;
  lengths_only_rows.kc.attn.seqlen_q = 3;
  // Paged decode with nothing appended: the paged forward checks the block table itself.
  Case paged_lengths_only = lengths_only;
  paged_lengths_only.kc.page_size = 16;
  auto seqlens = [](KVCacheProblem& p) { return &p.cache_seqlens; };
  auto table = [](KVCacheProblem& p) { return &p.block_table; };
  const std::vector<Bad> cases = {
      {"cache_seqlens[1]: 121 + seqlen_knew 0 exceeds", lengths_only, seqlens, 1, 121},
      {"cache_seqlens[1]: -1 is negative", lengths_only, seqlens, 1, -1},
      {"cache_seqlens[1]", lengths_only_rows, seqlens, 1, 1 << 30},
      {"cache_seqlens[1]", contiguous, seqlens, 1, 119},
      {"cache_seqlens[1]", contiguous, seqlens, 1, -4},
      {"cache_batch_idx[1]: 4 is out of range", contiguous,
       [](KVCacheProblem& p) { return &p.cache_batch_idx; }, 1, 4},
      {"cache_leftpad[1]: 1000", contiguous, [](KVCacheProblem& p) { return &p.cache_leftpad; }, 1,
       1000},
      {"block_table[1][6]: 1048576 is out of range", paged, table, -1, 1 << 20},
      {"block_table[1][6]: 1048576 is out of range", paged_lengths_only, table, -1, 1 << 20},
      {"block_table[1][6]: -7", paged_lengths_only, table, -1, -7},
      // Lengths beyond the block table (flash_attn's issue 2709): the cache itself, or the
      // appended key of a full cache.
      {"block_table: sequence 1 needs cache_seqlens[1] + seqlen_knew = 1048576 + 0",
       paged_lengths_only, seqlens, 1, 1 << 20},
      {"block_table: sequence 1 needs cache_seqlens[1] + seqlen_knew = 128 + 1 = 129 keys, more "
       "than the paged capacity of 128",
       paged, seqlens, 1, 128},
  };
  for (const Bad& bad : cases) {
    SCOPED_TRACE(std::string(bad.what) + " " + describe(bad.c));
    const KVCacheProblem good = make_problem(bad.c, fresh_seed());
    KVCacheProblem broken = good;
    std::vector<int>& arr = *bad.array(broken);
    // The block table: the last page sequence 1 uses (its 100 keys fill columns 0..6).
    const int index = bad.index >= 0 ? bad.index
                                     : int(good.params.block_table_batch_stride) + 100 / 16;
    arr[index] = bad.value;
    rebind(broken, good.params);

    // Default: the device-side verdict is read back and the call fails, touching nothing.
    const GpuResult ref_run = run_gpu(good);
    ASSERT_TRUE(ref_run.status.ok()) << ref_run.status.to_string();
    const GpuResult checked = run_gpu(broken);
    EXPECT_EQ(checked.status.code(), StatusCode::kInvalidArgument) << checked.status.to_string();
    EXPECT_NE(checked.status.message().find(bad.what), std::string::npos)
        << checked.status.to_string();
    for (float x : gather_o(checked.out)) ASSERT_TRUE(std::isnan(x)) << "output touched";
    for (float x : checked.out.lse) ASSERT_TRUE(std::isnan(x)) << "LSE touched";
    EXPECT_EQ(0, std::memcmp(checked.out.k_cache.data(), broken.k_cache.data(),
                             broken.k_cache.bytes.size()))
        << "cache touched";
    EXPECT_EQ(0, std::memcmp(checked.out.v_cache.data(), broken.v_cache.data(),
                             broken.v_cache.bytes.size()))
        << "cache touched";

    // The same values in host memory fail on the CPU backend with the same message.
    KVCacheProblem host = broken;
    rebind(host, good.params);
    const Status cpu = mha_fwd_kvcache(host.params);
    EXPECT_EQ(cpu.message(), checked.status.message()) << "CPU and GPU name different errors";

    // Opted out of the wait: the bad sequence is skipped on the device.
    ASSERT_EQ(0, setenv(cuda::kCheckIndicesEnv, "0", 1));
    const GpuResult skipped = run_gpu(broken);
    const GpuResult unchecked_good = run_gpu(good);
    unsetenv(cuda::kCheckIndicesEnv);
    ASSERT_TRUE(skipped.status.ok())
        << "unchecked mode must not fail: " << skipped.status.to_string();
    expect_sequence_1_skipped(bad.c, skipped.out, ref_run.out, "FLASHATTN_CHECK_DEVICE_INDICES=0");
    ASSERT_TRUE(unchecked_good.status.ok()) << unchecked_good.status.to_string();
    EXPECT_EQ(0, std::memcmp(unchecked_good.out.o.data(), ref_run.out.o.data(),
                             ref_run.out.o.bytes.size()))
        << "the unchecked mode changed a valid call's result";

    // Under CUDA graph capture the host cannot wait: the replay skips the bad sequence.
    const GpuResult captured = run_gpu_captured(broken);
    ASSERT_TRUE(captured.status.ok()) << "a captured call must not fail on device values: "
                                      << captured.status.to_string();
    expect_sequence_1_skipped(bad.c, captured.out, ref_run.out, "CUDA graph capture");
    const GpuResult captured_good = run_gpu_captured(good);
    ASSERT_TRUE(captured_good.status.ok()) << captured_good.status.to_string();
    EXPECT_EQ(0, std::memcmp(captured_good.out.o.data(), ref_run.out.o.data(),
                             ref_run.out.o.bytes.size()))
        << "a captured and replayed call differs from the direct one";
  }
}

// ------------------------------------------------------------------------ large caches --

// A long cache against the GPU fp32 reference: the post-append problem (cache copied back,
// q rotated and rounded) run through cuda::ref::mha_fwd in fp32 with seqused_k; the 2x rule on
// every row (decode shapes have few rows) with the low-precision attention on the host.
void check_long(const char* group, const Case& c) {
  const uint64_t seed = fresh_seed();
  const std::string cfg = describe(c);
  SCOPED_TRACE(cfg + " seed=" + std::to_string(seed));
  const KVCacheProblem pr = make_problem(c, seed);
  const GpuResult g = run_gpu(pr);
  ASSERT_TRUE(g.status.ok()) << g.status.to_string();
  check_written(pr, g.out);

  const KVCacheProblem post = post_append(pr, g.out);
  KVCacheProblem post32 = as_fp32(post);
  DeviceKVCacheProblem dev(post32);
  const KVCacheParams& kp = dev.params;
  FwdParams f = kp;  // dense forward over the cache with per-sequence lengths
  const DeviceBuffer seqused = DeviceBuffer::from(post.cache_seqlens);
  f.seqused_k = seqused.as<int>();
  const Status rs = cuda::ref::mha_fwd(detail::resolve(f));
  ASSERT_TRUE(rs.ok()) << "GPU reference: " << rs.to_string();
  dev.copy_back(post32);
  const Errors e = measure(post, c.kc.attn.dtype, gather_o(g.out), g.out.lse, gather_o(post32),
                           post32.lse, post32.q, post32.k_cache, post32.v_cache);
  check_bounds(group, cfg, c.kc.attn.dtype, e);
}

TEST_F(KVCacheGpu, LongCacheAgainstGpuReference) {
  const std::vector<DType> dts = compiled_dtypes();
  if (dts.empty() || !hdim_compiled(128)) GTEST_SKIP() << "needs the d = 128 kernels";
  const DType t = dts.front();
  Case decode = make_case(t, 2, 1, 8, 2, 128, 131072, 1);
  decode.kc.cache_seqlens = {131071, 70001};
  decode.kc.rotary_dim = 64;
  decode.kc.rotary_interleaved = false;
  decode.kc.attn.num_splits = 0;
  check_long("128k decode, gqa, rotary", decode);
  Case paged = make_case(t, 1, 4, 8, 1, 128, 65536 + 512, 4);
  paged.kc.cache_seqlens = {65536 + 300};
  paged.kc.page_size = 256;
  paged.kc.attn.causal = true;
  paged.kc.attn.num_splits = 0;
  check_long("64k paged prefill chunk, mqa, causal", paged);
}

}  // namespace
}  // namespace flashattn::testing
