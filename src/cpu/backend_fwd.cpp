// The FlashAttention-2 forward on the CPU (Dao, "FlashAttention-2", 2023, Algorithm 1).
//
// Work items. One item is a tile of query rows [m0, m0 + rows) of one sequence for ALL the
// h/h_k query heads that share kv head hk (stacked, like FlashAttention's pack-GQA), times one
// split of the key range. rows = block_m / (h/h_k), so every item has about block_m
// (row, head) pairs whatever the GQA ratio (block sizes come from the kernel table,
// backend_common.h). Items run on the thread pool; each is independent and deterministic, so
// results do not depend on scheduling.
//
// Per item, in the paper's notation (i indexes query rows, j key blocks):
//   Q_i^T panel (d x cols)                    built for every item before they run (pack_q)
//   m_i = -inf, l_i = 0, O_i = 0              running max, running sum, unnormalized output
//   for each key block K_j, V_j in the item's visible key range (VisibilityMask::key_range):
//     K_j in the products' layout, once for all stacked heads (packed per call, or here)
//     S_ij^T = K_j Q_i^T                      one gemm, keys x (row, head) columns
//     scale/softcap/ALiBi (ScoreMod) and the mask on tiles that are not fully visible
//     m_new = max(m_i, colmax S_ij^T);  P = exp(S - m_new);  l_i = e^(m_i - m_new) l_i + colsum P
//     O_i = diag(e^(m_i - m_new)) O_i + P^T V_j   (dropout zeroes dropped P entries first)
//   O_i / l_i (times 1/(1-p) with dropout), LSE_i = m_i + log l_i into fp32 partials, which
//   write_outputs() stores (in memory order, merging splits); empty rows: 0 and +inf.
//   With sinks the sink joins at this last step: LSE_i = logaddexp(m_i + log l_i, sink_h) and
//   O_i = O_i e^(m_i - LSE_i), so the main loop is the same with or without them; an empty row
//   gets O_i = 0 and LSE_i = sink_h.
// Q and K have head dim d, V and O dv (padded to dp and dvp in the fp32 buffers).
//
// Why scores are transposed (keys x queries): the softmax statistics of a query are then a
// column, and the micro-kernels update 8 (AVX2) or 16 (AVX-512) queries' max/sum per register
// with vertical ops only (no horizontal reductions), while K rows are used as the gemm's A
// operand directly, with no transposition of each key block. Q is transposed once instead.
//
// K and V. Every item of a sequence reads all of its kv head's visible keys, so when a sequence
// has kPackMinBlocks query blocks or more, K and V are first converted, once per call, into the
// layout the products read (pack_kv): fp32 rows, or bf16 words, contiguous per (sequence, kv
// head). Read in place, rows h * d elements apart (4 KiB at h = 16, d = 128, bf16) each sit in
// their own page and fall into a few L2 sets, and miss in every item. Measured (2 threads, Zen 4,
// h = 16, d = 128, GFLOP/s packed vs in place): s = 2048 fp32 176 vs 153, bf16 320 vs 275;
// s = 1024 fp32 164 vs 154, bf16 288 vs 243; s = 512 (6 blocks, best of 3) fp32 153 vs 151, bf16
// 258 vs 250. Sequences with fewer blocks (decode, short prompts) convert their keys in the item
// instead.
//
// bf16 calls on a table with bf16 products (use_bf16_products) run both block products on bf16
// operands with fp32 accumulation: K and Q are exact in bf16 (a rotated KV-cache q is fp32 and
// keeps the fp32 product for S), P is rounded to bf16 for P V as on the GPU; the softmax
// statistics stay fp32.
//
// Split-KV: with num_splits > 1 each item covers one chunk of key blocks and writes an fp32
// partial (O_s normalized, LSE_s; empty chunk: LSE_s = -inf); a merge pass combines them exactly
// with the LSE rule of common/lse_merge.h (the same math as mha_combine), the sink joining there
// as one more partial with LSE = sink_h and no output.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/lse_merge.h"
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

// Split-KV heuristic (num_splits == 0): split only when there are fewer than kItemsPerThread
// items per thread (decode, small batch), and never below kMinBlocksPerSplit key blocks per
// split, so the partial outputs and the merge stay a small fraction of the work.
constexpr int kItemsPerThread = 4;
constexpr int kMinBlocksPerSplit = 4;
constexpr int kMaxSplits = 128;
// Query blocks per kv head from which K and V are packed once per call (see the top comment).
constexpr int kPackMinBlocks = 4;
// Rows (pack_q, write_outputs) and keys (pack_kv) per task of the passes around the items. The
// passes handed out a task per block of 96 rows or keys, 6 tasks at s = 512: too few for 16
// threads. 16 rows of one head are 64 bytes of a Q panel, a whole cache line, so tasks run
// side by side do not write the same lines; 16 keys keep the bf16 V key pairs within a task.
constexpr int kRowsPerTask = 16;
constexpr int kKeysPerTask = 16;

struct WorkItem {
  int seq = 0;
  int hk = 0;
  int m0 = 0;
  int split = 0;
};

// K_j and V_j as the products read them: K rows in fp32 ([n][dp]) or bf16 words ([n][dp/2]),
// V rows in fp32 ([n][dvp]) or key pairs of bf16 words ([ceil(n/2)][dvp]). Exactly one pointer
// of each pair is set.
struct KvBlock {
  const float* kf = nullptr;
  const uint32_t* kw = nullptr;
  const float* vf = nullptr;
  const uint32_t* vw = nullptr;
};

