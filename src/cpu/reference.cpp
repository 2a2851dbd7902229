// The CPU reference (flashattn::ref): exact attention written as the math, for testing.
//
// Every entry point works on one (sequence, query head) at a time, in three steps:
//   1. gather   q_i, k_j, v_j of that sequence and head into double matrices. Dense, varlen,
//               seqused_k, paged, strided and KV-cache inputs all end up here, so the math
//               below exists exactly once;
//   2. compute  one row of scores at a time, materialized (no tiling, no online softmax):
//                 s_ij = scoremod(q_i . k_j)                  for visible j
//                 m_i  = max(sink_h, max_j s_ij)              (sink_h = -inf without sinks)
//                 p_ij = exp(s_ij - m_i),   l_i = exp(sink_h - m_i) + sum_j p_ij
//                 P_ij = p_ij / l_i,        lse_i = m_i + log l_i
//                 o_i  = sum_j P_ij Z_ij / (1 - p_drop) v_j   (Z: dropout keep mask, 1 if off)
//               q and k have d columns, v and o dv columns.
//   3. scatter  the results, rounded once to the params' dtype (out_dtype for o).
// fp8 (e4m3) inputs are the emulated FP8 kernel (docs/algorithm.md, "FP8"): step 1 dequantizes
// them (x * descales, exact in double), step 2 quantizes each row's probabilities to e4m3 the way
// the kernel will, P^_ij = e4m3(256 exp(s_ij - m_i)), and normalizes by the unquantized row sum:
//                 o_i  = sum_j (P^_ij / 256) v_j / l_i,   lse_i as above.
// The rules themselves (visibility, score modifiers, Philox dropout, rotary, paged addressing,
// LSE merge, conversions) come from src/common, the same definitions the GPU kernels and the
// CPU backend use. The aim is to be obviously right; speed only matters in that tests call it
// on small and medium shapes.
#include "cpu/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "api/validate.h"
#include "common/descale.h"
#include "common/fp8.h"
#include "common/lse_merge.h"
#include "common/mask.h"
#include "common/numeric.h"
#include "common/paged_kv.h"
#include "common/philox.h"
#include "common/rotary.h"
#include "common/score_mod.h"
#include "common/seqlen.h"

namespace flashattn::ref {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// A dense row-major matrix of doubles: one head of one sequence, [rows, cols].
struct Mat {
  int rows = 0, cols = 0;
  std::vector<double> a;

  Mat() = default;
  Mat(int r, int c) : rows(r), cols(c), a(static_cast<size_t>(r) * c, 0.0) {}
  double* row(int r) { return a.data() + static_cast<int64_t>(r) * cols; }
  const double* row(int r) const { return a.data() + static_cast<int64_t>(r) * cols; }
};

double dot(const double* x, const double* y, int n) {
  double s = 0;
  for (int t = 0; t < n; ++t) s += x[t] * y[t];
  return s;
}

// Rows [0, n) of one head of a strided tensor; offset_of(r) is the element offset of row r.
template <typename OffsetOf>
Mat gather_rows(const void* ptr, DType t, int n, int d, OffsetOf offset_of) {
  Mat m(n, d);
  for (int r = 0; r < n; ++r) {
    const int64_t off = offset_of(r);
    for (int x = 0; x < d; ++x) m.row(r)[x] = load_as_float(ptr, t, off + x);
  }
  return m;
}

// Rows [r0, r1) of m into one head of a strided tensor.
template <typename OffsetOf>
void scatter_rows(void* ptr, DType t, const Mat& m, int r0, int r1, OffsetOf offset_of) {
  for (int r = r0; r < r1; ++r) {
    const int64_t off = offset_of(r);
    for (int x = 0; x < m.cols; ++x) store_from_float(ptr, t, off + x, float(m.row(r)[x]));
  }
}

// Rows [0, m.rows) of a gradient into one head of dq/dk/dv: rounded once to the gradient's
// element type (fp32 with dqkv_fp32, else dtype), added to the stored value with dqkv_accumulate.
template <typename OffsetOf>
void scatter_grad(const BwdParams& p, void* ptr, const Mat& m, OffsetOf offset_of) {
  const DType t = p.dqkv_fp32 ? DType::kFloat32 : p.dtype;
  for (int r = 0; r < m.rows; ++r) {
    const int64_t off = offset_of(r);
    for (int x = 0; x < m.cols; ++x) {
      double g = m.row(r)[x];
      if (p.dqkv_accumulate) g += load_as_float(ptr, t, off + x);
      store_from_float(ptr, t, off + x, float(g));
    }
  }
}

// Dropout of one (sequence, query head): the keep mask Z_ij, from the Philox stream (the
// documented counter layout of common/philox.h) or from an explicit mask.
struct Dropout {
  bool enabled = false;
  double keep_scale = 1.0;             // 1 / (1 - p)
  const uint8_t* mask = nullptr;       // explicit mask of this (b, h): [seqlen_q, seqlen_k]
  int64_t mask_row_stride = 0;
  DropoutRng rng;
  uint64_t bh = 0;                     // bidb * h + bidh

