// The FlashAttention-2 backward on the CPU (Dao, "FlashAttention-2", 2023, Algorithm 2).
//
// Work items are (sequence, kv head, key chunk): an item owns dK_j, dV_j of its chunk's key
// blocks for its kv head, and adds the chunk's share of dQ, for the h/h_k query heads that share
// the kv head, into its own fp32 partial. A pass in memory order of dq then sums the partials of
// each row in chunk order, scales and stores it. No two items write the same output and no
// atomics are needed, and the number of chunks depends on the problem's shape only (enough items
// to keep many cores busy when b * h_k is small: choose_chunks), so the CPU backward is
// deterministic, bitwise, whatever the thread count and scheduling. Items run heaviest first
// (most visible tiles: under a causal mask the first key chunks), so the pool's tail is short.
//
// Per item (query heads of the group stacked as in the forward, columns c = hg * rows + r):
//   D_i = rowsum(dO_i * O_i) (compute_d, once per call); Q_i, dO_i (rows and transposed panels)
//   converted once per item
//   for each key block j of the chunk (outer loop; dK_j, dV_j stay in a local fp32 accumulator):
//     for each query block i that sees some key of block j:
//       S^T = K_j Q_i^T, score modifiers + mask, P^T = exp(S^T - LSE_i)   (recomputed, not stored)
//       dP^T = V_j dO_i^T
//       dropout: Z = keep mask / (1 - p);  dV_j += (P * Z)^T dO_i;  dP = dP * Z
//       dS = P * (dP - D_i), times the softcap chain rule (1 - tanh^2) when softcap > 0
//       dK_j += dS^T Q_i;  dQ_i += dS K_j                               (both times scale)
//     write dK_j (times scale) and dV_j
//   dQ partial of the chunk (the scale is applied when the partials are summed). Keys no query
//   sees get zero gradients; so do rows beyond seqused_k.
// Sinks change none of the above: the forward's LSE includes them, so P = exp(S - LSE) is already
// normalized over keys and sink, and the sink contributes no value, so D keeps its form. Their
// gradient is dsink_h = -sum_i P_sink,i D_i with P_sink,i = exp(sink_h - LSE_i), summed in double
// next to D (compute_d) per task of rows, then over the tasks in order: deterministic like the
// rest.
// Q, K, dQ, dK have head dim d; V, dO, O, dV have dv.
// Gradients are stored in dtype, or fp32 with dqkv_fp32; with dqkv_accumulate each row is added
// to what the output holds (one rounding of the fp32 sum), and rows with nothing to add are
// left alone.
// Products use the same gemm micro-kernel as the forward; transposed operands are strides.
// bf16 calls on a table with bf16 products (use_bf16_products) run all five on bf16 operands
// with fp32 accumulation: Q, K, V, dO are exact in bf16, P and dS are rounded to bf16 as the
// GPU backward does; D, the softmax and dS itself are computed in fp32. Each operand is laid out
// once in the word form its product reads (kernels.h: pack_pairs, pack_rows).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/mask.h"
#include "common/numeric.h"
#include "common/philox.h"
#include "common/score_mod.h"
#include "common/seqlen.h"
#include "cpu/backend_common.h"
#include "cpu/thread_pool.h"