// One worker's buffers (WorkerScratch: each worker sets up its own, zero-filled, on first use).
struct Scratch {
  std::vector<float> kb;     // [bn][dp]     K_j in fp32 (sequences whose keys are not packed)
  std::vector<float> vb;     // [bn][dvp]    V_j in fp32, padding columns zero
  std::vector<float> st;     // [bn][ld]     S_ij^T, then P_ij^T in place
  std::vector<float> o;      // [cols][dvp]  O_i (unnormalized)
  std::vector<float> m, m_prev, l, ref, row;
  // bf16 products only (32-bit words = two bf16 of consecutive reduction indices):
  std::vector<uint32_t> kw;  // [bn][dp/2]   K_j rows, dims (2x, 2x + 1) per word
  std::vector<uint32_t> pw;  // [bn/2][ld]   P_ij^T, keys (2q, 2q + 1) per word
  std::vector<uint32_t> vw;  // [bn/2][dvp]  V_j, keys (2q, 2q + 1) per word
  std::vector<uint32_t> qrow;  // [dp/2]     one bf16 q row, zero past d
};

class Forward {
 public:
  Forward(const FwdParams& p, const std::vector<SeqView>& seqs, int threads)
      : p_(p),
        seqs_(seqs),
        k_(active_kernels()),
        g_(p.h / p.h_k),
        d_(p.d),
        dp_(padded_dim(p.d)),
        dv_(p.dv),
        dvp_(padded_dim(p.dv)),
        bn_(k_.block_n),
        rows_(std::max(1, k_.block_m / g_)),
        max_cols_(g_ * rows_),
        max_ld_(round_up(max_cols_, 8)),
        threads_(threads) {
    plain_ = p.softcap <= 0.f && p.alibi_slopes == nullptr;
    dropout_ = p.p_dropout > 0.f;
    has_sinks_ = p.sinks != nullptr;
    rng_.seed = p.philox_seed;
    rng_.offset = p.philox_offset;
    rng_.threshold = dropout_threshold(p.p_dropout);
    rp_dropout_ = dropout_ ? 1.f / (1.f - p.p_dropout) : 1.f;
    splits_ = choose_num_splits(p, seqs, threads, k_);
    total_rows_ = total_q_rows(p, seqs);
    bf16_pv_ = use_bf16_products(p.dtype, k_);
    bf16_s_ = bf16_pv_ && std::all_of(seqs.begin(), seqs.end(), [](const SeqView& sv) {
      return sv.q_dtype == DType::kBFloat16;
    });
  }

  void run() {
    std::vector<WorkItem> items;
    // Items of one (sequence, kv head) are consecutive, so the threads share that head's K/V
    // in cache. Within it, last row tiles first: under a causal mask they see the most keys,
    // and starting long items early balances the pool's tail.
    for (int s = 0; s < int(seqs_.size()); ++s)
      for (int hk = 0; hk < p_.h_k; ++hk)
        for (int m0 = round_up(seqs_[s].seqlen_q, rows_) - rows_; m0 >= 0; m0 -= rows_)
          for (int sp = 0; sp < splits_; ++sp) items.push_back({s, hk, m0, sp});
    // Every partial row and LSE is written by its item (empty ranges write O = 0, LSE = -inf).
    o_part_ = ws_.get<float>(kSlotO, size_t(splits_) * total_rows_ * p_.h * dvp_);
    lse_part_ = ws_.get<float>(kSlotLse, size_t(splits_) * total_rows_ * p_.h);
    // No more workers (and scratch buffers) than items.
    threads_ = int(std::max<int64_t>(1, std::min<int64_t>(threads_, int64_t(items.size()))));
    WorkerScratch<Scratch> scratch(threads_);
    pack_q(scratch);
    pack_kv();
    ThreadPool::instance().parallel_for(int64_t(items.size()), threads_,
                                        [&](int64_t i, int worker) {
                                          if (Scratch* w = scratch_of(scratch, worker))
                                            run_item(items[size_t(i)], *w);
                                        });
    scratch.check();
    write_outputs();
    if (p_.p_ptr != nullptr) write_probs(scratch);
  }

 private:
  Scratch* scratch_of(WorkerScratch<Scratch>& scratch, int worker) const {
    return scratch.get(worker, [this](Scratch& w) { allocate(w); });
  }
  void allocate(Scratch& w) const {
    w.kb.assign(size_t(bn_) * dp_, 0.f);
    w.vb.assign(size_t(bn_) * dvp_, 0.f);
    w.st.assign(size_t(bn_) * max_ld_, 0.f);
    w.o.assign(size_t(max_ld_) * dvp_, 0.f);
    for (auto* v : {&w.m, &w.m_prev, &w.l, &w.ref}) v->assign(size_t(max_ld_), 0.f);
    w.row.assign(size_t(dp_), 0.f);
    if (bf16_s_) {
      w.kw.assign(size_t(bn_) * dp_ / 2, 0);  // padding stays zero: rows copy d values
      w.qrow.assign(size_t(dp_ / 2), 0);
    }
    if (bf16_pv_) {
      w.pw.assign(size_t(ceil_div(bn_, 2)) * max_ld_, 0);
      w.vw.assign(size_t(ceil_div(bn_, 2)) * dvp_, 0);
    }
  }

