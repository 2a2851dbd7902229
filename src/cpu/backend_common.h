// Internal pieces shared by the CPU backend's forward (backend_fwd.cpp) and backward
// (backend_bwd.cpp): tile sizes, the "key source" that hides where a sequence's K/V rows live
// (dense, varlen, paged, KV cache), per-sequence views, and small helpers.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <new>
#include <vector>

#include "common/mask.h"
#include "common/paged_kv.h"
#include "cpu/backend.h"
#include "cpu/kernels.h"
#include "flashattn/params.h"

namespace flashattn::cpu {

// Tile sizes come from the kernel table (Kernels::block_m, block_n), so each ISA can have its
// own. Every table uses 96 x 96 today:
// - block_m query rows per work item: block_m (query row, query head) pairs, the h/h_k heads
//   that share a kv head stacked (block_m / (h/h_k) rows of each), so K/V blocks are converted
//   once for all of them. 96 x d = 128 fp32 is 48 KiB for each of Q^T, O and the K/V block, and
//   the transposed score tile is 96 x 96 x 4 = 36 KiB: one item's working set (~230 KiB) stays
//   in a Zen 3 core's 512 KiB L2. 96 = 16 x 6 fills the AVX2 gemm's 6 x 16 register tiles and
//   96 = 12 x 8 the AVX-512 gemm's 12 x 32 ones exactly in both block products. Measured
//   (forward, fp32, d = 128, s = 2048, one thread, AVX2, GFLOP/s per core of a Zen 3 EPYC VM,
//   nominal peak 78): block_m x block_n = 48 x 96: 69, 96 x 96: 78, 96 x 48: 78, 96 x 192: 74,
//   144 x 144: 72, 192 x 96: 63 (the working set spills out of L2).
// - block_n keys per block: the same L2 budget, and a multiple of the register tiles' rows for
//   S^T = K Q^T.
// docs/cpu_backend.md has the sweeps on the Zen 4 machine for the AVX-512 tables.

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
inline int round_up(int a, int m) { return ceil_div(a, m) * m; }
// Head dim as stored in the fp32 working buffers: a multiple of 8 (one AVX register), the
// padding columns kept at zero so they add nothing to any product (and, even, so bf16 rows pair
// up into whole words).
inline int padded_dim(int d) { return round_up(d, 8); }

// Rows of q, k, v, o of one head are h * d elements apart, so walking a head's rows touches a
// new 4 KiB page per row, where the hardware prefetchers (which stay within a page) do not
// follow: each row would cost a full memory latency. Loops over such rows prefetch the row
// kPrefetchRows ahead; measured on Zen 4 (bf16, h = 16, d = 128, s = 1024, one thread), the
// row conversions went from ~10 % of the forward to ~2 %.
constexpr int kPrefetchRows = 8;
inline void prefetch_row(const void* p, int bytes, bool for_write = false) {
  const char* c = static_cast<const char*>(p);
  for (int b = 0; b < bytes; b += 64) {
    if (for_write)
      __builtin_prefetch(c + b, 1);
    else
      __builtin_prefetch(c + b, 0);
  }
}

// Buffers of one call (packed operands, partial outputs, per-worker scratch) that persist across
// calls on the same user thread, grown as needed and never shrunk. A forward or backward needs
// tens of MiB of them; fresh allocations that size come from mmap, and faulting the pages in on
// every call measured 10-30 % of a 2-thread forward on Zen 4 (the faults serialize on the
// kernel's mm locks). Memory from get() is uninitialized. A call made while this thread's
// workspace is in use (nested) gets a private one instead.
class Workspace {
 public:
  Workspace();
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // Slot `slot` as n elements of T, 64-byte aligned; valid until the next get() of that slot or
  // the end of the call. Slots are small integers chosen by the caller.
  template <class T>
  T* get(int slot, size_t n) {
    return static_cast<T*>(raw(slot, n * sizeof(T)));
  }
  // As get(), zero-filled.
  template <class T>
  T* zeros(int slot, size_t n) {
    T* p = get<T>(slot, n);
    std::fill(p, p + n, T(0));
    return p;
  }

 private:
  struct Store;
  void* raw(int slot, size_t bytes);
  Store* store_;
  bool owned_;  // store_ is this object's own (nested call), not the thread's
};

// The per-worker buffers (type S) of one call. Each worker sets up its own on first use, on its
// own thread, from a copy of S that the thread keeps across calls: set up by the caller for every
// worker before dispatch, they were zero-filled one after the other, and freshly allocated ones
// page-faulted, on the calling thread alone (measured on Zen 4, backward, s = 512, d = 128,
// 16 workers: 6-9 ms before the first item started, against 40-60 ms of items on one core).
// A thread whose copy is in use (a nested call) gets a private S for that call.
//
// Items must not throw: when setting up fails (out of memory), get() returns nullptr, the item
// skips its work, and check() rethrows std::bad_alloc on the calling thread after the
// parallel_for.
template <class S>
class WorkerScratch {
 public:
  explicit WorkerScratch(int workers) : slots_(size_t(workers)) {}
  ~WorkerScratch() {
    for (Slot& s : slots_)
      if (s.kept != nullptr) s.kept->in_use = false;
  }
  WorkerScratch(const WorkerScratch&) = delete;
  WorkerScratch& operator=(const WorkerScratch&) = delete;