namespace flashattn::cpu {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Key chunks per (sequence, kv head): as many as bring the item count to kTargetItems (two per
// core of a 16-core host), but at least kMinBlocksPerChunk key blocks each, so the dQ partials
// (one fp32 copy of dq per chunk) and their sum stay a small part of the work. Each chunk item
// converts the Q and dO panels of its query blocks again, which measured ~2 % per extra chunk
// (fp32, d = 128, s = 1024, Zen 4): more chunks than needed for balance cost time.
constexpr int kTargetItems = 32;
constexpr int kMinBlocksPerChunk = 2;
// Rows per task of the passes before and after the items (compute_d, write_dq): enough tasks
// for 16 threads at s = 512 (32 tasks), and at most 16 rows, so the task list, on which the
// dsinks sums depend, is a function of the shape only.
constexpr int kRowsPerTask = 16;

struct WorkItem {
  int seq = 0;
  int hk = 0;
  int chunk = 0;
  int64_t tiles = 0;  // visible (key block, query block) tiles: the item's cost
};

struct Scratch {
  // Per query block mb (stride per block below): rows/panels of Q and dO (fp32 products only),
  // LSE, D.
  std::vector<float> qr, qt, dor, dot, lse, dsum;
  // bf16 products, per query block: Q^T and dO^T with dims paired ([dp/2][ld], [dvp/2][ld]), Q
  // and dO rows with stacked rows paired ([ld/2][dp], [ld/2][dvp]); qrow: one q and one dO row
  // as words.
  std::vector<uint32_t> qtw, dotw, qrw, dorw, qrow;
  // Per key block (V and dV with dvp columns); row and old hold one gradient row of either head
  // dim.
  std::vector<float> kb, vb, dk, dv, st, dpt, pdt, raw, row, old, dummy;
  // bf16 products, per key block: K and V rows ([bn][dp/2], [bn][dvp/2]), K with keys paired
  // ([bn/2][dp]); per tile: P^T or dS^T rows ([bn][ld/2]), dS^T with keys paired ([bn/2][ld]).
  std::vector<uint32_t> kw, vw, kpw, prw, dsw;
};

class Backward {
 public:
  explicit Backward(const BwdParams& p)
      : p_(p),
        k_(active_kernels()),
        g_(p.h / p.h_k),
        d_(p.d),
        dp_(padded_dim(p.d)),
        dv_(p.dv),
        dvp_(padded_dim(p.dv)),
        bn_(k_.block_n),
        rows_(std::max(1, k_.block_m / g_)),
        ld_max_(round_up(g_ * rows_, 8)),
        grad_t_(p.dqkv_fp32 ? DType::kFloat32 : p.dtype),
        bf16_(use_bf16_products(p.dtype, k_)) {
    dropout_ = p.p_dropout > 0.f;
    rng_.seed = p.philox_seed;
    rng_.offset = p.philox_offset;
    rng_.threshold = dropout_threshold(p.p_dropout);
    rp_dropout_ = dropout_ ? 1.f / (1.f - p.p_dropout) : 1.f;
  }

  void run() {
    seqs_ = make_seq_views(p_);
    int max_mb = 1;
    for (const SeqView& sv : seqs_) max_mb = std::max(max_mb, m_blocks(sv));
    choose_chunks();
    // dQ partial panels: per chunk, one [ld][dp] fp32 panel per (sequence, kv head, query block).
    mb_base_.assign(seqs_.size(), 0);
    int64_t panels = 0;
    for (size_t s = 0; s < seqs_.size(); ++s) {
      mb_base_[s] = panels;
      panels += int64_t(p_.h_k) * m_blocks(seqs_[s]);
    }
    panels_ = panels;
    compute_d();
    dq_part_ = ws_.get<float>(kSlotDq, size_t(chunks_) * panels * panel_stride());
    touched_ = ws_.zeros<uint8_t>(kSlotTouched, size_t(chunks_) * panels);

    std::vector<WorkItem> items;
    for (int s = 0; s < int(seqs_.size()); ++s)
      for (int hk = 0; hk < p_.h_k; ++hk)
        for (int c = 0; c < chunks_; ++c) items.push_back({s, hk, c, item_tiles(s, c)});
    // Heaviest first; ties keep (sequence, kv head, chunk) order, so the order is deterministic.
    std::stable_sort(items.begin(), items.end(),
                     [](const WorkItem& a, const WorkItem& b) { return a.tiles > b.tiles; });
    const int threads =
        int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), int64_t(items.size()))));
    // Each worker sets up its buffers itself, on first use (WorkerScratch).
    WorkerScratch<Scratch> scratch(threads);
    auto scratch_of = [&](int worker) {
      return scratch.get(worker, [&](Scratch& w) { allocate(w, max_mb); });
    };
    ThreadPool::instance().parallel_for(int64_t(items.size()), threads, [&](int64_t i, int worker) {
      if (Scratch* w = scratch_of(worker)) run_item(items[size_t(i)], *w);
    });
    scratch.check();
    write_dq(threads);
  }

 private:
  int m_blocks(const SeqView& sv) const { return ceil_div(sv.seqlen_q, rows_); }
  // Rows of the widest head dim: every panel (d or dv columns, or d x ld transposed) fits.
  size_t panel_stride() const { return size_t(ld_max_) * std::max(dp_, dvp_); }
  size_t word_stride() const { return panel_stride() / 2; }       // ld_max and dp are even
  size_t fp32_panel(int mb) const { return size_t(mb) * panel_stride(); }

  void choose_chunks() {
    int max_kb = 1;
    for (const SeqView& sv : seqs_) max_kb = std::max(max_kb, ceil_div(sv.seqlen_k, bn_));
    const int64_t pairs = std::max<int64_t>(1, int64_t(seqs_.size()) * p_.h_k);
    const int64_t want = (kTargetItems + pairs - 1) / pairs;
    chunks_ = int(std::max<int64_t>(1, std::min<int64_t>(want, max_kb / kMinBlocksPerChunk)));
  }
  // Keys [*n_begin, *n_end) of chunk c of a sequence (whole key blocks; may be empty).
  void chunk_range(const SeqView& sv, int c, int* n_begin, int* n_end) const {
    const int per = ceil_div(ceil_div(sv.seqlen_k, bn_), chunks_);
    *n_begin = std::min(sv.seqlen_k, c * per * bn_);
    *n_end = std::min(sv.seqlen_k, (c + 1) * per * bn_);
  }
  VisibilityMask mask_of(const SeqView& sv) const {
    return VisibilityMask::make(sv.seqlen_q, sv.seqlen_k, p_.is_causal, p_.window_size_left,
                                p_.window_size_right);
  }
  // Whether query block mb sees a key of [n_begin, n_end).
  bool block_sees(const SeqView& sv, const VisibilityMask& mask, int mb, int n_begin,
                  int n_end) const {
    const int m0 = mb * rows_, rows = std::min(rows_, sv.seqlen_q - m0);
    int kb_begin, kb_end;
    mask.key_range(m0, m0 + rows, &kb_begin, &kb_end);
    return std::max(kb_begin, n_begin) < std::min(kb_end, n_end);
  }
  int64_t item_tiles(int seq, int c) const {
    const SeqView& sv = seqs_[size_t(seq)];
    const VisibilityMask mask = mask_of(sv);
    int n_begin, n_end;
    chunk_range(sv, c, &n_begin, &n_end);
    int64_t tiles = 0;
    for (int n0 = n_begin; n0 < n_end; n0 += bn_)
      for (int mb = 0; mb < m_blocks(sv); ++mb)
        tiles += block_sees(sv, mask, mb, n0, std::min(n_end, n0 + bn_)) ? 1 : 0;
    return tiles;
  }
  float* dq_panel(int chunk, int seq, int hk, int mb) const {
    const int64_t panel = mb_base_[size_t(seq)] + int64_t(hk) * m_blocks(seqs_[size_t(seq)]) + mb;
    return dq_part_ + (size_t(chunk) * panels_ + size_t(panel)) * panel_stride();
  }
  uint8_t& touched(int chunk, int seq, int hk, int mb) const {
    const int64_t panel = mb_base_[size_t(seq)] + int64_t(hk) * m_blocks(seqs_[size_t(seq)]) + mb;
    return touched_[size_t(chunk) * panels_ + size_t(panel)];
  }

  void allocate(Scratch& w, int max_mb) const {
    const size_t panels = size_t(max_mb) * panel_stride();
    if (!bf16_)
      for (auto* v : {&w.qr, &w.qt, &w.dor, &w.dot}) v->assign(panels, 0.f);
    w.lse.assign(size_t(max_mb) * ld_max_, 0.f);
    w.dsum.assign(size_t(max_mb) * ld_max_, 0.f);
    for (auto* v : {&w.kb, &w.dk}) v->assign(size_t(bn_) * dp_, 0.f);
    for (auto* v : {&w.vb, &w.dv}) v->assign(size_t(bn_) * dvp_, 0.f);
    for (auto* v : {&w.st, &w.dpt, &w.pdt, &w.raw}) v->assign(size_t(bn_) * ld_max_, 0.f);
    if (bf16_) {
      for (auto* v : {&w.qtw, &w.dotw, &w.qrw, &w.dorw}) v->assign(size_t(max_mb) * word_stride(), 0);
      w.qrow.assign(size_t(dp_ + dvp_) / 2, 0);
      for (auto* v : {&w.kw, &w.kpw}) v->assign(size_t(bn_ + 1) * dp_ / 2, 0);
      w.vw.assign(size_t(bn_ + 1) * dvp_ / 2, 0);
      for (auto* v : {&w.prw, &w.dsw}) v->assign(size_t(bn_ + 1) * ld_max_ / 2, 0);
    }
    const size_t widest = size_t(std::max(dp_, dvp_));
    w.row.assign(widest, 0.f);
    w.old.assign(widest, 0.f);
    w.dummy.assign(size_t(ld_max_), 0.f);
  }

  // Row i, head hh of a q-like tensor whose row 0 (head 0) is at base.
  const void* row_ptr(const void* base, int i, int64_t rs, int hh, int64_t hs) const {
    return static_cast<const char*>(base) + (int64_t(i) * rs + int64_t(hh) * hs) * dtype_size(p_.dtype);
  }
  void* row_ptr(void* base, int i, int64_t rs, int hh, int64_t hs) const {
    return static_cast<char*>(base) + (int64_t(i) * rs + int64_t(hh) * hs) * dtype_size(p_.dtype);
  }

  // One gradient row (n fp32 values, clobbered; n = d for dq/dk, dv for dv) into dq/dk/dv:
  // stored in the gradient element type, or added to the row already there.
  // `old`: room for one row of n floats.
  void store_grad(float* row, int n, void* dst, float* old) const {
    if (p_.dqkv_accumulate) {
      k_.load_row(dst, grad_t_, n, old);
      for (int x = 0; x < n; ++x) row[x] += old[x];
    }
    k_.store_row(row, grad_t_, n, dst);
  }

  ScoreMod<float> score_mod(const SeqView& sv, int hq) const {
    return ScoreMod<float>::of(p_, sv.bidb, hq, sv.seqlen_q, sv.seqlen_k);
  }

  void run_item(const WorkItem& it, Scratch& w) const {
    const int seq = it.seq, hk = it.hk;
    const SeqView& sv = seqs_[size_t(seq)];
    const SeqlenInfo si = SeqlenInfo::make(p_, sv.bidb);
    const bool varlen = p_.cu_seqlens_q != nullptr;
    const VisibilityMask mask = mask_of(sv);
    const int num_mb = m_blocks(sv);
    const float scale = p_.softmax_scale;
    int n_begin, n_end;
    chunk_range(sv, it.chunk, &n_begin, &n_end);
    const int kbytes = d_ * dtype_size(p_.dtype), vbytes = dv_ * dtype_size(p_.dtype);

    // Per query block that sees the chunk: Q and dO as rows and as transposed panels, LSE,
    // D = rowsum(dO * O), and a zeroed dQ partial.
    for (int mb = 0; mb < num_mb; ++mb) {
      if (!block_sees(sv, mask, mb, n_begin, n_end)) continue;
      const int m0 = mb * rows_, rows = std::min(rows_, sv.seqlen_q - m0);
      const int cols = g_ * rows;
      float* dq = dq_panel(it.chunk, seq, hk, mb);
      std::fill(dq, dq + size_t(cols) * dp_, 0.f);
      touched(it.chunk, seq, hk, mb) = 1;
      const void* dob = do_base(sv, si, varlen);
      for (int hg = 0; hg < g_; ++hg) {
        const int hq = hk * g_ + hg;
        for (int r = 0; r < rows; ++r) {
          const int i = m0 + r, c = hg * rows + r;
          w.dsum[size_t(mb) * ld_max_ + c] = d_all_[size_t(hq) * total_q_ + size_t(sv.row0 + i)];
          w.lse[size_t(mb) * ld_max_ + c] = sv.lse[hq * sv.lse_head_stride + i];
        }
      }
      if (bf16_)
        words_of_block(sv, dob, hk, mb, rows, w);
      else
        panels_of_block(sv, dob, hk, mb, rows, w);
    }

    for (int n0 = n_begin; n0 < n_end; n0 += bn_) {
      const int n = std::min(bn_, n_end - n0);
      for (int j = 0; j < n; ++j) {
        if (j + kPrefetchRows < n) {
          prefetch_row(sv.keys.k_row(n0 + j + kPrefetchRows, hk), kbytes);
          prefetch_row(sv.keys.v_row(n0 + j + kPrefetchRows, hk), vbytes);
        }
        k_.load_row(sv.keys.k_row(n0 + j, hk), p_.dtype, d_, w.kb.data() + size_t(j) * dp_);
        k_.load_row(sv.keys.v_row(n0 + j, hk), p_.dtype, dv_, w.vb.data() + size_t(j) * dvp_);
      }
      if (bf16_) {
        k_.pack_rows(w.kb.data(), dp_, n, dp_, w.kw.data(), dp_ / 2);
        k_.pack_rows(w.vb.data(), dvp_, n, dvp_, w.vw.data(), dvp_ / 2);
        k_.pack_pairs(w.kb.data(), dp_, n, dp_, w.kpw.data(), dp_);
      }
      std::fill(w.dk.begin(), w.dk.end(), 0.f);
      std::fill(w.dv.begin(), w.dv.end(), 0.f);

      for (int mb = 0; mb < num_mb; ++mb) {
        if (!block_sees(sv, mask, mb, n0, n0 + n)) continue;
        const int m0 = mb * rows_, rows = std::min(rows_, sv.seqlen_q - m0);
        block(sv, mask, it.chunk, seq, hk, mb, m0, rows, n0, n, w);
      }

      for (int j = 0; j < n; ++j) {
        float* dkj = w.dk.data() + size_t(j) * dp_;
        k_.scale_row(dkj, d_, scale);
        store_grad(dkj, d_, dk_row(sv, si, varlen, n0 + j, hk), w.old.data());
        store_grad(w.dv.data() + size_t(j) * dvp_, dv_, dv_row(sv, si, varlen, n0 + j, hk),
                   w.old.data());
      }
    }
    // Rows this sequence owns beyond its used keys (seqused_k) get zero gradients too (nothing
    // to add when accumulating); chunk 0 writes them.
    if (!p_.dqkv_accumulate && it.chunk == 0) {
      std::fill(w.row.begin(), w.row.end(), 0.f);
      for (int j = sv.seqlen_k; j < sv.key_rows; ++j) {
        k_.store_row(w.row.data(), grad_t_, d_, dk_row(sv, si, varlen, j, hk));
        k_.store_row(w.row.data(), grad_t_, dv_, dv_row(sv, si, varlen, j, hk));
      }
    }
  }

  // fp32 Q and dO of query block mb as rows (qr: [cols][dp], dor: [cols][dvp]) and transposed
  // (qt: [d][ld], dot: [dv][ld], padding columns zero).
  void panels_of_block(const SeqView& sv, const void* dob, int hk, int mb, int rows,
                       Scratch& w) const {
    const int m0 = mb * rows_, cols = g_ * rows, ld = round_up(cols, 8);
    const int qbytes = d_ * dtype_size(p_.dtype), dbytes = dv_ * dtype_size(p_.dtype);
    float* qr = w.qr.data() + fp32_panel(mb);
    float* qt = w.qt.data() + fp32_panel(mb);
    float* dor = w.dor.data() + fp32_panel(mb);
    float* dot = w.dot.data() + fp32_panel(mb);
    std::fill(qt, qt + size_t(d_) * ld, 0.f);
    std::fill(dot, dot + size_t(dv_) * ld, 0.f);
    for (int hg = 0; hg < g_; ++hg) {
      const int hq = hk * g_ + hg;
      for (int r = 0; r < rows; ++r) {
        const int i = m0 + r, c = hg * rows + r;
        if (r + kPrefetchRows < rows) {
          const int ip = i + kPrefetchRows;
          prefetch_row(row_ptr(sv.q, ip, sv.q_row_stride, hq, sv.q_head_stride), qbytes);
          prefetch_row(row_ptr(dob, ip, p_.do_row_stride, hq, p_.do_head_stride), dbytes);
        }
        float* qc = qr + size_t(c) * dp_;
        float* dc = dor + size_t(c) * dvp_;
        k_.load_row(row_ptr(sv.q, i, sv.q_row_stride, hq, sv.q_head_stride), p_.dtype, d_, qc);
        k_.load_row(row_ptr(dob, i, p_.do_row_stride, hq, p_.do_head_stride), p_.dtype, dv_, dc);
        for (int x = 0; x < d_; ++x) qt[size_t(x) * ld + c] = qc[x];
        for (int x = 0; x < dv_; ++x) dot[size_t(x) * ld + c] = dc[x];
      }
    }
  }

  // The same operands as bf16 words, built from the bf16 rows directly (no fp32 round trip):
  // Q^T, dO^T with dims paired ([ceil(d/2)][ld] and [ceil(dv/2)][ld], the words of a row are
  // already dim pairs) and Q, dO with stacked rows paired ([ceil(cols/2)][dp] and [..][dvp]);
  // everything not written is zero.
  void words_of_block(const SeqView& sv, const void* dob, int hk, int mb, int rows,
                      Scratch& w) const {
    const int m0 = mb * rows_, cols = g_ * rows, ld = round_up(cols, 8);
    const int dw = ceil_div(d_, 2), dvw = ceil_div(dv_, 2);
    const size_t wo = size_t(mb) * word_stride();
    uint32_t* qtw = w.qtw.data() + wo;
    uint32_t* dotw = w.dotw.data() + wo;
    uint32_t* qrw = w.qrw.data() + wo;
    uint32_t* dorw = w.dorw.data() + wo;
    std::fill(qtw, qtw + size_t(dw) * ld, 0u);
    std::fill(dotw, dotw + size_t(dvw) * ld, 0u);
    std::fill(qrw, qrw + size_t(ceil_div(cols, 2)) * dp_, 0u);
    std::fill(dorw, dorw + size_t(ceil_div(cols, 2)) * dvp_, 0u);
    uint32_t* qrow = w.qrow.data();
    uint32_t* drow = qrow + dp_ / 2;
    for (int hg = 0; hg < g_; ++hg) {
      const int hq = hk * g_ + hg;
      for (int r = 0; r < rows; ++r) {
        const int i = m0 + r, c = hg * rows + r;
        if (r + kPrefetchRows < rows) {
          const int ip = i + kPrefetchRows;
          prefetch_row(row_ptr(sv.q, ip, sv.q_row_stride, hq, sv.q_head_stride), 2 * d_);
          prefetch_row(row_ptr(dob, ip, p_.do_row_stride, hq, p_.do_head_stride), 2 * dv_);
        }
        // Whole words of the row (the half past an odd d or dv stays 0 from the allocation).
        std::memcpy(qrow, row_ptr(sv.q, i, sv.q_row_stride, hq, sv.q_head_stride), size_t(d_) * 2);
        std::memcpy(drow, row_ptr(dob, i, p_.do_row_stride, hq, p_.do_head_stride),
                    size_t(dv_) * 2);
        for (int x = 0; x < dw; ++x) qtw[size_t(x) * ld + c] = qrow[x];
        for (int x = 0; x < dvw; ++x) dotw[size_t(x) * ld + c] = drow[x];
        // Row c is the low (even c) or high (odd c) half of the words of row pair c / 2.
        const int shift = 16 * (c & 1);
        uint32_t* qp = qrw + size_t(c / 2) * dp_;
        uint32_t* dp = dorw + size_t(c / 2) * dvp_;
        for (int x = 0; x < dw; ++x) {
          qp[2 * x] |= (qrow[x] & 0xffffu) << shift;
          qp[2 * x + 1] |= (qrow[x] >> 16) << shift;
        }
        for (int x = 0; x < dvw; ++x) {
          dp[2 * x] |= (drow[x] & 0xffffu) << shift;
          dp[2 * x + 1] |= (drow[x] >> 16) << shift;
        }
      }
    }
  }

  // D = rowsum(dO * O) of every (row, query head), once per call in memory order (row i, all
  // heads; the reason is at backend_fwd.cpp's pack_q) instead of in every chunk item:
  // d_all_[hq * total_q + row]. With dsinks, also dsinks[hq] = -sum_i exp(sink_hq - LSE_i) D_i:
  // each task sums its rows in double, then the tasks' sums are added in task order (the tasks
  // depend on the shape only, so the result does not depend on the thread count).
  void compute_d() {
    total_q_ = 0;
    for (const SeqView& sv : seqs_) total_q_ = std::max<int64_t>(total_q_, sv.row0 + sv.seqlen_q);
    d_all_ = ws_.get<float>(kSlotD, size_t(p_.h) * size_t(total_q_));
    std::vector<std::pair<int, int>> tasks;
    for (int s = 0; s < int(seqs_.size()); ++s)
      for (int i0 = 0; i0 < seqs_[size_t(s)].seqlen_q; i0 += kRowsPerTask) tasks.push_back({s, i0});
    const int threads = int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), int64_t(tasks.size()))));
    std::vector<std::vector<float>> rows(size_t(threads), std::vector<float>(size_t(2 * dvp_)));
    const bool dsinks = p_.dsinks != nullptr;
    std::vector<double> dsink_part(dsinks ? tasks.size() * size_t(p_.h) : 0, 0.0);
    ThreadPool::instance().parallel_for(
        int64_t(tasks.size()), threads, [&](int64_t t, int worker) {
          const SeqView& sv = seqs_[size_t(tasks[size_t(t)].first)];
          const SeqlenInfo si = SeqlenInfo::make(p_, sv.bidb);
          const void* dob = do_base(sv, si, p_.cu_seqlens_q != nullptr);
          float* o = rows[size_t(worker)].data();
          float* dout = o + dvp_;
          const int i0 = tasks[size_t(t)].second;
          for (int i = i0; i < std::min(sv.seqlen_q, i0 + kRowsPerTask); ++i)
            for (int hq = 0; hq < p_.h; ++hq) {
              k_.load_row(row_ptr(sv.o, i, sv.o_row_stride, hq, sv.o_head_stride), p_.dtype, dv_,
                          o);
              k_.load_row(row_ptr(dob, i, p_.do_row_stride, hq, p_.do_head_stride), p_.dtype, dv_,
                          dout);
              // Eight partial sums: independent adds instead of one chain of dv dependent ones.
              float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
              int x = 0;
              for (; x + 8 <= dv_; x += 8)
                for (int u = 0; u < 8; ++u) part[u] += o[x + u] * dout[x + u];
              for (; x < dv_; ++x) part[0] += o[x] * dout[x];
              const float dsum = ((part[0] + part[1]) + (part[2] + part[3])) +
                                 ((part[4] + part[5]) + (part[6] + part[7]));
              d_all_[size_t(hq) * total_q_ + size_t(sv.row0 + i)] = dsum;
              if (dsinks) {
                const float lse = sv.lse[hq * sv.lse_head_stride + i];
                dsink_part[size_t(t) * p_.h + hq] -= std::exp(double(p_.sinks[hq]) - lse) * dsum;
              }
            }
        });
    if (dsinks) {
      for (int hq = 0; hq < p_.h; ++hq) {
        double sum = 0;
        for (size_t t = 0; t < tasks.size(); ++t) sum += dsink_part[t * p_.h + hq];
        p_.dsinks[hq] = float(sum);
      }
    }
  }

  // dq = scale * (sum over chunks, in chunk order, of the partials), in memory order of dq (row
  // i, all heads): dq rows of one head are a page apart, see backend_fwd.cpp's pack_q. Rows no
  // chunk touched (no visible key) are 0.
  void write_dq(int threads) const {
    std::vector<std::pair<int, int>> tasks;
    for (int s = 0; s < int(seqs_.size()); ++s)
      for (int i0 = 0; i0 < seqs_[size_t(s)].seqlen_q; i0 += kRowsPerTask) tasks.push_back({s, i0});
    std::vector<std::vector<float>> bufs(size_t(threads), std::vector<float>(size_t(2 * dp_)));
    ThreadPool::instance().parallel_for(
        int64_t(tasks.size()), threads, [&](int64_t t, int worker) {
          const int seq = tasks[size_t(t)].first, i0 = tasks[size_t(t)].second;
          const SeqView& sv = seqs_[size_t(seq)];
          const SeqlenInfo si = SeqlenInfo::make(p_, sv.bidb);
          const bool varlen = p_.cu_seqlens_q != nullptr;
          float* acc = bufs[size_t(worker)].data();
          float* old = acc + dp_;
          for (int i = i0; i < std::min(sv.seqlen_q, i0 + kRowsPerTask); ++i) {
            const int mb = i / rows_, r = i % rows_;
            const int rows = std::min(rows_, sv.seqlen_q - mb * rows_);
            for (int hq = 0; hq < p_.h; ++hq) {
              const int hk = hq / g_, c = (hq % g_) * rows + r;
              std::fill(acc, acc + d_, 0.f);
              for (int ch = 0; ch < chunks_; ++ch) {
                if (!touched(ch, seq, hk, mb)) continue;
                const float* part = dq_panel(ch, seq, hk, mb) + size_t(c) * dp_;
                for (int x = 0; x < d_; ++x) acc[x] += part[x];
              }
              k_.scale_row(acc, d_, p_.softmax_scale);
              store_grad(acc, d_, dq_row(sv, si, varlen, i, hq), old);
            }
          }
        });
  }

  // One (key block, query block) tile of the backward.
  void block(const SeqView& sv, const VisibilityMask& mask, int chunk, int seq, int hk, int mb,
             int m0, int rows, int n0, int n, Scratch& w) const {
    const int cols = g_ * rows, ld = round_up(cols, 8);
    // The fp32 panels exist only without bf16 products.
    const float* qr = bf16_ ? nullptr : w.qr.data() + fp32_panel(mb);
    const float* qt = bf16_ ? nullptr : w.qt.data() + fp32_panel(mb);
    const float* dor = bf16_ ? nullptr : w.dor.data() + fp32_panel(mb);
    const float* dot = bf16_ ? nullptr : w.dot.data() + fp32_panel(mb);
    const size_t wo = size_t(mb) * word_stride();
    float* dq = dq_panel(chunk, seq, hk, mb);
    const float* lse = w.lse.data() + size_t(mb) * ld_max_;
    const float* dsum = w.dsum.data() + size_t(mb) * ld_max_;
    float* st = w.st.data();
    float* dpt = w.dpt.data();
    const bool softcap = p_.softcap > 0.f;

    // P^T = exp(S^T - LSE), recomputed exactly as the forward scored it.
    if (bf16_)
      k_.gemm_bf16(n, ld, ceil_div(d_, 2), w.kw.data(), dp_ / 2, 1, w.qtw.data() + wo, ld, st, ld,
                   false);
    else
      k_.gemm(n, ld, d_, w.kb.data(), dp_, 1, qt, ld, st, ld, false);
    if (softcap) std::copy(st, st + size_t(n) * ld, w.raw.data());
    const bool full = mask.tile_fully_visible(m0, m0 + rows, n0, n0 + n);
    if (!softcap && p_.alibi_slopes == nullptr) {
      k_.col_scale_max(st, ld, n, cols, p_.softmax_scale, w.dummy.data());  // max unused
    } else {
      for (int hg = 0; hg < g_; ++hg) {
        const ScoreMod<float> mod = score_mod(sv, hk * g_ + hg);
        for (int j = 0; j < n; ++j) {
          float* sj = st + size_t(j) * ld + hg * rows;
          for (int r = 0; r < rows; ++r) sj[r] = mod.apply(sj[r], m0 + r, n0 + j);
        }
      }
    }
    if (!full) mask_tile(mask, g_, m0, rows, ld, n0, n, st);
    k_.col_exp_sum(st, ld, n, cols, lse, w.dummy.data());

    // dP^T = V_j dO_i^T.
    if (bf16_)
      k_.gemm_bf16(n, ld, ceil_div(dv_, 2), w.vw.data(), dvp_ / 2, 1, w.dotw.data() + wo, ld, dpt,
                   ld, false);
    else
      k_.gemm(n, ld, dv_, w.vb.data(), dvp_, 1, dot, ld, dpt, ld, false);

    // dV_j += (P Z)^T dO_i, and dP *= Z, with Z the dropout keep mask over (1 - p).
    const float* pv = st;
    if (dropout_) {
      float* pdt = w.pdt.data();
      for (int hg = 0; hg < g_; ++hg) {
        const uint64_t bh = uint64_t(sv.bidb) * uint64_t(p_.h) + uint64_t(hk * g_ + hg);
        for (int r = 0; r < rows; ++r) {
          const int c = hg * rows + r;
          Philox4 words{};
          for (int j = 0; j < n; ++j) {
            const int key = n0 + j;
            if (j == 0 || (key & 3) == 0) words = rng_.words(bh, m0 + r, key >> 2);
            const bool keep = words.x[key & 3] < rng_.threshold;
            const size_t e = size_t(j) * ld + c;
            pdt[e] = keep ? st[e] * rp_dropout_ : 0.f;
            dpt[e] = keep ? dpt[e] * rp_dropout_ : 0.f;
          }
        }
      }
      pv = pdt;
    }
    if (bf16_) {
      k_.pack_rows(pv, ld, n, cols, w.prw.data(), ld / 2);
      k_.gemm_bf16(n, dvp_, ceil_div(cols, 2), w.prw.data(), ld / 2, 1, w.dorw.data() + wo, dvp_,
                   w.dv.data(), dvp_, true);
    } else {
      k_.gemm(n, dvp_, cols, pv, ld, 1, dor, dvp_, w.dv.data(), dvp_, true);
    }

    // dS = P * (dP - D), in place of dP^T; softcap: times d softcap(x)/dx = 1 - tanh^2.
    for (int j = 0; j < n; ++j) {
      float* dj = dpt + size_t(j) * ld;
      const float* pj = st + size_t(j) * ld;
      for (int c = 0; c < cols; ++c) dj[c] = pj[c] * (dj[c] - dsum[c]);
    }
    if (softcap) {
      for (int hg = 0; hg < g_; ++hg) {
        const ScoreMod<float> mod = score_mod(sv, hk * g_ + hg);
        for (int j = 0; j < n; ++j)
          for (int r = 0; r < rows; ++r) {
            const size_t e = size_t(j) * ld + hg * rows + r;
            dpt[e] *= mod.dscore(w.raw[e]);
          }
      }
    }

    // dK_j += dS^T Q_i;  dQ_i += dS K_j  (the softmax scale is applied once, at the end).
    if (bf16_) {
      k_.pack_rows(dpt, ld, n, cols, w.prw.data(), ld / 2);
      k_.gemm_bf16(n, dp_, ceil_div(cols, 2), w.prw.data(), ld / 2, 1, w.qrw.data() + wo, dp_,
                   w.dk.data(), dp_, true);
      k_.pack_pairs(dpt, ld, n, cols, w.dsw.data(), ld);
      k_.gemm_bf16(cols, dp_, ceil_div(n, 2), w.dsw.data(), 1, ld, w.kpw.data(), dp_, dq, dp_,
                   true);
    } else {
      k_.gemm(n, dp_, cols, dpt, ld, 1, qr, dp_, w.dk.data(), dp_, true);
      k_.gemm(cols, dp_, n, dpt, 1, ld, w.kb.data(), dp_, dq, dp_, true);
    }
  }

  // Row 0 bases of the gradient/dout tensors of a sequence (head 0).
  const void* do_base(const SeqView& sv, const SeqlenInfo& si, bool varlen) const {
    return static_cast<const char*>(p_.do_ptr) +
           si.q_offset(p_.do_batch_stride, p_.do_row_stride, 0, sv.bidb, 0, 0, varlen) *
               dtype_size(p_.dtype);
  }
  void* dq_row(const SeqView& sv, const SeqlenInfo& si, bool varlen, int i, int hq) const {
    return static_cast<char*>(p_.dq_ptr) +
           si.q_offset(p_.dq_batch_stride, p_.dq_row_stride, p_.dq_head_stride, sv.bidb, i, hq,
                       varlen) *
               dtype_size(grad_t_);
  }
  void* dk_row(const SeqView& sv, const SeqlenInfo& si, bool varlen, int j, int hk) const {
    return static_cast<char*>(p_.dk_ptr) +
           si.k_offset(p_.dk_batch_stride, p_.dk_row_stride, p_.dk_head_stride, sv.bidb, j, hk,
                       varlen) *
               dtype_size(grad_t_);
  }
  void* dv_row(const SeqView& sv, const SeqlenInfo& si, bool varlen, int j, int hk) const {
    return static_cast<char*>(p_.dv_ptr) +
           si.k_offset(p_.dv_batch_stride, p_.dv_row_stride, p_.dv_head_stride, sv.bidb, j, hk,
                       varlen) *
               dtype_size(grad_t_);
  }

  const BwdParams& p_;
  const Kernels& k_;
  const int g_, d_, dp_, dv_, dvp_, bn_, rows_, ld_max_;
  const DType grad_t_;  // element type of dq/dk/dv
  const bool bf16_;     // block products on bf16 operands
  bool dropout_ = false;
  DropoutRng rng_;
  float rp_dropout_ = 1.f;
  std::vector<SeqView> seqs_;
  int chunks_ = 1;
  // The call's large buffers, from the workspace.
  enum { kSlotDq, kSlotTouched, kSlotD };
  Workspace ws_;
  std::vector<int64_t> mb_base_;  // per sequence: its first (kv head, query block) panel
  int64_t panels_ = 0;            // panels per chunk
  float* dq_part_ = nullptr;      // [chunk][panel][ld_max][dp] dQ partials (unscaled)
  uint8_t* touched_ = nullptr;    // [chunk][panel]: the chunk wrote that partial
  int64_t total_q_ = 0;           // rows of q over the batch
  float* d_all_ = nullptr;        // [h][total_q] D = rowsum(dO * O)
};

}  // namespace

void run_backward(const BwdParams& p) {
  Backward bwd(p);
  bwd.run();
}

}  // namespace flashattn::cpu