  int m_blocks(int seq) const { return ceil_div(seqs_[size_t(seq)].seqlen_q, rows_); }
  // Q_i^T of query block mb of (seq, hk): column c = hg * rows + r, leading dimension
  // ld = round_up(g * rows, 8), padding columns zero. fp32 [d][ld], or with bf16 products words
  // of dims (2x, 2x + 1) [dp/2][ld].
  size_t q_panel(int seq, int hk, int mb) const {
    const size_t slot = size_t(d_) * max_ld_;  // >= ceil(d/2) * max_ld words too
    return (size_t(q_base_[size_t(seq)]) + size_t(hk) * m_blocks(seq) + mb) * slot;
  }

  // Q_i^T of every item, built before the items run in one pass over q in memory order (row i,
  // all heads): q rows of one head are h * d elements apart, each in its own page, and reading
  // them per item (one head, 96 rows) measured memory-latency bound (10 % of a bf16 forward on
  // Zen 4 at h = 16), while the memory-order pass streams whole pages. A task is kRowsPerTask
  // rows of one query block; the first task of a block also zeroes the block's padding columns
  // (only a sequence's last block has them), so no serial fill of the panels comes first.
  void pack_q(WorkerScratch<Scratch>& scratch) {
    q_base_.assign(seqs_.size(), 0);
    int64_t panels = 0;
    for (size_t s = 0; s < seqs_.size(); ++s) {
      q_base_[s] = panels;
      panels += int64_t(p_.h_k) * m_blocks(int(s));
    }
    if (bf16_s_)
      qw_ = ws_.get<uint32_t>(kSlotQ, size_t(panels) * d_ * max_ld_);
    else
      qt_ = ws_.get<float>(kSlotQ, size_t(panels) * d_ * max_ld_);
    struct Task {
      int seq, mb, r0;
    };
    std::vector<Task> tasks;
    for (int s = 0; s < int(seqs_.size()); ++s)
      for (int mb = 0; mb < m_blocks(s); ++mb)
        for (int r0 = 0; r0 < std::min(rows_, seqs_[size_t(s)].seqlen_q - mb * rows_);
             r0 += kRowsPerTask)
          tasks.push_back({s, mb, r0});
    const int words = ceil_div(d_, 2);
    ThreadPool::instance().parallel_for(
        int64_t(tasks.size()), threads_, [&](int64_t t, int worker) {
          Scratch* ws = scratch_of(scratch, worker);
          if (ws == nullptr) return;
          Scratch& w = *ws;
          const int seq = tasks[size_t(t)].seq, mb = tasks[size_t(t)].mb;
          const SeqView& sv = seqs_[size_t(seq)];
          const int m0 = mb * rows_, rows = std::min(rows_, sv.seqlen_q - m0);
          const int cols = g_ * rows, ld = round_up(cols, 8);
          const int r0 = tasks[size_t(t)].r0, r1 = std::min(rows, r0 + kRowsPerTask);
          if (r0 == 0 && cols < ld)
            for (int hk = 0; hk < p_.h_k; ++hk)
              for (int x = 0; x < (bf16_s_ ? words : d_); ++x) {
                if (bf16_s_) {
                  uint32_t* dst = qw_ + q_panel(seq, hk, mb) + size_t(x) * ld;
                  std::fill(dst + cols, dst + ld, 0u);
                } else {
                  float* dst = qt_ + q_panel(seq, hk, mb) + size_t(x) * ld;
                  std::fill(dst + cols, dst + ld, 0.f);
                }
              }
          for (int r = r0; r < r1; ++r)
            for (int hq = 0; hq < p_.h; ++hq) {
              const int hk = hq / g_, c = (hq % g_) * rows + r;
              const void* src = q_row(sv, m0 + r, hq);
              if (bf16_s_) {
                // The words of a bf16 row are already (dim 2x, dim 2x + 1) pairs.
                std::memcpy(w.qrow.data(), src, size_t(d_) * 2);
                uint32_t* dst = qw_ + q_panel(seq, hk, mb);
                for (int x = 0; x < words; ++x) dst[size_t(x) * ld + c] = w.qrow[size_t(x)];
              } else {
                k_.load_row(src, sv.q_dtype, d_, w.row.data());
                float* dst = qt_ + q_panel(seq, hk, mb);
                for (int x = 0; x < d_; ++x) dst[size_t(x) * ld + c] = w.row[size_t(x)];
              }
            }
        });
    scratch.check();
  }