  bool keep(int i, int j) const {
    if (!enabled) return true;
    if (mask != nullptr) return mask[i * mask_row_stride + j] != 0;
    return rng.keep(bh, i, j);
  }
};

// Everything the math needs for one (sequence, query head).
struct Head {
  Mat q, k, v;  // [s_q, d], [s_k, d], [s_k, dv]
  VisibilityMask mask;
  ScoreMod<double> mod;
  int key_begin = 0;
  int key_end = std::numeric_limits<int>::max();
  int row_begin = 0;  // the forward computes rows [row_begin, row_end) only
  int row_end = std::numeric_limits<int>::max();
  Dropout dropout;
  // The head's sink logit: one more term of every row's softmax denominator, with no value.
  // -inf (no sink) adds nothing.
  double sink = -std::numeric_limits<double>::infinity();
  // fp8 inputs: the probabilities that multiply V are quantized to e4m3 as the kernel does.
  bool quantize_p = false;

  int seqlen_q() const { return q.rows; }
  int seqlen_k() const { return k.rows; }
  int d() const { return q.cols; }
  int dv() const { return v.cols; }
  int first_row() const { return std::min(std::max(row_begin, 0), seqlen_q()); }
  int last_row() const { return std::max(std::min(row_end, seqlen_q()), first_row()); }
  bool visible(int i, int j) const {
    return mask.visible(i, j) && j >= key_begin && j < key_end;
  }
};

// Row i of the softmax. P[j] gets P_ij (normalized, before dropout; 0 where not visible) and,
// if qk is non-null, qk[j] the raw dot product q_i . k_j (the softcap chain rule needs it).
// Returns lse_i (the sink included), or -inf when row i sees no key and has no sink. A row with
// a sink and no visible key returns lse_i = sink with every P_ij = 0: the sink takes it all.
// If p_unnorm is non-null it gets exp(s_ij - m_i) (0 where not visible) and *row_sum l_i.
double softmax_row(const Head& hd, int i, std::vector<double>* P, std::vector<double>* qk,
                   std::vector<double>* p_unnorm = nullptr, double* row_sum = nullptr) {
  const int n = hd.seqlen_k();
  P->assign(n, 0.0);
  if (qk != nullptr) qk->assign(n, 0.0);

  // Scores of the visible keys: s_ij = scoremod(q_i . k_j).
  std::vector<double> s(n, -kInf);
  for (int j = 0; j < n; ++j) {
    if (!hd.visible(i, j)) continue;
    const double x = dot(hd.q.row(i), hd.k.row(j), hd.d());
    if (qk != nullptr) (*qk)[j] = x;
    s[j] = hd.mod.apply(x, i, j);
  }
  // m_i = max(sink, max_j s_ij).
  double m = hd.sink;
  for (int j = 0; j < n; ++j) m = std::max(m, s[j]);
  if (m == -kInf) return -kInf;
  // p_ij = exp(s_ij - m_i) and l_i = exp(sink - m_i) + sum_j p_ij.
  double l = std::exp(hd.sink - m);
  for (int j = 0; j < n; ++j) {
    if (s[j] == -kInf) continue;
    (*P)[j] = std::exp(s[j] - m);
    l += (*P)[j];
  }
  if (p_unnorm != nullptr) *p_unnorm = *P;
  if (row_sum != nullptr) *row_sum = l;
  // P_ij = p_ij / l_i.
  for (int j = 0; j < n; ++j) (*P)[j] /= l;
  return m + std::log(l);
}

// Forward of one head: o [s_q, dv], lse [s_q] (+inf for rows that see no key and have no sink;
// the sink for rows that see no key) and, if probs is non-null, the probabilities as flash_attn
// returns them: P_ij, negated where dropped. Rows outside [first_row, last_row) are left at zero.
void attention_forward(const Head& hd, Mat* o, std::vector<double>* lse, Mat* probs) {
  const int s_q = hd.seqlen_q(), s_k = hd.seqlen_k(), d = hd.dv();
  *o = Mat(s_q, d);
  lse->assign(s_q, kInf);
  if (probs != nullptr) *probs = Mat(s_q, s_k);
  std::vector<double> P, p_unnorm;
  double l = 0;
  for (int i = hd.first_row(); i < hd.last_row(); ++i) {
    const double lse_i = softmax_row(hd, i, &P, nullptr, &p_unnorm, &l);
    if (lse_i == -kInf) continue;  // no visible key and no sink: o_i = 0, lse_i = +inf
    (*lse)[i] = lse_i;
    if (hd.quantize_p) {
      // The FP8 kernel's P.V: P^_ij = e4m3(256 exp(s_ij - m_i)) (the fp32 value rounded to
      // nearest even), normalized by 256 l_i, the row sum of the values BEFORE quantization
      // (the kernel sums the fp32 exponentials). Inference only: no dropout, no probabilities.
      for (int j = 0; j < s_k; ++j) {
        if (!hd.visible(i, j)) continue;
        const double p_hat = round_to_e4m3(float(double(kFp8PScale) * p_unnorm[j]));
        const double w = p_hat / (double(kFp8PScale) * l);
        for (int x = 0; x < d; ++x) o->row(i)[x] += w * hd.v.row(j)[x];
      }
      continue;
    }
    // o_i = sum_j P_ij Z_ij / (1 - p) v_j.
    double* o_i = o->row(i);
    for (int j = 0; j < s_k; ++j) {
      if (!hd.visible(i, j)) continue;
      const bool keep = hd.dropout.keep(i, j);
      if (probs != nullptr) probs->row(i)[j] = keep ? P[j] : -P[j];
      if (!keep) continue;
      const double w = P[j] * hd.dropout.keep_scale;
      for (int x = 0; x < d; ++x) o_i[x] += w * hd.v.row(j)[x];
    }
  }
}

// Backward of one head, from dO [s_q, dv]: dq is set, dk and dv are ACCUMULATED into (query
// heads sharing a kv head sum their contributions), and so is *dsink. With P~ = P o Z / (1 - p)
// the dropped, rescaled probabilities (O = P~ V):
//   dV = P~^T dO
//   dP~_ij = (dO_i . v_j) Z_ij / (1 - p)
//   D_i = sum_j P_ij dP~_ij = dO_i . O_i
//   dS_ij = P_ij (dP~_ij - D_i) * dscore_ij           (dscore: softcap's tanh chain rule)
//   dQ = scale dS K,   dK = scale dS^T Q
//   dsink += -sum_i P_sink,i D_i,   P_sink,i = exp(sink - lse_i)
// The sink changes none of the other lines: it contributes no value, so its dP term is 0 and
// D_i keeps its form (docs/algorithm.md, section 7). ALiBi adds a constant to s_ij and has no
// gradient with respect to q or k.
void attention_backward(const Head& hd, const Mat& dout, Mat* dq, Mat* dk, Mat* dv,
                        double* dsink) {
  const int s_q = hd.seqlen_q(), s_k = hd.seqlen_k(), d = hd.d(), d_v = hd.dv();
  *dq = Mat(s_q, d);
  std::vector<double> P, qk, o_i(d_v), dP(s_k), dS(s_k);
  for (int i = 0; i < s_q; ++i) {
    const double lse_i = softmax_row(hd, i, &P, &qk);
    if (lse_i == -kInf) continue;  // no key and no sink: no gradient flows through the row
    const double* dO_i = dout.row(i);

    // O_i = sum_j P~_ij v_j.
    std::fill(o_i.begin(), o_i.end(), 0.0);
    for (int j = 0; j < s_k; ++j) {
      if (!hd.visible(i, j) || !hd.dropout.keep(i, j)) continue;
      const double w = P[j] * hd.dropout.keep_scale;
      for (int x = 0; x < d_v; ++x) o_i[x] += w * hd.v.row(j)[x];
    }
    // D_i = dO_i . O_i.
    const double D_i = dot(dO_i, o_i.data(), d_v);
    // dsink += -P_sink,i D_i (exp(-inf) = 0 without a sink).
    *dsink -= std::exp(hd.sink - lse_i) * D_i;
    // dV_j += P~_ij dO_i   and   dP~_ij = (dO_i . v_j) Z_ij / (1 - p).
    for (int j = 0; j < s_k; ++j) {
      dP[j] = 0;
      if (!hd.visible(i, j) || !hd.dropout.keep(i, j)) continue;
      const double w = P[j] * hd.dropout.keep_scale;
      for (int x = 0; x < d_v; ++x) dv->row(j)[x] += w * dO_i[x];
      dP[j] = dot(dO_i, hd.v.row(j), d_v) * hd.dropout.keep_scale;
    }
    // dS_ij = P_ij (dP~_ij - D_i) dscore(q_i . k_j).
    for (int j = 0; j < s_k; ++j)
      dS[j] = hd.visible(i, j) ? P[j] * (dP[j] - D_i) * hd.mod.dscore(qk[j]) : 0.0;
    // dQ_i = scale sum_j dS_ij k_j   and   dK_j += scale dS_ij q_i.
    for (int j = 0; j < s_k; ++j) {
      if (dS[j] == 0.0) continue;
      const double g = hd.mod.scale * dS[j];
      for (int x = 0; x < d; ++x) {
        dq->row(i)[x] += g * hd.k.row(j)[x];
        dk->row(j)[x] += g * hd.q.row(i)[x];
      }
    }
  }
}

// ------------------------------------------------------------------------ params -> Head --

Dropout make_dropout(const FwdParams& p, const Options& opt, int bidb, int bidh) {
  Dropout dr;
  if (p.p_dropout <= 0.f) return dr;
  dr.enabled = true;
  dr.keep_scale = 1.0 / (1.0 - double(p.p_dropout));
  dr.bh = uint64_t(bidb) * p.h + bidh;
  if (opt.keep_mask != nullptr) {
    dr.mask = opt.keep_mask + int64_t(dr.bh) * p.seqlen_q * p.seqlen_k;
    dr.mask_row_stride = p.seqlen_k;
  } else {
    dr.rng.seed = p.philox_seed;
    dr.rng.offset = p.philox_offset;
    dr.rng.threshold = dropout_threshold(p.p_dropout);
  }
  return dr;
}

int kv_head_of(const FwdParams& p, int bidh) { return bidh / (p.h / p.h_k); }

// Element offset of key t (within its sequence), kv head hk, in a k-like tensor with the given
// strides: through the block table when paged, else through the sequence geometry.
int64_t key_offset(const FwdParams& p, const SeqlenInfo& info, int bidb, int t, int hk,
                   int64_t batch_stride, int64_t row_stride, int64_t head_stride) {
  if (p.block_table != nullptr) {
    PagedKV pkv{p.block_table, p.block_table_batch_stride, p.page_block_size};
    return pkv.offset(bidb, t, hk, batch_stride, row_stride, head_stride);
  }
  return info.k_offset(batch_stride, row_stride, head_stride, bidb, t, hk,
                       p.cu_seqlens_k != nullptr);
}

// fp8 inputs: the values q, k, v stand for, x * descales (common/descale.h), in double (exact:
// the product of an e4m3 value and two floats). Query row r is row r of its sequence; key row j
// is logical key key0 + j (the KV cache's left padding counts). Also turns on the quantized P.
void dequantize_fp8(const FwdParams& p, int bidb, int bidh, int key0, Head* hd) {
  if (p.dtype != DType::kFloat8E4M3) return;
  hd->quantize_p = true;
  const int hk = kv_head_of(p, bidh);
  const Fp8Descale dq = Fp8Descale::q(p), dk = Fp8Descale::k(p), dv = Fp8Descale::v(p);
  auto scale_rows = [](Mat* m, auto factor_of_row) {
    for (int r = 0; r < m->rows; ++r) {
      const double f = factor_of_row(r);
      for (int x = 0; x < m->cols; ++x) m->row(r)[x] *= f;
    }
  };
  scale_rows(&hd->q, [&](int r) { return double(dq.at(bidb, hk, bidh, r)); });
  scale_rows(&hd->k, [&](int j) { return double(dk.at(bidb, hk, hk, key0 + j)); });
  scale_rows(&hd->v, [&](int j) { return double(dv.at(bidb, hk, hk, key0 + j)); });
}

// The Head of (sequence bidb, query head bidh) of a forward or backward call.
Head make_head(const FwdParams& p, const Options& opt, int bidb, int bidh, const SeqlenInfo& info) {
  const bool varlen = p.cu_seqlens_q != nullptr;
  const int hk = kv_head_of(p, bidh);
  Head hd;
  hd.q = gather_rows(p.q_ptr, p.dtype, info.seqlen_q, p.d, [&](int r) {
    return info.q_offset(p.q_batch_stride, p.q_row_stride, p.q_head_stride, bidb, r, bidh, varlen);
  });
  hd.k = gather_rows(p.k_ptr, p.dtype, info.seqlen_k, p.d, [&](int t) {
    return key_offset(p, info, bidb, t, hk, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
  });
  hd.v = gather_rows(p.v_ptr, p.dtype, info.seqlen_k, p.dv, [&](int t) {
    return key_offset(p, info, bidb, t, hk, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
  });
  dequantize_fp8(p, bidb, bidh, /*key0=*/0, &hd);
  hd.mask = VisibilityMask::make(info.seqlen_q, info.seqlen_k, p.is_causal, p.window_size_left,
                                 p.window_size_right);
  hd.mod = ScoreMod<double>::of(p, bidb, bidh, info.seqlen_q, info.seqlen_k);
  hd.key_begin = opt.key_begin;
  if (opt.key_end >= 0) hd.key_end = opt.key_end;
  hd.row_begin = opt.row_begin;
  if (opt.row_end >= 0) hd.row_end = opt.row_end;
  hd.dropout = make_dropout(p, opt, bidb, bidh);
  // A key chunk's partial result leaves the sink out: it joins once, where the partials merge.
  const bool whole_row = opt.key_begin <= 0 && opt.key_end < 0;
  if (p.sinks != nullptr && whole_row) hd.sink = p.sinks[bidh];
  return hd;
}

// Index of (row r of sequence bidb, head bidh) in the LSE: [b, h, s_q] dense, [h, total_q] varlen.
int64_t lse_index(const FwdParams& p, const SeqlenInfo& info, int bidb, int bidh, int r) {
  if (p.cu_seqlens_q != nullptr) return int64_t(bidh) * p.cu_seqlens_q[p.b] + info.q_row0 + r;
  return (int64_t(bidb) * p.h + bidh) * p.seqlen_q + r;
}

// The few structural facts the reference relies on to not crash; full validation is the API's.
// A dense tensor with no rows (seqlen_q = 0 for q / o, seqlen_k = 0 for k / v) is never read, so
// its pointer may be null, as the API allows.
bool no_q_rows(const FwdParams& p) {
  return p.cu_seqlens_q == nullptr && (p.b == 0 || p.seqlen_q == 0);
}
bool no_k_rows(const FwdParams& p) {
  return p.cu_seqlens_k == nullptr && p.block_table == nullptr && (p.b == 0 || p.seqlen_k == 0);
}

Status check_fwd(const FwdParams& p) {
  if ((!no_q_rows(p) && (p.q_ptr == nullptr || p.o_ptr == nullptr)) ||
      (!no_k_rows(p) && (p.k_ptr == nullptr || p.v_ptr == nullptr)))
    return Status::invalid("ref: q_ptr, k_ptr, v_ptr and o_ptr must be non-null");
  if (p.b < 0 || p.h <= 0 || p.h_k <= 0 || p.d <= 0 || p.dv <= 0 || p.h % p.h_k != 0)
    return Status::invalid("ref: need b >= 0, h > 0, h_k > 0, d > 0, dv > 0 and h % h_k == 0");
  if ((p.cu_seqlens_q == nullptr) != (p.cu_seqlens_k == nullptr))
    return Status::invalid("ref: cu_seqlens_q and cu_seqlens_k must be both set or both null");
  if (p.block_table != nullptr && p.page_block_size <= 0)
    return Status::invalid("ref: page_block_size must be >= 1 with a block table");
  return Status::ok_status();
}

}  // namespace

// ------------------------------------------------------------------------------- forward --

Status mha_fwd(const FwdParams& params, const Options& opt) {
  const FwdParams p = detail::resolve(params);
  if (Status s = check_fwd(p); !s.ok()) return s;
  const bool varlen = p.cu_seqlens_q != nullptr;

  for (int bidb = 0; bidb < p.b; ++bidb) {
    const SeqlenInfo info = SeqlenInfo::make(p, bidb);
    for (int bidh = 0; bidh < p.h; ++bidh) {
      const Head hd = make_head(p, opt, bidb, bidh, info);
      Mat o, probs;
      std::vector<double> lse;
      attention_forward(hd, &o, &lse, p.p_ptr != nullptr ? &probs : nullptr);

      const int r0 = hd.first_row(), r1 = hd.last_row();
      scatter_rows(p.o_ptr, p.out_dtype, o, r0, r1, [&](int r) {
        return info.q_offset(p.o_batch_stride, p.o_row_stride, p.o_head_stride, bidb, r, bidh,
                             varlen);
      });
      if (opt.o_f64 != nullptr) {
        for (int r = r0; r < r1; ++r) {
          const int64_t row = varlen ? info.q_row0 + r : int64_t(bidb) * p.seqlen_q + r;
          for (int x = 0; x < p.dv; ++x) opt.o_f64[(row * p.h + bidh) * p.dv + x] = o.row(r)[x];
        }
      }
      if (p.softmax_lse_ptr != nullptr) {
        for (int r = r0; r < r1; ++r)
          p.softmax_lse_ptr[lse_index(p, info, bidb, bidh, r)] = float(lse[r]);
      }
      if (p.p_ptr != nullptr) {
        // [b, h, seqlen_q, seqlen_k], every element written: outside the sequence's own rows
        // and keys (varlen padding, seqused_k) the probability is 0.
        const int64_t base = (int64_t(bidb) * p.h + bidh) * p.seqlen_q * p.seqlen_k;
        const bool all_rows = r0 == 0 && r1 == info.seqlen_q;
        for (int i = all_rows ? 0 : r0; i < (all_rows ? p.seqlen_q : r1); ++i)
          for (int j = 0; j < p.seqlen_k; ++j) {
            const bool inside = i < probs.rows && j < probs.cols;
            store_from_float(p.p_ptr, p.dtype, base + int64_t(i) * p.seqlen_k + j,
                             inside ? float(probs.row(i)[j]) : 0.f);
          }
      }
    }
  }
  return Status::ok_status();
}

// ------------------------------------------------------------------------------ backward --

Status mha_bwd(const BwdParams& params, const Options& opt) {
  const BwdParams p = detail::resolve(params);
  if (Status s = check_fwd(p); !s.ok()) return s;
  if ((!no_q_rows(p) && (p.do_ptr == nullptr || p.dq_ptr == nullptr)) ||
      (!no_k_rows(p) && (p.dk_ptr == nullptr || p.dv_ptr == nullptr)))
    return Status::invalid("ref: do_ptr, dq_ptr, dk_ptr and dv_ptr must be non-null");
  if (p.block_table != nullptr)
    return Status::invalid("ref: block_table: paged KV has no backward");
  const bool varlen = p.cu_seqlens_q != nullptr;
  const int group = p.h / p.h_k;
  // dsinks[h]: summed over the batch and the rows, in double, rounded once.
  std::vector<double> dsink(size_t(p.h), 0.0);

  for (int bidb = 0; bidb < p.b; ++bidb) {
    const SeqlenInfo info = SeqlenInfo::make(p, bidb);
    // Rows of k/v this sequence owns in memory; seqused_k may use fewer, and the unused rows
    // still get their (zero) gradient written.
    const int k_rows = varlen ? p.cu_seqlens_k[bidb + 1] - p.cu_seqlens_k[bidb] : p.seqlen_k;
    for (int hk = 0; hk < p.h_k; ++hk) {
      Mat dk(k_rows, p.d), dv(k_rows, p.dv);
      for (int bidh = hk * group; bidh < (hk + 1) * group; ++bidh) {
        const Head hd = make_head(p, opt, bidb, bidh, info);
        const Mat dout = gather_rows(p.do_ptr, p.dtype, info.seqlen_q, p.dv, [&](int r) {
          return info.q_offset(p.do_batch_stride, p.do_row_stride, p.do_head_stride, bidb, r,
                               bidh, varlen);
        });
        Mat dq, dk_h(info.seqlen_k, p.d), dv_h(info.seqlen_k, p.dv);
        attention_backward(hd, dout, &dq, &dk_h, &dv_h, &dsink[size_t(bidh)]);
        scatter_grad(p, p.dq_ptr, dq, [&](int r) {
          return info.q_offset(p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride, bidb, r,
                               bidh, varlen);
        });
        // GQA: the query heads of one group share k and v, so their gradients add up.
        for (int t = 0; t < info.seqlen_k; ++t) {
          for (int x = 0; x < p.d; ++x) dk.row(t)[x] += dk_h.row(t)[x];
          for (int x = 0; x < p.dv; ++x) dv.row(t)[x] += dv_h.row(t)[x];
        }
      }
      scatter_grad(p, p.dk_ptr, dk, [&](int t) {
        return info.k_offset(p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, bidb, t, hk,
                             varlen);
      });
      scatter_grad(p, p.dv_ptr, dv, [&](int t) {
        return info.k_offset(p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, bidb, t, hk,
                             varlen);
      });
    }
  }
  if (p.dsinks != nullptr)
    for (int h = 0; h < p.h; ++h) p.dsinks[h] = float(dsink[size_t(h)]);
  return Status::ok_status();
}

// ------------------------------------------------------------------------------ KV cache --

Status mha_fwd_kvcache(const KVCacheParams& params) {
  const KVCacheParams p = detail::resolve(params);
  if (Status s = check_fwd(p); !s.ok()) return s;
  if (p.cu_seqlens_q != nullptr || p.cu_seqlens_k != nullptr || p.seqused_k != nullptr)
    return Status::invalid("ref: the KV-cache call takes no varlen fields");
  if (p.p_dropout > 0.f) return Status::invalid("ref: the KV-cache call has no dropout");
  if ((p.knew_ptr == nullptr) != (p.vnew_ptr == nullptr))
    return Status::invalid("ref: knew_ptr and vnew_ptr must be both set or both null");
  const bool paged = p.block_table != nullptr;
  const bool rotary = p.rotary_cos != nullptr && p.rotary_dim > 0;
  const int seqlen_knew = p.knew_ptr != nullptr ? p.seqlen_knew : 0;
  // flash_attn: with a causal or local mask each query row has its own position; without one,
  // every query sits at the position of the first new token.
  const bool q_rows_advance = p.is_causal || p.window_size_left >= 0 || p.window_size_right >= 0;

  // Rotation of one head vector at absolute position pos, in double, from the dtype tables.
  auto rotate = [&](double* x, int pos) {
    const int half = p.rotary_dim / 2;
    apply_rotary(x, p.rotary_dim, p.rotary_interleaved, [&](int k, double* c, double* s) {
      *c = load_as_float(p.rotary_cos, p.dtype, int64_t(pos) * half + k);
      *s = load_as_float(p.rotary_sin, p.dtype, int64_t(pos) * half + k);
    });
  };

  for (int bidb = 0; bidb < p.b; ++bidb) {
    const int cache_len = p.cache_seqlens != nullptr ? p.cache_seqlens[bidb] : p.cache_seqlen;
    const int leftpad = p.cache_leftpad != nullptr ? p.cache_leftpad[bidb] : 0;
    const int cache_b = p.cache_batch_idx != nullptr ? p.cache_batch_idx[bidb] : bidb;
    // Element offset of absolute cache index t, kv head hk, in the k or v cache.
    auto cache_offset = [&](int t, int hk, int64_t batch_stride, int64_t row_stride,
                            int64_t head_stride) {
      if (paged) {
        PagedKV pkv{p.block_table, p.block_table_batch_stride, p.page_block_size};
        return pkv.offset(bidb, t, hk, batch_stride, row_stride, head_stride);
      }
      return int64_t(cache_b) * batch_stride + int64_t(t) * row_stride +
             int64_t(hk) * head_stride;
    };
    auto k_at = [&](int t, int hk) {
      return cache_offset(t, hk, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
    };
    auto v_at = [&](int t, int hk) {
      return cache_offset(t, hk, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
    };

    // Step 1: append the new tokens at cache index cache_len + t; k rotated at that position.
    // The cache holds dtype values, so the rotated k is rounded to dtype here, once.
    for (int hk = 0; hk < p.h_k; ++hk) {
      const Mat knew = gather_rows(p.knew_ptr, p.dtype, seqlen_knew, p.d, [&](int t) {
        return int64_t(bidb) * p.knew_batch_stride + int64_t(t) * p.knew_row_stride +
               int64_t(hk) * p.knew_head_stride;
      });
      const Mat vnew = gather_rows(p.vnew_ptr, p.dtype, seqlen_knew, p.dv, [&](int t) {
        return int64_t(bidb) * p.vnew_batch_stride + int64_t(t) * p.vnew_row_stride +
               int64_t(hk) * p.vnew_head_stride;
      });
      for (int t = 0; t < seqlen_knew; ++t) {
        std::vector<double> k_t(knew.row(t), knew.row(t) + p.d);
        if (rotary) rotate(k_t.data(), cache_len + t);
        const int64_t ko = k_at(cache_len + t, hk), vo = v_at(cache_len + t, hk);
        for (int x = 0; x < p.d; ++x) store_from_float(p.k_ptr, p.dtype, ko + x, float(k_t[x]));
        for (int x = 0; x < p.dv; ++x)
          store_from_float(p.v_ptr, p.dtype, vo + x, float(vnew.row(t)[x]));
      }
    }

    // Step 2: attend over cache indices [leftpad, cache_len + seqlen_knew). Key j of the
    // sequence is cache index leftpad + j: mask alignment and ALiBi see s_k without the padding.
    const int s_q = p.seqlen_q;
    const int s_k = cache_len + seqlen_knew - leftpad;
    for (int bidh = 0; bidh < p.h; ++bidh) {
      const int hk = kv_head_of(p, bidh);
      Head hd;
      hd.q = gather_rows(p.q_ptr, p.dtype, s_q, p.d, [&](int r) {
        return int64_t(bidb) * p.q_batch_stride + int64_t(r) * p.q_row_stride +
               int64_t(bidh) * p.q_head_stride;
      });
      if (rotary)  // q stays in double: it is a local copy, never stored
        for (int r = 0; r < s_q; ++r) rotate(hd.q.row(r), cache_len + (q_rows_advance ? r : 0));
      hd.k = gather_rows(p.k_ptr, p.dtype, s_k, p.d, [&](int j) { return k_at(leftpad + j, hk); });
      hd.v = gather_rows(p.v_ptr, p.dtype, s_k, p.dv, [&](int j) { return v_at(leftpad + j, hk); });
      dequantize_fp8(p, bidb, bidh, /*key0=*/leftpad, &hd);
      hd.mask = VisibilityMask::make(s_q, s_k, p.is_causal, p.window_size_left,
                                     p.window_size_right);
      hd.mod = ScoreMod<double>::of(p, bidb, bidh, s_q, s_k);
      if (p.sinks != nullptr) hd.sink = p.sinks[bidh];

      Mat o;
      std::vector<double> lse;
      attention_forward(hd, &o, &lse, nullptr);
      scatter_rows(p.o_ptr, p.out_dtype, o, 0, o.rows, [&](int r) {
        return int64_t(bidb) * p.o_batch_stride + int64_t(r) * p.o_row_stride +
               int64_t(bidh) * p.o_head_stride;
      });
      if (p.softmax_lse_ptr != nullptr)
        for (int r = 0; r < s_q; ++r)
          p.softmax_lse_ptr[(int64_t(bidb) * p.h + bidh) * s_q + r] = float(lse[r]);
    }
  }
  return Status::ok_status();
}

// ------------------------------------------------------------------------------- combine --

Status mha_combine(const CombineParams& p) {
  if (p.out_partial == nullptr || p.lse_partial == nullptr || p.out == nullptr)
    return Status::invalid("ref: out_partial, lse_partial and out must be non-null");
  const int64_t out_split_stride = int64_t(p.b) * p.seqlen_q * p.h * p.d;
  const int64_t lse_split_stride = int64_t(p.b) * p.h * p.seqlen_q;

  for (int bidb = 0; bidb < p.b; ++bidb)
    for (int bidh = 0; bidh < p.h; ++bidh)
      for (int i = 0; i < p.seqlen_q; ++i) {
        const int64_t lse_idx = (int64_t(bidb) * p.h + bidh) * p.seqlen_q + i;
        const int64_t part_idx = ((int64_t(bidb) * p.seqlen_q + i) * p.h + bidh) * p.d;
        // lse = log sum_s exp(lse_s), empty splits (-inf) being the identity.
        double lse = -kInf;
        for (int s = 0; s < p.num_splits; ++s)
          lse = logaddexp<double>(lse, p.lse_partial[s * lse_split_stride + lse_idx]);
        // out = sum_s exp(lse_s - lse) out_s over the non-empty splits (an empty split's
        // partial output is never read: it may hold anything).
        std::vector<double> out(p.d, 0.0);
        for (int s = 0; s < p.num_splits; ++s) {
          const double lse_s = p.lse_partial[s * lse_split_stride + lse_idx];
          if (lse_s == -kInf) continue;
          const double w = merge_weight<double>(lse_s, lse);
          for (int x = 0; x < p.d; ++x)
            out[x] += w * p.out_partial[s * out_split_stride + part_idx + x];
        }
        const int64_t o_off = int64_t(bidb) * p.out_batch_stride + int64_t(i) * p.out_row_stride +
                              int64_t(bidh) * p.out_head_stride;
        for (int x = 0; x < p.d; ++x) store_from_float(p.out, p.dtype, o_off + x, float(out[x]));
        if (p.lse != nullptr) p.lse[lse_idx] = float(finalize_lse<double>(lse));
      }
  return Status::ok_status();
}

}  // namespace flashattn::ref
