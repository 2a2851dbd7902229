// Test problems: owned host buffers with random inputs, and FwdParams/BwdParams/KVCacheParams
// pointing into them. Shared by every C++ test (CPU and GPU: gpu_mirror.h copies a problem's
// buffers to the device and re-points its params).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "flashattn/flashattn.h"

namespace flashattn::testing {

// A typed host buffer (fp32, fp16 or bf16 storage).
struct Buffer {
  DType dtype = DType::kFloat32;
  int64_t numel = 0;
  std::vector<uint8_t> bytes;

  static Buffer make(DType t, int64_t n);
  void* data() { return bytes.empty() ? nullptr : bytes.data(); }
  const void* data() const { return bytes.empty() ? nullptr : bytes.data(); }
  float get(int64_t i) const;
  void set(int64_t i, float v);  // rounds to dtype
  void fill_uniform(std::mt19937_64& rng, float lo, float hi);
  void fill_normal(std::mt19937_64& rng, float stddev);
  void fill_nan();
  Buffer converted(DType t) const;
};

// Shape and features of one attention problem.
struct AttnConfig {
  DType dtype = DType::kFloat32;
  int b = 1, seqlen_q = 16, seqlen_k = 16, h = 1, h_k = 1, d = 32;
  int dv = 0;  // head dim of v and o; 0: = d (params.dv is set to this value, 0 included)
  bool causal = false;
  int window_left = -1, window_right = -1;
  float softmax_scale = 0.f;  // 0: 1/sqrt(d)
  float softcap = 0.f;
  bool alibi = false;
  bool alibi_per_batch = false;  // slopes [b, h] instead of [h]
  bool sinks = false;            // random sink logits [h] (uniform in [-2, 4]: from negligible
                                 // to dominant next to scores of uniform [-1, 1] inputs)
  float p_dropout = 0.f;
  uint64_t philox_seed = 0x1234, philox_offset = 0;
  // Varlen: when non-empty (size b), sequences have these lengths and q/k/v are packed.
  std::vector<int> seqlens_q, seqlens_k;
  std::vector<int> seqused_k;  // optional, size b, each <= seqlens_k[i] (varlen only)
  // Non-contiguous layout: pad row and head strides (the last dim stays contiguous).
  bool padded_strides = false;
  int num_splits = 1;
  bool return_probs = false;  // allocate p_ptr (dense only)

  bool varlen() const { return !seqlens_q.empty(); }
  int v_dim() const { return dv > 0 ? dv : d; }
  std::string str() const;  // short human-readable description for failure messages
};

// Strides of a [batch, rows, heads, d] tensor (elements).
struct Layout {
  int64_t batch_stride = 0, row_stride = 0, head_stride = 0;
  int64_t numel = 0;
  static Layout make(int batch, int rows, int heads, int d, bool padded);
};

struct FwdProblem {
  AttnConfig cfg;
  Buffer q, k, v, o, p;
  std::vector<float> lse;     // dense [b, h, s_q]; varlen [h, total_q]
  std::vector<float> alibi;   // [h] or [b, h]
  std::vector<float> sinks;   // [h] when cfg.sinks
  std::vector<int> cu_q, cu_k, seqused_k, block_table;
  FwdParams params;

  int64_t lse_size() const { return static_cast<int64_t>(lse.size()); }
  // Logical rows of q/o, [rows, h, d] with rows = b * s_q (dense) or total_q (varlen).
  int rows_q() const;
  // Re-point params into this problem's buffers (after a copy or move).
  void bind();
};

// Random inputs (uniform in [-1, 1] unless noted), outputs poisoned with NaN.
FwdProblem make_fwd_problem(const AttnConfig& cfg, uint64_t seed);

// The same problem with K/V moved into a paged cache of the given page size: pages of each
// sequence are scattered in random order over a pool with spare pages.
FwdProblem to_paged(const FwdProblem& contiguous, int page_size, uint64_t seed);

// o as dense [rows, h, dv] floats (strided/padded layouts gathered), and the same for any
// q-like buffer with the params' o strides.
std::vector<float> gather_o(const FwdProblem& pr);
std::vector<float> gather(const Buffer& buf, const Layout& l, int batch, int rows, int heads,
                          int d, bool varlen, int total_rows);

struct BwdProblem {
  FwdProblem fwd;  // inputs, plus o/lse filled by whoever runs the forward
  Buffer dout, dq, dk, dv;
  std::vector<float> dsinks;  // [h], NaN-poisoned, when cfg.sinks (params.dsinks points here)
  BwdParams params;
  void bind();  // copies fwd.params into params and re-points gradient pointers
};
// Random dout (uniform [-1, 1]); dq/dk/dv (and dsinks) poisoned. o and lse are NOT computed: run
// a forward on bp.fwd.params, then call bp.bind().
BwdProblem make_bwd_problem(const AttnConfig& cfg, uint64_t seed);

struct KVCacheConfig {
  AttnConfig attn;           // b, seqlen_q (new queries), h, h_k, d, dtype, masks, splits
  int seqlen_cache = 64;     // capacity (contiguous) or per-sequence capacity (paged)
  int b_cache = 0;           // 0: = b
  std::vector<int> cache_seqlens;  // size b; empty -> random in [0, capacity - seqlen_new]
  int seqlen_new = 0;        // new k/v tokens appended (0: none)
  bool batch_idx = false;    // random permutation cache_batch_idx (needs b_cache >= b)
  bool leftpad = false;      // random cache_leftpad < cache_seqlens
  int page_size = 0;         // > 0: paged cache
  int rotary_dim = 0;        // > 0: rotary on new k and q
  bool rotary_interleaved = true;
};

struct KVCacheProblem {
  KVCacheConfig cfg;
  Buffer q, k_cache, v_cache, knew, vnew, o, rotary_cos, rotary_sin;
  std::vector<float> lse;
  std::vector<float> alibi;
  std::vector<float> sinks;  // [h] when cfg.attn.sinks
  std::vector<int> cache_seqlens, cache_batch_idx, cache_leftpad, block_table;
  KVCacheParams params;
  void bind();
};
KVCacheProblem make_kvcache_problem(const KVCacheConfig& cfg, uint64_t seed);

// Comparison helpers.
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b);
double max_abs(const std::vector<float>& a);
int64_t count_nonfinite(const std::vector<float>& a);
// Max |a - b| where both finite; counts mismatches in (non-)finiteness and infinity signs.
struct DiffStats {
  double max_abs = 0;
  int64_t finiteness_mismatches = 0;
  std::string str() const;
};
DiffStats diff(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace flashattn::testing