  // K and V of the sequences whose keys several items read, converted once (see the header
  // comment) in one pass in memory order (key j, all kv heads), for the reason given at pack_q.
  // Per (sequence, kv head): round_up(seqlen_k, 2) key rows from head_base().
  void pack_kv() {
    key_base_.assign(seqs_.size(), -1);
    int64_t total = 0;
    for (size_t s = 0; s < seqs_.size(); ++s)
      if (m_blocks(int(s)) >= kPackMinBlocks) {
        key_base_[s] = total;
        total += int64_t(p_.h_k) * round_up(seqs_[s].seqlen_k, 2);
      }
    if (total == 0) return;
    // Rows are written whole below (padding dims included), so no fill is needed.
    if (bf16_s_)
      kw_ = ws_.get<uint32_t>(kSlotK, size_t(total) * dp_ / 2);
    else
      kf_ = ws_.get<float>(kSlotK, size_t(total) * dp_);
    if (bf16_pv_)
      vw_ = ws_.get<uint32_t>(kSlotV, size_t(total / 2) * dvp_);
    else
      vf_ = ws_.get<float>(kSlotV, size_t(total) * dvp_);
    std::vector<std::pair<int, int>> tasks;  // (seq, n0): kKeysPerTask keys of every kv head
    for (int s = 0; s < int(seqs_.size()); ++s)
      if (key_base_[size_t(s)] >= 0)
        for (int n0 = 0; n0 < seqs_[size_t(s)].seqlen_k; n0 += kKeysPerTask)
          tasks.push_back({s, n0});
    ThreadPool::instance().parallel_for(int64_t(tasks.size()), threads_, [&](int64_t t, int) {
      const int seq = tasks[size_t(t)].first, n0 = tasks[size_t(t)].second;
      const SeqView& sv = seqs_[size_t(seq)];
      const int n = std::min(kKeysPerTask, sv.seqlen_k - n0);
      for (int j = 0; j < n; ++j)
        for (int hk = 0; hk < p_.h_k; ++hk) {
          const int64_t r = head_base(seq, hk) + n0 + j;
          const void* kr = sv.keys.k_row(n0 + j, hk);
          if (bf16_s_) {
            uint32_t* dst = kw_ + size_t(r) * dp_ / 2;
            std::fill(dst, dst + dp_ / 2, 0u);
            std::memcpy(dst, kr, size_t(d_) * 2);
          } else {
            float* dst = kf_ + size_t(r) * dp_;
            std::fill(dst + d_, dst + dp_, 0.f);
            k_.load_row(kr, p_.dtype, d_, dst);
          }
          if (!bf16_pv_) {
            float* dst = vf_ + size_t(r) * dvp_;
            std::fill(dst + dv_, dst + dvp_, 0.f);
            k_.load_row(sv.keys.v_row(n0 + j, hk), p_.dtype, dv_, dst);
          } else if (j % 2 == 0) {
            // Keys (j, j + 1) of a bf16 V into words; head_base and n0 are even, so r is too.
            const uint16_t* v0 = static_cast<const uint16_t*>(sv.keys.v_row(n0 + j, hk));
            const uint16_t* v1 =
                j + 1 < n ? static_cast<const uint16_t*>(sv.keys.v_row(n0 + j + 1, hk)) : nullptr;
            uint32_t* dst = vw_ + size_t(r / 2) * dvp_;
            for (int x = 0; x < dv_; ++x)
              dst[x] = uint32_t(v0[x]) | (v1 != nullptr ? uint32_t(v1[x]) << 16 : 0u);
            std::fill(dst + dv_, dst + dvp_, 0u);
          }
        }
    });
  }
  int64_t head_base(int seq, int hk) const {
    return key_base_[size_t(seq)] + int64_t(hk) * round_up(seqs_[size_t(seq)].seqlen_k, 2);
  }

  // K_j of keys [n0, n0 + n): from the packed buffers, or converted into w (n0 must be even for
  // packed bf16 V pairs: run_item aligns its first block).
  KvBlock k_block(int seq, int hk, int n0, int n, Scratch& w) const {
    KvBlock b;
    const SeqView& sv = seqs_[size_t(seq)];
    if (key_base_[size_t(seq)] >= 0) {
      const int64_t r = head_base(seq, hk) + n0;
      if (bf16_s_)
        b.kw = kw_ + size_t(r) * dp_ / 2;
      else
        b.kf = kf_ + size_t(r) * dp_;
      return b;
    }
    // K_j is copied (converted) into a dense block even when it is in the right type already:
    // in place, rows h * d elements apart alias in L1/L2 sets.
    const int bytes = d_ * dtype_size(p_.dtype);
    for (int j = 0; j < n; ++j) {
      if (j + kPrefetchRows < n) prefetch_row(sv.keys.k_row(n0 + j + kPrefetchRows, hk), bytes);
      const void* kr = sv.keys.k_row(n0 + j, hk);
      if (bf16_s_)
        std::memcpy(w.kw.data() + size_t(j) * dp_ / 2, kr, size_t(d_) * 2);
      else
        k_.load_row(kr, p_.dtype, d_, w.kb.data() + size_t(j) * dp_);
    }
    if (bf16_s_)
      b.kw = w.kw.data();
    else
      b.kf = w.kb.data();
    return b;
  }
  // V_j, likewise.
  void v_block(int seq, int hk, int n0, int n, Scratch& w, KvBlock* b) const {
    const SeqView& sv = seqs_[size_t(seq)];
    if (key_base_[size_t(seq)] >= 0) {
      const int64_t r = head_base(seq, hk) + n0;
      if (bf16_pv_)
        b->vw = vw_ + size_t(r / 2) * dvp_;
      else
        b->vf = vf_ + size_t(r) * dvp_;
      return;
    }
    // V_j into the zero-padded fp32 block (the gemm's B operand needs rows of dvp floats).
    const int bytes = dv_ * dtype_size(p_.dtype);
    for (int j = 0; j < n; ++j) {
      if (j + kPrefetchRows < n) prefetch_row(sv.keys.v_row(n0 + j + kPrefetchRows, hk), bytes);
      k_.load_row(sv.keys.v_row(n0 + j, hk), p_.dtype, dv_, w.vb.data() + size_t(j) * dvp_);
    }
    if (bf16_pv_) {
      k_.pack_pairs(w.vb.data(), dvp_, n, dvp_, w.vw.data(), dvp_);
      b->vw = w.vw.data();
    } else {
      b->vf = w.vb.data();
    }
  }

