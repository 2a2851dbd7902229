#include "testing/problem.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>

#include "common/numeric.h"

namespace flashattn::testing {

namespace {
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

template <typename F>
void for_each_logical(const Layout& l, int batch, int rows, int heads, int d, F f) {
  for (int bb = 0; bb < batch; ++bb)
    for (int r = 0; r < rows; ++r)
      for (int hh = 0; hh < heads; ++hh)
        for (int x = 0; x < d; ++x)
          f(bb * l.batch_stride + r * l.row_stride + hh * l.head_stride + x);
}

// A buffer with NaN everywhere except the logical elements, which get uniform [-1, 1]: padding
// that a kernel must never read is poisoned.
Buffer random_tensor(DType t, const Layout& l, int batch, int rows, int heads, int d,
                     std::mt19937_64& rng) {
  Buffer buf = Buffer::make(t, l.numel);
  buf.fill_nan();
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for_each_logical(l, batch, rows, heads, d, [&](int64_t i) { buf.set(i, u(rng)); });
  return buf;
}

Buffer nan_tensor(DType t, int64_t n) {
  Buffer buf = Buffer::make(t, n);
  buf.fill_nan();
  return buf;
}

std::vector<int> cumsum(const std::vector<int>& v) {
  std::vector<int> c(v.size() + 1, 0);
  for (size_t i = 0; i < v.size(); ++i) c[i + 1] = c[i] + v[i];
  return c;
}

void fill_alibi(std::vector<float>& alibi, const AttnConfig& c, std::mt19937_64& rng) {
  if (!c.alibi) return;
  std::uniform_real_distribution<float> u(0.05f, 1.0f);
  alibi.resize(static_cast<size_t>((c.alibi_per_batch ? c.b : 1) * c.h));
  for (auto& s : alibi) s = u(rng);
}

void fill_sinks(std::vector<float>& sinks, const AttnConfig& c, std::mt19937_64& rng) {
  if (!c.sinks) return;
  std::uniform_real_distribution<float> u(-2.f, 4.f);
  sinks.resize(size_t(c.h));
  for (auto& s : sinks) s = u(rng);
}

void set_score_fields(FwdParams& p, const AttnConfig& c, const std::vector<float>& alibi,
                      const std::vector<float>& sinks) {
  p.dtype = c.dtype;
  p.dv = c.dv;
  p.sinks = c.sinks ? sinks.data() : nullptr;
  p.softmax_scale = c.softmax_scale;
  p.softcap = c.softcap;
  p.is_causal = c.causal;
  p.window_size_left = c.window_left;
  p.window_size_right = c.window_right;
  p.alibi_slopes = c.alibi ? alibi.data() : nullptr;
  p.alibi_slopes_batch_stride = c.alibi_per_batch ? c.h : 0;
  p.p_dropout = c.p_dropout;
  p.philox_seed = c.philox_seed;
  p.philox_offset = c.philox_offset;
  p.num_splits = c.num_splits;
}
}  // namespace

// ----------------------------------------------------------------------------------- Buffer --

Buffer Buffer::make(DType t, int64_t n) {
  Buffer b;
  b.dtype = t;
  b.numel = n;
  b.bytes.assign(static_cast<size_t>(n * dtype_size(t)), 0);
  return b;
}
float Buffer::get(int64_t i) const { return load_as_float(data(), dtype, i); }
void Buffer::set(int64_t i, float v) { store_from_float(data(), dtype, i, v); }
void Buffer::fill_uniform(std::mt19937_64& rng, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  for (int64_t i = 0; i < numel; ++i) set(i, u(rng));
}
void Buffer::fill_normal(std::mt19937_64& rng, float stddev) {
  std::normal_distribution<float> n(0.f, stddev);
  for (int64_t i = 0; i < numel; ++i) set(i, n(rng));
}
void Buffer::fill_nan() {
  for (int64_t i = 0; i < numel; ++i) set(i, kNaN);
}
Buffer Buffer::converted(DType t) const {
  Buffer b = make(t, numel);
  for (int64_t i = 0; i < numel; ++i) b.set(i, get(i));
  return b;
}

// ------------------------------------------------------------------------------ AttnConfig --

std::string AttnConfig::str() const {
  std::ostringstream s;
  s << dtype_name(dtype) << " b=" << b << " sq=" << seqlen_q << " sk=" << seqlen_k << " h=" << h
    << " hk=" << h_k << " d=" << d;
  if (dv > 0) s << " dv=" << dv;
  if (causal) s << " causal";
  if (window_left >= 0 || window_right >= 0) s << " win=(" << window_left << "," << window_right << ")";
  if (softcap > 0) s << " softcap=" << softcap;
  if (alibi) s << (alibi_per_batch ? " alibi[b,h]" : " alibi[h]");
  if (sinks) s << " sinks";
  if (p_dropout > 0) s << " dropout=" << p_dropout;
  if (varlen()) {
    s << " varlen q=(";
    for (int x : seqlens_q) s << x << ",";
    s << ") k=(";
    for (int x : seqlens_k) s << x << ",";
    s << ")";
  }
  if (padded_strides) s << " padded";
  if (num_splits != 1) s << " splits=" << num_splits;
  return s.str();
}

Layout Layout::make(int batch, int rows, int heads, int d, bool padded) {
  Layout l;
  l.head_stride = d + (padded ? 8 : 0);
  l.row_stride = heads * l.head_stride + (padded ? 16 : 0);
  l.batch_stride = rows * l.row_stride + (padded ? 32 : 0);
  l.numel = static_cast<int64_t>(batch) * l.batch_stride;
  return l;
}

// ------------------------------------------------------------------------------ FwdProblem --

int FwdProblem::rows_q() const {
  return cfg.varlen() ? cu_q.back() : cfg.b * cfg.seqlen_q;
}

void FwdProblem::bind() {
  params.q_ptr = q.data();
  params.k_ptr = k.data();
  params.v_ptr = v.data();
  params.o_ptr = o.data();
  params.softmax_lse_ptr = lse.data();
  params.p_ptr = cfg.return_probs ? p.data() : nullptr;
  params.alibi_slopes = cfg.alibi ? alibi.data() : nullptr;
  params.sinks = cfg.sinks ? sinks.data() : nullptr;
  params.cu_seqlens_q = cfg.varlen() ? cu_q.data() : nullptr;
  params.cu_seqlens_k = cfg.varlen() ? cu_k.data() : nullptr;
  params.seqused_k = seqused_k.empty() ? nullptr : seqused_k.data();
  params.block_table = block_table.empty() ? nullptr : block_table.data();
}

FwdProblem make_fwd_problem(const AttnConfig& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  FwdProblem pr;
  pr.cfg = c;
  FwdParams& p = pr.params;
  const bool varlen = c.varlen();
  int batch = c.b, rows_q = c.seqlen_q, rows_k = c.seqlen_k;
  if (varlen) {
    pr.cu_q = cumsum(c.seqlens_q);
    pr.cu_k = cumsum(c.seqlens_k);
    pr.seqused_k = c.seqused_k;
    batch = 1;
    rows_q = pr.cu_q.back();
    rows_k = pr.cu_k.back();
    p.seqlen_q = *std::max_element(c.seqlens_q.begin(), c.seqlens_q.end());
    p.seqlen_k = *std::max_element(c.seqlens_k.begin(), c.seqlens_k.end());
    p.total_q = rows_q;
    p.total_k = rows_k;
  } else {
    p.seqlen_q = c.seqlen_q;
    p.seqlen_k = c.seqlen_k;
  }
  p.b = c.b;
  p.h = c.h;
  p.h_k = c.h_k;
  p.d = c.d;
  const int dv = c.v_dim();
  const Layout lq = Layout::make(batch, rows_q, c.h, c.d, c.padded_strides);
  const Layout lk = Layout::make(batch, rows_k, c.h_k, c.d, c.padded_strides);
  const Layout lo = Layout::make(batch, rows_q, c.h, dv, c.padded_strides);
  const Layout lv = Layout::make(batch, rows_k, c.h_k, dv, c.padded_strides);
  pr.q = random_tensor(c.dtype, lq, batch, rows_q, c.h, c.d, rng);
  pr.k = random_tensor(c.dtype, lk, batch, rows_k, c.h_k, c.d, rng);
  pr.v = random_tensor(c.dtype, lv, batch, rows_k, c.h_k, dv, rng);
  pr.o = nan_tensor(c.dtype, lo.numel);
  pr.lse.assign(static_cast<size_t>(c.h) * (varlen ? rows_q : c.b * c.seqlen_q), kNaN);
  if (c.return_probs)
    pr.p = nan_tensor(c.dtype, int64_t(c.b) * c.h * c.seqlen_q * c.seqlen_k);
  fill_alibi(pr.alibi, c, rng);
  fill_sinks(pr.sinks, c, rng);

  p.q_batch_stride = lq.batch_stride;
  p.q_row_stride = lq.row_stride;
  p.q_head_stride = lq.head_stride;
  p.o_batch_stride = lo.batch_stride;
  p.o_row_stride = lo.row_stride;
  p.o_head_stride = lo.head_stride;
  p.k_batch_stride = lk.batch_stride;
  p.k_row_stride = lk.row_stride;
  p.k_head_stride = lk.head_stride;
  p.v_batch_stride = lv.batch_stride;
  p.v_row_stride = lv.row_stride;
  p.v_head_stride = lv.head_stride;
  set_score_fields(p, c, pr.alibi, pr.sinks);
  pr.bind();
  return pr;
}

FwdProblem to_paged(const FwdProblem& src, int page_size, uint64_t seed) {
  std::mt19937_64 rng(seed);
  FwdProblem pr = src;
  const AttnConfig& c = src.cfg;
  const FwdParams& sp = src.params;
  int max_len = 0;
  for (int bb = 0; bb < c.b; ++bb)
    max_len = std::max(max_len, c.varlen() ? c.seqlens_k[bb] : c.seqlen_k);
  const int max_blocks = std::max(1, (max_len + page_size - 1) / page_size);
  const int num_blocks = c.b * max_blocks + 3;  // spare pages stay NaN
  std::vector<int> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  pr.block_table.assign(static_cast<size_t>(c.b) * max_blocks, 0);
  for (int i = 0; i < c.b * max_blocks; ++i) pr.block_table[i] = perm[i];

  const int dv = c.v_dim();
  const Layout lp = Layout::make(num_blocks, page_size, c.h_k, c.d, c.padded_strides);
  const Layout lpv = Layout::make(num_blocks, page_size, c.h_k, dv, c.padded_strides);
  pr.k = nan_tensor(c.dtype, lp.numel);
  pr.v = nan_tensor(c.dtype, lpv.numel);
  for (int bb = 0; bb < c.b; ++bb) {
    const int len = c.varlen() ? c.seqlens_k[bb] : c.seqlen_k;
    const int64_t row0 = c.varlen() ? src.cu_k[bb] : 0;
    const int64_t kbase = c.varlen() ? 0 : int64_t(bb) * sp.k_batch_stride;
    const int64_t vbase = c.varlen() ? 0 : int64_t(bb) * sp.v_batch_stride;
    for (int t = 0; t < len; ++t) {
      const int page = pr.block_table[bb * max_blocks + t / page_size];
      for (int hh = 0; hh < c.h_k; ++hh) {
        for (int x = 0; x < c.d; ++x)
          pr.k.set(page * lp.batch_stride + (t % page_size) * lp.row_stride + hh * lp.head_stride + x,
                   src.k.get(kbase + (row0 + t) * sp.k_row_stride + hh * sp.k_head_stride + x));
        for (int x = 0; x < dv; ++x)
          pr.v.set(page * lpv.batch_stride + (t % page_size) * lpv.row_stride +
                       hh * lpv.head_stride + x,
                   src.v.get(vbase + (row0 + t) * sp.v_row_stride + hh * sp.v_head_stride + x));
      }
    }
  }
  FwdParams& p = pr.params;
  p.k_batch_stride = lp.batch_stride;
  p.k_row_stride = lp.row_stride;
  p.k_head_stride = lp.head_stride;
  p.v_batch_stride = lpv.batch_stride;
  p.v_row_stride = lpv.row_stride;
  p.v_head_stride = lpv.head_stride;
  p.block_table_batch_stride = max_blocks;
  p.max_blocks_per_seq = max_blocks;
  p.page_block_size = page_size;
  p.num_blocks = num_blocks;
  p.total_k = 0;
  if (!c.varlen()) p.seqlen_k = c.seqlen_k;
  pr.bind();
  return pr;
}

std::vector<float> gather(const Buffer& buf, const Layout& l, int batch, int rows, int heads,
                          int d, bool varlen, int total_rows) {
  if (varlen) {
    batch = 1;
    rows = total_rows;
  }
  std::vector<float> out;
  out.reserve(static_cast<size_t>(batch) * rows * heads * d);
  for_each_logical(l, batch, rows, heads, d, [&](int64_t i) { out.push_back(buf.get(i)); });
  return out;
}

std::vector<float> gather_o(const FwdProblem& pr) {
  Layout l;
  l.batch_stride = pr.params.o_batch_stride;
  l.row_stride = pr.params.o_row_stride;
  l.head_stride = pr.params.o_head_stride;
  return gather(pr.o, l, pr.cfg.b, pr.cfg.seqlen_q, pr.cfg.h, pr.cfg.v_dim(), pr.cfg.varlen(),
                pr.rows_q());
}

// ------------------------------------------------------------------------------ BwdProblem --

void BwdProblem::bind() {
  fwd.bind();
  static_cast<FwdParams&>(params) = fwd.params;
  params.do_ptr = dout.data();
  params.dq_ptr = dq.data();
  params.dk_ptr = dk.data();
  params.dv_ptr = dv.data();
  params.dsinks = fwd.cfg.sinks ? dsinks.data() : nullptr;
}

BwdProblem make_bwd_problem(const AttnConfig& c, uint64_t seed) {
  BwdProblem bp;
  bp.fwd = make_fwd_problem(c, seed);
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  const FwdParams& f = bp.fwd.params;
  bp.dout = bp.fwd.o;  // same layout as o; logical elements random, padding NaN
  bp.dout.fill_nan();
  {
    Layout l{f.o_batch_stride, f.o_row_stride, f.o_head_stride, bp.dout.numel};
    const bool vl = c.varlen();
    for_each_logical(l, vl ? 1 : c.b, vl ? bp.fwd.rows_q() : c.seqlen_q, c.h, c.v_dim(),
                     [&](int64_t i) {
                       std::uniform_real_distribution<float> u(-1.f, 1.f);
                       bp.dout.set(i, u(rng));
                     });
  }
  bp.dq = nan_tensor(c.dtype, bp.fwd.q.numel);
  bp.dk = nan_tensor(c.dtype, bp.fwd.k.numel);
  bp.dv = nan_tensor(c.dtype, bp.fwd.v.numel);
  if (c.sinks) bp.dsinks.assign(size_t(c.h), kNaN);
  bp.params.dq_batch_stride = f.q_batch_stride;
  bp.params.dq_row_stride = f.q_row_stride;
  bp.params.dq_head_stride = f.q_head_stride;
  bp.params.dk_batch_stride = f.k_batch_stride;
  bp.params.dk_row_stride = f.k_row_stride;
  bp.params.dk_head_stride = f.k_head_stride;
  bp.params.dv_batch_stride = f.v_batch_stride;
  bp.params.dv_row_stride = f.v_row_stride;
  bp.params.dv_head_stride = f.v_head_stride;
  bp.params.do_batch_stride = f.o_batch_stride;
  bp.params.do_row_stride = f.o_row_stride;
  bp.params.do_head_stride = f.o_head_stride;
  bp.bind();
  return bp;
}

// -------------------------------------------------------------------------- KVCacheProblem --

void KVCacheProblem::bind() {
  const bool has_new = cfg.seqlen_new > 0;
  params.q_ptr = q.data();
  params.k_ptr = k_cache.data();
  params.v_ptr = v_cache.data();
  params.o_ptr = o.data();
  params.softmax_lse_ptr = lse.data();
  params.alibi_slopes = cfg.attn.alibi ? alibi.data() : nullptr;
  params.sinks = cfg.attn.sinks ? sinks.data() : nullptr;
  params.cache_seqlens = cache_seqlens.data();
  params.cache_batch_idx = cache_batch_idx.empty() ? nullptr : cache_batch_idx.data();
  params.cache_leftpad = cache_leftpad.empty() ? nullptr : cache_leftpad.data();
  params.block_table = block_table.empty() ? nullptr : block_table.data();
  params.knew_ptr = has_new ? knew.data() : nullptr;
  params.vnew_ptr = has_new ? vnew.data() : nullptr;
  params.rotary_cos = cfg.rotary_dim > 0 ? rotary_cos.data() : nullptr;
  params.rotary_sin = cfg.rotary_dim > 0 ? rotary_sin.data() : nullptr;
}

KVCacheProblem make_kvcache_problem(const KVCacheConfig& kc, uint64_t seed) {
  std::mt19937_64 rng(seed);
  KVCacheProblem pr;
  pr.cfg = kc;
  const AttnConfig& c = kc.attn;
  KVCacheParams& p = pr.params;
  const int b = c.b, cap = kc.seqlen_cache, nnew = kc.seqlen_new;
  const int b_cache = kc.page_size > 0 ? b : (kc.b_cache > 0 ? kc.b_cache : b);

  pr.cache_seqlens = kc.cache_seqlens;
  if (pr.cache_seqlens.empty()) {
    std::uniform_int_distribution<int> u(0, std::max(0, cap - nnew));
    for (int i = 0; i < b; ++i) pr.cache_seqlens.push_back(u(rng));
  }
  if (kc.leftpad) {
    for (int i = 0; i < b; ++i) {
      std::uniform_int_distribution<int> u(0, pr.cache_seqlens[i]);
      pr.cache_leftpad.push_back(u(rng));
    }
  }
  if (kc.batch_idx) {
    std::vector<int> perm(b_cache);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    pr.cache_batch_idx.assign(perm.begin(), perm.begin() + b);
  }

  // Cache: valid keys [leftpad, cache_seqlens) random, the rest NaN (never to be read; the
  // appended range is overwritten by the call).
  const int dv = c.v_dim();
  int num_pages = 0, max_blocks = 0;
  Layout lc, lcv;
  if (kc.page_size > 0) {
    max_blocks = (cap + kc.page_size - 1) / kc.page_size;
    num_pages = b * max_blocks + 2;
    lc = Layout::make(num_pages, kc.page_size, c.h_k, c.d, c.padded_strides);
    lcv = Layout::make(num_pages, kc.page_size, c.h_k, dv, c.padded_strides);
    std::vector<int> perm(num_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    pr.block_table.assign(perm.begin(), perm.begin() + b * max_blocks);
  } else {
    lc = Layout::make(b_cache, cap, c.h_k, c.d, c.padded_strides);
    lcv = Layout::make(b_cache, cap, c.h_k, dv, c.padded_strides);
  }
  pr.k_cache = nan_tensor(c.dtype, lc.numel);
  pr.v_cache = nan_tensor(c.dtype, lcv.numel);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int i = 0; i < b; ++i) {
    const int lo = pr.cache_leftpad.empty() ? 0 : pr.cache_leftpad[i];
    const int cb = pr.cache_batch_idx.empty() ? i : pr.cache_batch_idx[i];
    // Element x of row t, head hh of a cache with layout l.
    auto at = [&](const Layout& l, int t, int hh, int x) {
      if (kc.page_size > 0)
        return int64_t(pr.block_table[i * max_blocks + t / kc.page_size]) * l.batch_stride +
               (t % kc.page_size) * l.row_stride + hh * l.head_stride + x;
      return int64_t(cb) * l.batch_stride + t * l.row_stride + hh * l.head_stride + x;
    };
    for (int t = lo; t < pr.cache_seqlens[i]; ++t)
      for (int hh = 0; hh < c.h_k; ++hh)
        for (int x = 0; x < std::max(c.d, dv); ++x) {
          if (x < c.d) pr.k_cache.set(at(lc, t, hh, x), u(rng));
          if (x < dv) pr.v_cache.set(at(lcv, t, hh, x), u(rng));
        }
  }

  const Layout lq = Layout::make(b, c.seqlen_q, c.h, c.d, c.padded_strides);
  const Layout lo = Layout::make(b, c.seqlen_q, c.h, dv, c.padded_strides);
  pr.q = random_tensor(c.dtype, lq, b, c.seqlen_q, c.h, c.d, rng);
  pr.o = nan_tensor(c.dtype, lo.numel);
  pr.lse.assign(static_cast<size_t>(b) * c.h * c.seqlen_q, kNaN);
  const Layout ln = Layout::make(b, nnew, c.h_k, c.d, c.padded_strides);
  const Layout lnv = Layout::make(b, nnew, c.h_k, dv, c.padded_strides);
  if (nnew > 0) {
    pr.knew = random_tensor(c.dtype, ln, b, nnew, c.h_k, c.d, rng);
    pr.vnew = random_tensor(c.dtype, lnv, b, nnew, c.h_k, dv, rng);
  }
  // The rotary table holds every position a call rotates: new keys up to cache_seqlens + nnew - 1
  // <= cap - 1, and with a causal or local mask query r at cache_seqlens + r, which passes cap - 1
  // when seqlen_q > nnew (a table of cap rows was read past its end there: garbage positions in
  // the reference, found by a flaky RefKvCache run).
  const int ro_len = cap + c.seqlen_q;
  if (kc.rotary_dim > 0) {
    const int half = kc.rotary_dim / 2;
    pr.rotary_cos = Buffer::make(c.dtype, int64_t(ro_len) * half);
    pr.rotary_sin = Buffer::make(c.dtype, int64_t(ro_len) * half);
    for (int pos = 0; pos < ro_len; ++pos)
      for (int k = 0; k < half; ++k) {
        const double theta = pos * std::pow(10000.0, -2.0 * k / kc.rotary_dim);
        pr.rotary_cos.set(int64_t(pos) * half + k, float(std::cos(theta)));
        pr.rotary_sin.set(int64_t(pos) * half + k, float(std::sin(theta)));
      }
  }
  fill_alibi(pr.alibi, c, rng);
  fill_sinks(pr.sinks, c, rng);

  p.b = b;
  p.seqlen_q = c.seqlen_q;
  p.seqlen_k = kc.page_size > 0 ? max_blocks * kc.page_size : cap;
  p.h = c.h;
  p.h_k = c.h_k;
  p.d = c.d;
  p.q_batch_stride = lq.batch_stride;
  p.q_row_stride = lq.row_stride;
  p.q_head_stride = lq.head_stride;
  p.o_batch_stride = lo.batch_stride;
  p.o_row_stride = lo.row_stride;
  p.o_head_stride = lo.head_stride;
  p.k_batch_stride = lc.batch_stride;
  p.k_row_stride = lc.row_stride;
  p.k_head_stride = lc.head_stride;
  p.v_batch_stride = lcv.batch_stride;
  p.v_row_stride = lcv.row_stride;
  p.v_head_stride = lcv.head_stride;
  if (kc.page_size > 0) {
    p.block_table_batch_stride = max_blocks;
    p.max_blocks_per_seq = max_blocks;
    p.page_block_size = kc.page_size;
    p.num_blocks = num_pages;
  }
  set_score_fields(p, c, pr.alibi, pr.sinks);
  p.b_cache = b_cache;
  p.knew_batch_stride = ln.batch_stride;
  p.knew_row_stride = ln.row_stride;
  p.knew_head_stride = ln.head_stride;
  p.vnew_batch_stride = lnv.batch_stride;
  p.vnew_row_stride = lnv.row_stride;
  p.vnew_head_stride = lnv.head_stride;
  p.seqlen_knew = nnew;
  p.seqlen_ro = kc.rotary_dim > 0 ? ro_len : 0;
  p.rotary_dim = kc.rotary_dim;
  p.rotary_interleaved = kc.rotary_interleaved;
  pr.bind();
  return pr;
}

// ------------------------------------------------------------------------------ comparison --

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    double d = std::fabs(double(a[i]) - double(b[i]));
    if (std::isnan(d)) return std::numeric_limits<double>::infinity();
    m = std::max(m, d);
  }
  return a.size() == b.size() ? m : std::numeric_limits<double>::infinity();
}

double max_abs(const std::vector<float>& a) {
  double m = 0;
  for (float x : a) m = std::max(m, double(std::fabs(x)));
  return m;
}

int64_t count_nonfinite(const std::vector<float>& a) {
  int64_t n = 0;
  for (float x : a) n += !std::isfinite(x);
  return n;
}

DiffStats diff(const std::vector<float>& a, const std::vector<float>& b) {
  DiffStats s;
  if (a.size() != b.size()) {
    s.finiteness_mismatches = -1;
    return s;
  }
  for (size_t i = 0; i < a.size(); ++i) {
    const bool fa = std::isfinite(a[i]), fb = std::isfinite(b[i]);
    if (fa && fb) {
      s.max_abs = std::max(s.max_abs, std::fabs(double(a[i]) - double(b[i])));
    } else if (fa != fb || std::isnan(a[i]) || std::isnan(b[i]) || a[i] != b[i]) {
      ++s.finiteness_mismatches;
    }
  }
  return s;
}

std::string DiffStats::str() const {
  std::ostringstream o;
  o << "max_abs=" << max_abs << " finiteness_mismatches=" << finiteness_mismatches;
  return o.str();
}

}  // namespace flashattn::testing