  // Worker `worker`'s buffers, set up by init(S&) the first time this call asks for them.
  template <class Init>
  S* get(int worker, const Init& init) {
    Slot& s = slots_[size_t(worker)];
    if (s.ptr != nullptr) return s.ptr;
    if (failed_.load(std::memory_order_relaxed)) return nullptr;
    try {
      Kept& k = kept();
      if (!k.in_use) {
        k.in_use = true;
        s.kept = &k;
        s.ptr = &k.s;
      } else {
        s.own.reset(new S());
        s.ptr = s.own.get();
      }
      init(*s.ptr);
    } catch (...) {
      failed_.store(true, std::memory_order_relaxed);
      s.ptr = nullptr;
    }
    return s.ptr;
  }
  // After a parallel_for whose items called get(): rethrows a failed set-up.
  void check() const {
    if (failed_.load(std::memory_order_relaxed)) throw std::bad_alloc();
  }

 private:
  struct Kept {
    S s;
    bool in_use = false;
  };
  static Kept& kept() {
    static thread_local Kept k;
    return k;
  }
  struct Slot {
    S* ptr = nullptr;
    Kept* kept = nullptr;
    std::unique_ptr<S> own;
  };
  std::vector<Slot> slots_;
  std::atomic<bool> failed_{false};
};

// Where the K and V rows of one sequence live. Key j of the sequence (0 <= j < seqlen_k of its
// view) is at logical position key0 + j: contiguous rows from a base pointer, or a page of a
// paged cache.
struct KeySource {
  const void* k = nullptr;  // contiguous: row of position 0 (batch/varlen offset applied); paged: pool
  const void* v = nullptr;
  int64_t k_row_stride = 0, k_head_stride = 0, k_page_stride = 0;
  int64_t v_row_stride = 0, v_head_stride = 0, v_page_stride = 0;
  int key0 = 0;            // logical position of key 0 (KV cache left padding)
  bool paged = false;
  PagedKV pages;           // block table of the whole batch; row `bidb` is this sequence's
  int bidb = 0;
  int elem_size = 4;

  const void* k_row(int j, int hk) const { return row(k, j, hk, k_row_stride, k_head_stride, k_page_stride); }
  const void* v_row(int j, int hk) const { return row(v, j, hk, v_row_stride, v_head_stride, v_page_stride); }

 private:
  const void* row(const void* base, int j, int hk, int64_t rs, int64_t hs, int64_t ps) const {
    const int t = key0 + j;
    const int64_t off = paged ? pages.offset(bidb, t, hk, ps, rs, hs) : int64_t(t) * rs + int64_t(hk) * hs;
    return static_cast<const char*>(base) + off * elem_size;
  }
};

// One sequence as the attention cores see it: row 0 of its q/o (head 0), its lengths after
// varlen/seqused/KV-cache resolution, and its keys.
struct SeqView {
  int bidb = 0;         // index in the batch: ALiBi row, dropout counter, block-table row
  int seqlen_q = 0;
  int seqlen_k = 0;     // visible key range is [0, seqlen_k) of `keys`
  int key_rows = 0;     // rows of k/v this sequence owns (>= seqlen_k; differs under seqused_k)
  int64_t row0 = 0;     // global row of query 0 (dense: bidb * seqlen_q; varlen: cu_seqlens_q)
  const void* q = nullptr;
  DType q_dtype = DType::kFloat32;  // the call's dtype, or fp32 for the KV cache's rotated q copy
  int64_t q_row_stride = 0, q_head_stride = 0;
  void* o = nullptr;
  int64_t o_row_stride = 0, o_head_stride = 0;
  float* lse = nullptr;  // lse of head hq, row i: lse[hq * lse_head_stride + i]; may be null
  int64_t lse_head_stride = 0;
  KeySource keys;
};

// -inf on every element of a transposed score tile (keys [n0, n0 + n) x the g stacked heads
// rows [m0, m0 + rows), column hg * rows + r, leading dimension ld) that the mask hides. Row i
// sees the contiguous keys [col_begin(i), col_end(i)), so only the masked runs are touched.
void mask_tile(const VisibilityMask& mask, int g, int m0, int rows, int64_t ld, int n0, int n,
               float* st);

// Views of every sequence of a dense/varlen/paged forward or backward call.
std::vector<SeqView> make_seq_views(const FwdParams& p);

// Rows of q/o over the whole batch (dense: b * seqlen_q; varlen: total_q).
int64_t total_q_rows(const FwdParams& p, const std::vector<SeqView>& seqs);

// Split count for num_splits == 0 (heuristic in backend_fwd.cpp), else the explicit count.
int choose_num_splits(const FwdParams& p, const std::vector<SeqView>& seqs, int threads,
                      const Kernels& k);

// Whether a call of dtype t runs its block products on bf16 operands (gemm_bf16): bf16 data and
// a table that has them.
inline bool use_bf16_products(DType t, const Kernels& k) {
  return t == DType::kBFloat16 && k.gemm_bf16 != nullptr;
}

// The FlashAttention-2 forward over any set of sequence views: dense, varlen, paged and the
// KV cache all come here. Writes o and lse through the views, and p_ptr (dense only) if set.
void run_forward(const FwdParams& p, const std::vector<SeqView>& seqs);

// The FlashAttention-2 backward (dense and varlen).
void run_backward(const BwdParams& p);

}  // namespace flashattn::cpu