  const void* q_row(const SeqView& sv, int i, int hq) const {
    return static_cast<const char*>(sv.q) +
           (int64_t(i) * sv.q_row_stride + int64_t(hq) * sv.q_head_stride) * dtype_size(sv.q_dtype);
  }
  void* o_row(const SeqView& sv, int i, int hq) const {
    return static_cast<char*>(sv.o) +
           (int64_t(i) * sv.o_row_stride + int64_t(hq) * sv.o_head_stride) * dtype_size(p_.dtype);
  }
  // The sink of query head hq as an LSE term: -inf (the identity of logaddexp) without sinks.
  float sink(int hq) const { return p_.sinks != nullptr ? p_.sinks[hq] : -kInf; }
  VisibilityMask mask_of(const SeqView& sv) const {
    return VisibilityMask::make(sv.seqlen_q, sv.seqlen_k, p_.is_causal, p_.window_size_left,
                                p_.window_size_right);
  }
  // Keys [*n_begin, *n_end) of split `split` of a sequence with seqlen_k keys.
  void split_range(int seqlen_k, int split, int* n_begin, int* n_end) const {
    const int blocks_per_split = ceil_div(ceil_div(seqlen_k, bn_), splits_);
    *n_begin = std::min(seqlen_k, split * blocks_per_split * bn_);
    *n_end = std::min(seqlen_k, (split + 1) * blocks_per_split * bn_);
  }

  // S^T = K_j Q_i^T for keys [n0, n0 + n) into w.st (row j = key n0 + j, column c = stacked
  // query row). On tiles that need it, the score modifiers and the mask are applied too, leaving
  // final scores (or -inf). Returns true on the fast path (no softcap/ALiBi, tile fully
  // visible): then only the raw product is there and the caller applies the scale, fused into
  // its column-max pass.
  bool scores(const SeqView& sv, const VisibilityMask& mask, const KvBlock& kv, size_t panel,
              int hk, int m0, int rows, int ld, int n0, int n, Scratch& w) const {
    if (kv.kw != nullptr)
      k_.gemm_bf16(n, ld, ceil_div(d_, 2), kv.kw, dp_ / 2, 1, qw_ + panel, ld,
                   w.st.data(), ld, false);
    else
      k_.gemm(n, ld, d_, kv.kf, dp_, 1, qt_ + panel, ld, w.st.data(), ld, false);
    const bool full = mask.tile_fully_visible(m0, m0 + rows, n0, n0 + n);
    if (plain_ && full) return true;
    if (plain_) {
      // Scale only (the running max below is a throw-away; the caller takes the real one).
      std::fill(w.ref.begin(), w.ref.end(), -kInf);
      k_.col_scale_max(w.st.data(), ld, n, g_ * rows, p_.softmax_scale, w.ref.data());
    } else {
      for (int hg = 0; hg < g_; ++hg) {
        const ScoreMod<float> mod =
            ScoreMod<float>::of(p_, sv.bidb, hk * g_ + hg, sv.seqlen_q, sv.seqlen_k);
        for (int j = 0; j < n; ++j) {
          float* sj = w.st.data() + size_t(j) * ld + hg * rows;
          for (int r = 0; r < rows; ++r) sj[r] = mod.apply(sj[r], m0 + r, n0 + j);
        }
      }
    }
    if (!full) mask_tile(mask, g_, m0, rows, ld, n0, n, w.st.data());
    return false;
  }

  // Zero the dropped entries of P^T (keys [n0, n0 + n) x stacked rows), with the Philox counter
  // layout of common/philox.h: one 4-word draw serves 4 consecutive keys.
  void apply_dropout(const SeqView& sv, int hk, int m0, int rows, int ld, int n0, int n,
                     float* pt) const {
    for (int hg = 0; hg < g_; ++hg) {
      const uint64_t bh = uint64_t(sv.bidb) * uint64_t(p_.h) + uint64_t(hk * g_ + hg);
      for (int r = 0; r < rows; ++r) {
        const int c = hg * rows + r;
        Philox4 words{};
        for (int j = 0; j < n; ++j) {
          const int key = n0 + j;
          if (j == 0 || (key & 3) == 0) words = rng_.words(bh, m0 + r, key >> 2);
          if (words.x[key & 3] >= rng_.threshold) pt[size_t(j) * ld + c] = 0.f;
        }
      }
    }
  }

  void run_item(const WorkItem& it, Scratch& w) {
    const SeqView& sv = seqs_[size_t(it.seq)];
    const int m0 = it.m0, rows = std::min(rows_, sv.seqlen_q - m0);
    const int cols = g_ * rows, ld = round_up(cols, 8);
    const VisibilityMask mask = mask_of(sv);
    const size_t panel = q_panel(it.seq, it.hk, m0 / rows_);

    int n_begin, n_end;
    mask.key_range(m0, m0 + rows, &n_begin, &n_end);
    if (splits_ > 1) {
      int s_begin, s_end;
      split_range(sv.seqlen_k, it.split, &s_begin, &s_end);
      n_begin = std::max(n_begin, s_begin);
      n_end = std::min(n_end, s_end);
    }
    // Packed V pairs start at even keys; an extra key in front is masked like any other.
    if (key_base_[size_t(it.seq)] >= 0 && bf16_pv_ && n_begin < n_end) n_begin &= ~1;

    float* m = w.m.data();
    float* l = w.l.data();
    float* o = w.o.data();
    std::fill(m, m + cols, -kInf);
    std::fill(l, l + cols, 0.f);
    std::fill(o, o + size_t(cols) * dvp_, 0.f);

    for (int n0 = n_begin; n0 < n_end; n0 += bn_) {
      const int n = std::min(bn_, n_end - n0);
      KvBlock kv = k_block(it.seq, it.hk, n0, n, w);
      const bool fast = scores(sv, mask, kv, panel, it.hk, m0, rows, ld, n0, n, w);
      float* st = w.st.data();
      std::copy(m, m + cols, w.m_prev.data());
      k_.col_scale_max(st, ld, n, cols, fast ? p_.softmax_scale : 1.f, m);

      // Online softmax: rescale l_i and O_i by e^(m_old - m_new) where the max grew. A column
      // that has seen no visible key yet keeps m = -inf; it uses 0 as its reference so its
      // (all -inf) scores exponentiate to exact zeros instead of NaN.
      for (int c = 0; c < cols; ++c) {
        w.ref[size_t(c)] = m[c] == -kInf ? 0.f : m[c];
        if (m[c] != w.m_prev[size_t(c)]) {
          const float alpha = std::exp(w.m_prev[size_t(c)] - m[c]);
          l[c] *= alpha;
          k_.scale_row(o + size_t(c) * dvp_, dv_, alpha);
        }
      }
      // P = exp(S - m); l_i includes dropped entries. With bf16 products and no dropout, P goes
      // straight into the key-pair words of the P V product; an odd n pairs the last key with a
      // zero P row (its V partner may be the next key).
      const bool pairs_now = bf16_pv_ && !dropout_;
      if (pairs_now)
        k_.col_exp_sum_pairs(st, ld, n, cols, w.ref.data(), l, w.pw.data(), ld);
      else
        k_.col_exp_sum(st, ld, n, cols, w.ref.data(), l);
      if (dropout_) apply_dropout(sv, it.hk, m0, rows, ld, n0, n, st);

      // O_i += P_ij V_j, with P read through the transposed tile (A(c, j) = st[j * ld + c]).
      v_block(it.seq, it.hk, n0, n, w, &kv);
      if (kv.vw != nullptr) {
        if (!pairs_now) k_.pack_pairs(st, ld, n, cols, w.pw.data(), ld);
        k_.gemm_bf16(cols, dvp_, ceil_div(n, 2), w.pw.data(), 1, ld, kv.vw, dvp_, o, dvp_, true);
      } else {
        k_.gemm(cols, dvp_, n, st, 1, ld, kv.vf, dvp_, o, dvp_, true);
      }
    }

    // O_i / l_i and LSE_i into this split's fp32 partial; write_outputs() stores them.
    for (int hg = 0; hg < g_; ++hg) {
      const int hq = it.hk * g_ + hg;
      for (int r = 0; r < rows; ++r) {
        const int c = hg * rows + r, i = m0 + r;
        float lse = l[c] > 0.f ? m[c] + std::log(l[c]) : -kInf;
        float inv = l[c] > 0.f ? rp_dropout_ / l[c] : 0.f;
        // The sink joins whole rows only; a split's partial leaves it to the merge. O_i holds
        // sum_j e^(s_ij - m_i) v_j, so dividing by e^(LSE_i - m_i) normalizes it over the keys
        // and the sink (m_i - LSE_i <= -log l_i <= 0: no overflow). A sink of -inf is skipped,
        // so it gives the bits of no sink.
        if (has_sinks_ && splits_ == 1 && sink(hq) != -kInf) {
          lse = logaddexp(lse, sink(hq));
          if (l[c] > 0.f) inv = rp_dropout_ * std::exp(m[c] - lse);
        }
        float* oc = o + size_t(c) * dvp_;
        k_.scale_row(oc, dv_, inv);
        std::copy(oc, oc + dv_, part_o(it.split, sv.row0 + i, hq));
        part_lse(it.split, sv.row0 + i, hq) = lse;
      }
    }
  }

  float* part_o(int split, int64_t row, int hq) {
    return o_part_ + ((size_t(split) * total_rows_ + row) * p_.h + hq) * dvp_;
  }
  float& part_lse(int split, int64_t row, int hq) {
    return lse_part_[(size_t(split) * total_rows_ + row) * p_.h + hq];
  }

  // o and lse from the partials, in memory order of o (the reason is at pack_q): one split is
  // stored as it is (its sink already joined in run_item); several merge as
  // O = sum_s e^(LSE_s - LSE) O_s with LSE = logaddexp(sink_h, logsumexp_s LSE_s), empty splits
  // weighing 0, and so does the sink (it has no output).
  void write_outputs() {
    std::vector<std::pair<int, int>> tasks;
    for (int s = 0; s < int(seqs_.size()); ++s)
      for (int i0 = 0; i0 < seqs_[size_t(s)].seqlen_q; i0 += kRowsPerTask) tasks.push_back({s, i0});
    std::vector<std::vector<float>> rows(size_t(std::max(1, threads_)),
                                         std::vector<float>(size_t(dvp_)));
    ThreadPool::instance().parallel_for(
        int64_t(tasks.size()), threads_, [&](int64_t t, int worker) {
          const SeqView& sv = seqs_[size_t(tasks[size_t(t)].first)];
          const int i0 = tasks[size_t(t)].second;
          float* acc = rows[size_t(worker)].data();
          for (int i = i0; i < std::min(sv.seqlen_q, i0 + kRowsPerTask); ++i)
            for (int hq = 0; hq < p_.h; ++hq) {
              const int64_t row = sv.row0 + i;
              float lse = part_lse(0, row, hq);
              const float* out = part_o(0, row, hq);
              if (splits_ > 1) {
                lse = logaddexp(sink(hq), lse);
                for (int s = 1; s < splits_; ++s) lse = logaddexp(lse, part_lse(s, row, hq));
                std::fill(acc, acc + dv_, 0.f);
                for (int s = 0; s < splits_; ++s) {
                  const float wgt = merge_weight(part_lse(s, row, hq), lse);
                  if (wgt == 0.f) continue;
                  const float* os = part_o(s, row, hq);
                  for (int x = 0; x < dv_; ++x) acc[x] += wgt * os[x];
                }
                out = acc;
              }
              k_.store_row(out, p_.dtype, dv_, o_row(sv, i, hq));
              if (sv.lse != nullptr) sv.lse[hq * sv.lse_head_stride + i] = finalize_lse(lse);
            }
        });
  }

  // p_ptr (testing aid, dense): P = exp(S - LSE) from the final LSE, negated where dropped,
  // 0 where invisible. A second pass over the same tiles, so the main loop stays lean.
  void write_probs(WorkerScratch<Scratch>& scratch) {
    std::vector<WorkItem> items;
    for (int s = 0; s < int(seqs_.size()); ++s)
      for (int m0 = 0; m0 < seqs_[size_t(s)].seqlen_q; m0 += rows_)
        for (int hk = 0; hk < p_.h_k; ++hk) items.push_back({s, hk, m0, 0});
    ThreadPool::instance().parallel_for(
        int64_t(items.size()), threads_, [&](int64_t idx, int worker) {
          const WorkItem& it = items[size_t(idx)];
          Scratch* ws = scratch_of(scratch, worker);
          if (ws == nullptr) return;
          Scratch& w = *ws;
          const SeqView& sv = seqs_[size_t(it.seq)];
          const int m0 = it.m0, rows = std::min(rows_, sv.seqlen_q - m0);
          const int ld = round_up(g_ * rows, 8);
          const VisibilityMask mask = mask_of(sv);
          const int64_t row_len = p_.seqlen_k;
          const size_t panel = q_panel(it.seq, it.hk, m0 / rows_);
          // Start with zeros everywhere in these rows, then fill the visible range.
          for (int hg = 0; hg < g_; ++hg)
            for (int r = 0; r < rows; ++r) {
              const int64_t base = ((int64_t(sv.bidb) * p_.h + it.hk * g_ + hg) * p_.seqlen_q + m0 + r) * row_len;
              for (int64_t x = 0; x < row_len; ++x) store_from_float(p_.p_ptr, p_.dtype, base + x, 0.f);
            }
          int n_begin, n_end;
          mask.key_range(m0, m0 + rows, &n_begin, &n_end);
          for (int n0 = n_begin; n0 < n_end; n0 += bn_) {
            const int n = std::min(bn_, n_end - n0);
            const KvBlock kv = k_block(it.seq, it.hk, n0, n, w);
            const bool fast = scores(sv, mask, kv, panel, it.hk, m0, rows, ld, n0, n, w);
            for (int hg = 0; hg < g_; ++hg) {
              const int hq = it.hk * g_ + hg;
              const uint64_t bh = uint64_t(sv.bidb) * uint64_t(p_.h) + uint64_t(hq);
              for (int r = 0; r < rows; ++r) {
                const int i = m0 + r, c = hg * rows + r;
                const float lse = sv.lse[hq * sv.lse_head_stride + i];
                const int64_t base = ((int64_t(sv.bidb) * p_.h + hq) * p_.seqlen_q + i) * row_len;
                for (int j = 0; j < n; ++j) {
                  const int key = n0 + j;
                  float s = w.st[size_t(j) * ld + c];
                  if (fast) s *= p_.softmax_scale;
                  float prob = (s == -kInf || lse == kInf) ? 0.f : std::exp(s - lse);
                  if (dropout_ && !rng_.keep(bh, i, key)) prob = -prob;
                  store_from_float(p_.p_ptr, p_.dtype, base + key, prob);
                }
              }
            }
          }
        });
    scratch.check();
  }

  const FwdParams& p_;
  const std::vector<SeqView>& seqs_;
  const Kernels& k_;
  const int g_, d_, dp_, dv_, dvp_, bn_, rows_, max_cols_, max_ld_;
  int threads_;
  bool plain_ = true, dropout_ = false, has_sinks_ = false;
  bool bf16_s_ = false, bf16_pv_ = false;  // S = Q K^T, O += P V on bf16 operands
  DropoutRng rng_;
  float rp_dropout_ = 1.f;
  int splits_ = 1;
  int64_t total_rows_ = 0;
  // The call's large buffers, from the workspace (slots below).
  enum { kSlotQ, kSlotK, kSlotV, kSlotO, kSlotLse };
  Workspace ws_;
  std::vector<int64_t> q_base_;    // per sequence: its first Q panel
  float* qt_ = nullptr;            // Q panels, fp32
  uint32_t* qw_ = nullptr;         // Q panels, bf16 words
  std::vector<int64_t> key_base_;  // per sequence: first packed key row, or -1 (not packed)
  float* kf_ = nullptr;            // packed K rows in fp32 [rows][dp]
  float* vf_ = nullptr;            // packed V rows in fp32 [rows][dvp]
  uint32_t* kw_ = nullptr;         // packed K rows in words [rows][dp/2]
  uint32_t* vw_ = nullptr;         // packed V key pairs in words [rows/2][dvp]
  float* o_part_ = nullptr;        // [splits][total_rows][h][dvp] normalized (partial) O
  float* lse_part_ = nullptr;      // [splits][total_rows][h] (partial) LSE (-inf: empty)
};

}  // namespace

void mask_tile(const VisibilityMask& mask, int g, int m0, int rows, int64_t ld, int n0, int n,
               float* st) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (int r = 0; r < rows; ++r) {
    const int i = m0 + r;
    const int lo = std::min(n, std::max(0, mask.col_begin(i) - n0));
    const int hi = std::max(lo, std::min(n, mask.col_end(i) - n0));
    for (int hg = 0; hg < g; ++hg) {
      float* col = st + hg * rows + r;
      for (int j = 0; j < lo; ++j) col[j * ld] = kNegInf;
      for (int j = hi; j < n; ++j) col[j * ld] = kNegInf;
    }
  }
}

int64_t total_q_rows(const FwdParams& p, const std::vector<SeqView>& seqs) {
  if (p.cu_seqlens_q != nullptr) return p.cu_seqlens_q[p.b];
  (void)seqs;
  return int64_t(p.b) * p.seqlen_q;
}

int choose_num_splits(const FwdParams& p, const std::vector<SeqView>& seqs, int threads,
                      const Kernels& k) {
  if (p.num_splits >= 1) return p.num_splits;
  const int rows = std::max(1, k.block_m / (p.h / p.h_k));
  int64_t items = 0;
  int max_blocks = 0;
  for (const SeqView& sv : seqs) {
    items += int64_t(ceil_div(sv.seqlen_q, rows)) * p.h_k;
    max_blocks = std::max(max_blocks, ceil_div(sv.seqlen_k, k.block_n));
  }
  const int64_t want = int64_t(kItemsPerThread) * threads;
  if (items == 0 || items >= want) return 1;
  const int by_items = int(ceil_div(int(want), int(items)));
  const int by_blocks = std::max(1, max_blocks / kMinBlocksPerSplit);
  return std::max(1, std::min({by_items, by_blocks, kMaxSplits}));
}

std::vector<SeqView> make_seq_views(const FwdParams& p) {
  const bool varlen = p.cu_seqlens_q != nullptr;
  const bool paged = p.block_table != nullptr;
  const int es = dtype_size(p.dtype);
  std::vector<SeqView> views(size_t(p.b));
  for (int b = 0; b < p.b; ++b) {
    const SeqlenInfo si = SeqlenInfo::make(p, b);
    SeqView& v = views[size_t(b)];
    v.bidb = b;
    v.seqlen_q = si.seqlen_q;
    v.seqlen_k = si.seqlen_k;
    v.key_rows = varlen ? p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b] : p.seqlen_k;
    v.row0 = varlen ? si.q_row0 : int64_t(b) * p.seqlen_q;
    v.q = static_cast<const char*>(p.q_ptr) +
          si.q_offset(p.q_batch_stride, p.q_row_stride, 0, b, 0, 0, varlen) * es;
    v.q_dtype = p.dtype;
    v.q_row_stride = p.q_row_stride;
    v.q_head_stride = p.q_head_stride;
    v.o = static_cast<char*>(p.o_ptr) +
          si.q_offset(p.o_batch_stride, p.o_row_stride, 0, b, 0, 0, varlen) * es;
    v.o_row_stride = p.o_row_stride;
    v.o_head_stride = p.o_head_stride;
    if (p.softmax_lse_ptr != nullptr) {
      v.lse = varlen ? p.softmax_lse_ptr + si.q_row0
                     : p.softmax_lse_ptr + int64_t(b) * p.h * p.seqlen_q;
      v.lse_head_stride = varlen ? p.total_q : p.seqlen_q;
    }
    KeySource& ks = v.keys;
    ks.elem_size = es;
    ks.k_row_stride = p.k_row_stride;
    ks.k_head_stride = p.k_head_stride;
    ks.v_row_stride = p.v_row_stride;
    ks.v_head_stride = p.v_head_stride;
    if (paged) {
      ks.paged = true;
      ks.k = p.k_ptr;
      ks.v = p.v_ptr;
      ks.k_page_stride = p.k_batch_stride;
      ks.v_page_stride = p.v_batch_stride;
      ks.pages.block_table = p.block_table;
      ks.pages.block_table_batch_stride = p.block_table_batch_stride;
      ks.pages.page_block_size = p.page_block_size;
      ks.bidb = b;
    } else {
      ks.k = static_cast<const char*>(p.k_ptr) +
             si.k_offset(p.k_batch_stride, p.k_row_stride, 0, b, 0, 0, varlen) * es;
      ks.v = static_cast<const char*>(p.v_ptr) +
             si.k_offset(p.v_batch_stride, p.v_row_stride, 0, b, 0, 0, varlen) * es;
    }
  }
  return views;
}

void run_forward(const FwdParams& p, const std::vector<SeqView>& seqs_in) {
  std::vector<SeqView> seqs = seqs_in;
  // p_ptr needs the final LSE even when the caller did not ask for it.
  std::vector<float> lse_tmp;
  if (p.p_ptr != nullptr && p.softmax_lse_ptr == nullptr) {
    lse_tmp.assign(size_t(p.b) * p.h * p.seqlen_q, 0.f);
    for (SeqView& v : seqs) {
      v.lse = lse_tmp.data() + int64_t(v.bidb) * p.h * p.seqlen_q;
      v.lse_head_stride = p.seqlen_q;
    }
  }
  Forward fwd(p, seqs, num_threads());
  fwd.run();
}

}  // namespace flashattn::cpu
