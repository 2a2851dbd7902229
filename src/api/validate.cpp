// Host layer: argument validation for every entry point (contract in validate.h, rule list in
// docs/validation.md).
//
// Each validate_* returns at the first broken rule with
//   Status::invalid("<argument>: <offending value> <rule>")
// and checks in an order that makes every later check safe: dtype and sizes, scalar options,
// which optional arguments go together, then tensor layouts (null pointers, negative or
// self-overlapping strides, alignment), then outputs aliasing other arguments, and last the
// VALUES of index arrays. Values are read only on Backend::kCpu (host memory) and only after the
// pointers and lengths that make the read safe have passed; device-resident index arrays are
// left to the kernels, which clamp or skip out-of-range entries instead of reading out of bounds.
#include "api/validate.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace flashattn::detail {
namespace {

// Sizes and byte ranges are computed in 128 bits so no product of int sizes and int64 strides
// can overflow before it is compared against the limits.
__extension__ typedef __int128 Int128;

// Head dims (d and dv) up to these are supported: on the GPU flash_attn 2.x's limit, what the
// kernels' tiles are built for; on the CPU MLA decode's 576 (512 latent + 64 rope dims, V the
// first 512), the largest head dim models ship; the CPU kernels take any d.
constexpr int kMaxHeadDimGpu = 256;
constexpr int kMaxHeadDimCpu = 576;
int max_head_dim(Backend be) { return be == Backend::kCuda ? kMaxHeadDimGpu : kMaxHeadDimCpu; }
// The split-KV forward writes at most this many partial results (flash_attn's limit).
constexpr int kMaxSplits = 128;
// GPU kernels move tensors in 16-byte vectors (cp.async, ldmatrix feeds), so base pointers and
// every stride must keep each head row 16-byte aligned.
constexpr int kGpuVectorBytes = 16;
// Spans are computed in 128 bits and must stay well inside int64 so kernels can index with it.
constexpr int64_t kMaxSpanBytes = int64_t(1) << 62;

template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream s;
  (s << ... << args);
  return s.str();
}

// The head-dim limit names where it applies.
std::string head_dim_limit_note(Backend be) {
  if (be != Backend::kCuda) return std::string();
  return cat(" on the GPU (the CPU backend takes up to ", kMaxHeadDimCpu, ")");
}

template <typename... Args>
Status invalid(const Args&... args) {
  return Status::invalid(cat(args...));
}

std::string hex(const void* p) {
  std::ostringstream s;
  s << "0x" << std::hex << reinterpret_cast<uintptr_t>(p);
  return s.str();
}

bool known_dtype(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16 ||
         t == DType::kFloat8E4M3;
}

int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// ------------------------------------------------------------------------ tensor layouts --

// One strided dimension of a tensor argument.
struct Dim {
  const char* stride_name;  // the argument an error names, e.g. "q_row_stride"
  const char* what;         // what one step crosses, e.g. "row", for messages
  int64_t extent;
  int64_t stride;  // elements
};

// A tensor argument as validation sees it: strided dims (outermost first) over a contiguous
// innermost run of `inner` elements. Index arrays, LSE and probabilities are the degenerate case
// with no strided dims.
struct TensorArg {
  const char* name = "";      // "q"
  const char* ptr_name = "";  // "q_ptr": the argument errors about the pointer name
  const void* ptr = nullptr;
  int elem_size = 1;
  std::vector<Dim> dims;
  Int128 inner = 0;
  bool vector_io = false;  // moved in 16-byte vectors by the GPU kernels
  bool written = false;    // an output of this call

  Int128 numel() const {
    Int128 n = inner;
    for (const Dim& d : dims) n *= d.extent;
    return n;
  }
  // Elements from the first to one past the last addressed element (strides checked >= 0).
  Int128 span() const {
    if (numel() == 0) return 0;
    Int128 s = inner;
    for (const Dim& d : dims) s += Int128(d.extent - 1) * d.stride;
    return s;
  }
  // Whether each stepping dim's stride is at least the span nested inside it (no element is
  // reached twice; see check_tensor).
  bool nested() const {
    Int128 span = inner;
    for (const Dim& d : stepping_dims()) {
      if (d.stride < span) return false;
      span += Int128(d.extent - 1) * d.stride;
    }
    return true;
  }
  // Dims that actually step (extent > 1), smallest stride first; equal strides keep the
  // declared nesting (heads inside rows inside batches), so an error names the outer one.
  std::vector<Dim> stepping_dims() const {
    std::vector<Dim> v;
    for (auto it = dims.rbegin(); it != dims.rend(); ++it)
      if (it->extent > 1) v.push_back(*it);
    std::stable_sort(v.begin(), v.end(),
                     [](const Dim& a, const Dim& b) { return a.stride < b.stride; });
    return v;
  }
};

std::string to_string_i128(Int128 v) {
  if (v >= INT64_MIN && v <= INT64_MAX) return std::to_string(int64_t(v));
  return ">2^63";
}

TensorArg strided(const char* name, const char* ptr_name, const void* ptr, DType t,
                  std::vector<Dim> dims, int64_t d, bool written) {
  TensorArg a;
  a.name = name;
  a.ptr_name = ptr_name;
  a.ptr = ptr;
  a.elem_size = dtype_size(t);
  a.dims = std::move(dims);
  a.inner = d;
  a.vector_io = true;
  a.written = written;
  return a;
}

TensorArg array(const char* name, const char* ptr_name, const void* ptr, int elem_size,
                Int128 n, bool written) {
  TensorArg a;
  a.name = name;
  a.ptr_name = ptr_name;
  a.ptr = ptr;
  a.elem_size = elem_size;
  a.inner = n;
  a.written = written;
  return a;
}

// Null, negative strides, self-overlap, size, alignment.
//
// Self-overlap matters only for tensors the call writes: two index tuples reaching one element
// would make the result depend on write order. Read-only inputs may overlap themselves -- a
// batch-expanded shared prefix (batch stride 0) is a legitimate key tensor, as in torch SDPA and
// flash_attn, which check only that the last dim is contiguous. The rule for outputs: sort the
// dims that step (extent > 1) by stride; each stride must be at least the span of everything
// nested inside it. That accepts every layout made by permuting and slicing (with steps) a
// contiguous tensor -- transposes, padded rows, the dq/dk/dv views of a packed (b, s, 3, h, d)
// buffer -- and rejects every layout where two index tuples reach the same element. It also
// rejects a few exotic interleavings that do not alias (strides 2 and 3 over d = 1); no tensor
// library produces those from one dense allocation.
Status check_tensor(const TensorArg& t, Backend be) {
  for (const Dim& d : t.dims)
    if (d.stride < 0)
      return invalid(d.stride_name, ": ", d.stride,
                     " is negative (strides are element counts >= 0; the last dim is contiguous)");
  if (t.numel() == 0) return Status::ok_status();
  if (t.ptr == nullptr)
    return invalid(t.ptr_name, ": must not be null (", t.name, " has ", to_string_i128(t.numel()),
                   " elements)");
  const bool gpu_vec = be == Backend::kCuda && t.vector_io;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(t.ptr);
  if (gpu_vec && addr % kGpuVectorBytes != 0)
    return invalid(t.ptr_name, ": ", hex(t.ptr), " is not ", kGpuVectorBytes,
                   "-byte aligned (the GPU kernels load and store 16-byte vectors)");
  if (addr % t.elem_size != 0)
    return invalid(t.ptr_name, ": ", hex(t.ptr), " is not aligned to the ", t.elem_size,
                   "-byte element size");

  if (t.written && !t.nested()) {
    Int128 span = t.inner;
    std::string inside = cat("the d = ", to_string_i128(t.inner), " contiguous elements");
    for (const Dim& d : t.stepping_dims()) {
      if (d.stride < span)
        return invalid(d.stride_name, ": ", d.stride, " makes ", t.name,
                       " overlap itself: a step to the next ", d.what, " must skip at least ",
                       to_string_i128(span), " elements, the span of ", inside,
                       " nested inside it (an output must not alias itself)");
      span += Int128(d.extent - 1) * d.stride;
      inside = cat("the ", d.extent, " ", d.what, "s");
    }
  }
  const Int128 span = t.span();
  if (span * t.elem_size >= kMaxSpanBytes)
    return invalid(t.ptr_name, ": ", t.name, " spans ", to_string_i128(span),
                   " elements, beyond the 2^62-byte limit");

  if (gpu_vec) {
    const int64_t step = kGpuVectorBytes / t.elem_size;
    for (const Dim& d : t.dims)
      if (d.extent > 1 && d.stride % step != 0)
        return invalid(d.stride_name, ": ", d.stride, " is not a multiple of ", step,
                       " (the GPU needs every ", d.what, " of ", t.name,
                       " 16-byte aligned: strides in multiples of ", step, " elements)");
  }
  return Status::ok_status();
}

// Whether the element delta between two equally shaped and strided tensors lands one element
// of the first on an element of the second: is delta = sum_i c_i * stride_i with |c_i| < n_i?
// `levels` are (stride, extent) innermost first, level 0 being the contiguous run (stride 1).
// Because each stride is at least the span nested inside it (TensorArg::nested), at most two
// coefficients fit per level, so the search visits at most 2^levels leaves.
bool lattice_hit(const std::vector<std::pair<int64_t, int64_t>>& levels,
                 const std::vector<int64_t>& reach, int i, int64_t delta) {
  if (i < 0) return delta == 0;
  const int64_t s = levels[i].first, n = levels[i].second;
  const int64_t m = i > 0 ? reach[i - 1] : 0;  // max |offset difference| of the inner levels
  const int64_t lo = std::max(-(n - 1), -floor_div(-(delta - m), s));
  const int64_t hi = std::min(n - 1, floor_div(delta + m, s));
  for (int64_t c = lo; c <= hi; ++c)
    if (lattice_hit(levels, reach, i - 1, delta - c * s)) return true;
  return false;
}

bool same_geometry(const TensorArg& a, const TensorArg& b) {
  if (a.elem_size != b.elem_size || a.inner != b.inner) return false;
  const std::vector<Dim> da = a.stepping_dims(), db = b.stepping_dims();
  if (da.size() != db.size()) return false;
  for (size_t i = 0; i < da.size(); ++i)
    if (da[i].stride != db[i].stride || da[i].extent != db[i].extent) return false;
  return true;
}

// Whether two (individually valid) tensors share an element. Disjoint byte ranges never do.
// Tensors of one shape and strides whose ranges interleave -- q, k, v or dq, dk, dv as views of
// one packed qkv buffer -- are decided exactly; other overlapping ranges count as aliasing,
// which is conservative only for hand-made interleavings of differently shaped tensors.
bool may_alias(const TensorArg& a, const TensorArg& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  const Int128 a0 = reinterpret_cast<uintptr_t>(a.ptr), b0 = reinterpret_cast<uintptr_t>(b.ptr);
  const Int128 a1 = a0 + a.span() * a.elem_size, b1 = b0 + b.span() * b.elem_size;
  if (a1 <= b0 || b1 <= a0) return false;
  const Int128 delta_bytes = b0 - a0;
  if (!same_geometry(a, b) || !a.nested() || delta_bytes % a.elem_size != 0) return true;
  std::vector<std::pair<int64_t, int64_t>> levels{{1, int64_t(a.inner)}};
  for (const Dim& d : a.stepping_dims()) levels.emplace_back(d.stride, d.extent);
  std::vector<int64_t> reach;
  int64_t r = 0;
  for (const auto& l : levels) {
    r += (l.second - 1) * l.first;
    reach.push_back(r);
  }
  return lattice_hit(levels, reach, int(levels.size()) - 1, int64_t(delta_bytes / a.elem_size));
}

// Every output against every other argument: no output may share memory with an input (it
// would be overwritten while still being read) or with another output.
Status check_no_alias(const std::vector<TensorArg>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    if (!args[i].written) continue;
    for (size_t j = 0; j < args.size(); ++j) {
      if (j == i || (args[j].written && j < i)) continue;
      if (may_alias(args[i], args[j]))
        return invalid(args[i].ptr_name, ": ", args[i].name, " overlaps ", args[j].name, " (",
                       args[j].ptr_name, ") in memory; an output must not alias another argument");
    }
  }
  return Status::ok_status();
}

Status check_tensors(const std::vector<TensorArg>& args, Backend be) {
  for (const TensorArg& t : args)
    if (Status s = check_tensor(t, be); !s.ok()) return s;
  return check_no_alias(args);
}

// ------------------------------------------------------------------- shared forward rules --

enum class Entry { kFwd, kBwd, kKVCache };

const char* entry_name(Entry e, bool varlen) {
  switch (e) {
    case Entry::kFwd: return varlen ? "mha_varlen_fwd" : "mha_fwd";
    case Entry::kBwd: return varlen ? "mha_varlen_bwd" : "mha_bwd";
    case Entry::kKVCache: return "mha_fwd_kvcache";
  }
  return "";
}

Status check_dtype(DType t, Backend be) {
  if (!known_dtype(t))
    return invalid("dtype: ", int(t),
                   " is not a DType (0 = fp32, 1 = fp16, 2 = bf16, 3 = fp8_e4m3)");
  if (be == Backend::kCuda && t == DType::kFloat32)
    return invalid("dtype: fp32 is not supported on the GPU (fp16, bf16)");
  return Status::ok_status();
}

// The output type, and the FP8-only arguments (descales) and restrictions. fp8 attention is
// forward-only inference, as FlashAttention-3's: no backward, no dropout, no probabilities, no
// rotary (a rotated key would have to be requantized with a scale the call does not have).
Status check_fp8(const FwdParams& p, Entry e) {
  const bool fp8 = p.dtype == DType::kFloat8E4M3;
  if (fp8) {
    if (p.out_dtype != DType::kBFloat16 && p.out_dtype != DType::kFloat16)
      return invalid("out_dtype: ", dtype_name(p.out_dtype),
                     " is not an output type for fp8 inputs (bf16 or fp16; unset means bf16)");
  } else if (p.out_dtype != p.dtype) {
    return invalid("out_dtype: ", dtype_name(p.out_dtype), " differs from dtype = ",
                   dtype_name(p.dtype),
                   " (a separate output type is for fp8 inputs only; leave it unset)");
  }
  struct Named {
    const char* name;
    const void* ptr;
  };
  const Named descales[] = {{"q_descale", p.q_descale},
                            {"k_descale", p.k_descale},
                            {"v_descale", p.v_descale},
                            {"q_block_descale", p.q_block_descale},
                            {"k_block_descale", p.k_block_descale},
                            {"v_block_descale", p.v_block_descale}};
  if (!fp8) {
    for (const Named& d : descales)
      if (d.ptr != nullptr)
        return invalid(d.name, ": descale factors apply to fp8 (e4m3) inputs only; dtype is ",
                       dtype_name(p.dtype), " (set it to null)");
    if (p.descale_block_m != 0 || p.descale_block_n != 0)
      return invalid(p.descale_block_m != 0 ? "descale_block_m" : "descale_block_n",
                     ": block descales apply to fp8 (e4m3) inputs only; dtype is ",
                     dtype_name(p.dtype), " (leave it 0)");
    return Status::ok_status();
  }
  if (e == Entry::kBwd)
    return invalid("dtype: fp8 (e4m3) attention has no backward: it is forward-only inference, as "
                   "in FlashAttention-3 (train in bf16/fp16)");
  if (p.p_dropout > 0.f)
    return invalid("p_dropout: ", p.p_dropout,
                   " is not allowed with fp8 inputs (forward-only inference: no dropout)");
  if (p.p_ptr != nullptr)
    return invalid("p_ptr: must be null with fp8 inputs (the attention probabilities are not "
                   "returned by the FP8 forward)");
  const bool q_blocks = p.q_block_descale != nullptr;
  const bool kv_blocks = p.k_block_descale != nullptr || p.v_block_descale != nullptr;
  if (q_blocks ? p.descale_block_m < 1 : p.descale_block_m != 0)
    return invalid("descale_block_m: ", p.descale_block_m,
                   q_blocks ? " must be >= 1 with q_block_descale (q rows per factor)"
                            : " must be 0 without q_block_descale (no q block factors given)");
  if (kv_blocks ? p.descale_block_n < 1 : p.descale_block_n != 0)
    return invalid("descale_block_n: ", p.descale_block_n,
                   kv_blocks ? " must be >= 1 with k_block_descale / v_block_descale (key rows "
                               "per factor)"
                             : " must be 0 without k_block_descale / v_block_descale (no key "
                               "block factors given)");
  return Status::ok_status();
}

Status check_sizes(const FwdParams& p, Backend be) {
  if (p.b < 0) return invalid("b: ", p.b, " is negative (b = 0 is an empty no-op call)");
  if (p.seqlen_q < 0) return invalid("seqlen_q: ", p.seqlen_q, " is negative");
  if (p.seqlen_k < 0) return invalid("seqlen_k: ", p.seqlen_k, " is negative");
  if (p.h < 1) return invalid("h: ", p.h, " must be >= 1");
  if (p.h_k < 1) return invalid("h_k: ", p.h_k, " must be >= 1");
  if (p.h % p.h_k != 0)
    return invalid("h: ", p.h, " is not a multiple of h_k = ", p.h_k,
                   " (GQA needs h % h_k == 0)");
  if (p.d < 1 || p.d > max_head_dim(be))
    return invalid("d: ", p.d, " is out of range [1, ", max_head_dim(be), "]",
                   head_dim_limit_note(be));
  if (be == Backend::kCuda && p.d % 8 != 0)
    return invalid("d: ", p.d,
                   " is not a multiple of 8 (the GPU kernels need it; pad the head dim)");
  // dv is resolved (0 -> d) before validation, so 0 here cannot reach it.
  if (p.dv < 1 || p.dv > max_head_dim(be))
    return invalid("dv: ", p.dv, " is out of range [1, ", max_head_dim(be), "]",
                   head_dim_limit_note(be), " (0 means dv = d)");
  if (be == Backend::kCuda && p.dv % 8 != 0)
    return invalid("dv: ", p.dv,
                   " is not a multiple of 8 (the GPU kernels need it; pad the head dim)");
  return Status::ok_status();
}

// Scalars of the score, mask, dropout and split options.
Status check_options(const FwdParams& p, Entry e) {
  if (!std::isfinite(p.softmax_scale))
    return invalid("softmax_scale: ", p.softmax_scale, " is not finite");
  if (!std::isfinite(p.softcap) || p.softcap < 0.f)
    return invalid("softcap: ", p.softcap, " must be finite and >= 0 (0 disables capping)");
  if (p.window_size_left < -1)
    return invalid("window_size_left: ", p.window_size_left,
                   " is invalid (use -1 for unbounded, or >= 0)");
  if (p.window_size_right < -1)
    return invalid("window_size_right: ", p.window_size_right,
                   " is invalid (use -1 for unbounded, or >= 0)");
  if (!(p.p_dropout >= 0.f && p.p_dropout < 1.f))
    return invalid("p_dropout: ", p.p_dropout, " is outside [0, 1)");
  if (p.p_dropout > 0.f && p.softcap > 0.f)
    return invalid("p_dropout: ", p.p_dropout, " is not allowed together with softcap = ",
                   p.softcap, " (flash_attn's rule: softcap has no dropout)");
  if (e == Entry::kKVCache && p.p_dropout > 0.f)
    return invalid("p_dropout: ", p.p_dropout,
                   " is not allowed in mha_fwd_kvcache (inference: no dropout, as in "
                   "flash_attn_with_kvcache)");
  if (p.alibi_slopes != nullptr && p.alibi_slopes_batch_stride != 0 &&
      p.alibi_slopes_batch_stride < p.h)
    return invalid("alibi_slopes_batch_stride: ", p.alibi_slopes_batch_stride,
                   " must be 0 (slopes [h]) or >= h = ", p.h, " (slopes [b, h])");
  // The backward has no split-KV; num_splits is a forward option and the backward ignores it.
  if (e != Entry::kBwd) {
    if (p.num_splits < 0 || p.num_splits > kMaxSplits)
      return invalid("num_splits: ", p.num_splits, " is out of range [0, ", kMaxSplits,
                     "] (0 = heuristic, 1 = no split)");
    if (p.num_splits > 1 && p.p_dropout > 0.f)
      return invalid("num_splits: ", p.num_splits, " is not allowed with p_dropout = ",
                     p.p_dropout, " (split-KV has no dropout; use 1 or 0)");
    if (p.num_splits > 1 && p.p_ptr != nullptr)
      return invalid("num_splits: ", p.num_splits,
                     " is not allowed with p_ptr (probabilities need the whole row; use 1 or 0)");
  }
  return Status::ok_status();
}

// Varlen pointers, p_ptr, and the paged-KV geometry.
Status check_modes(const FwdParams& p, Entry e, bool varlen) {
  const char* fn = entry_name(e, varlen);
  if (varlen) {
    if (p.cu_seqlens_q == nullptr) return invalid("cu_seqlens_q: must not be null for ", fn);
    if (p.cu_seqlens_k == nullptr) return invalid("cu_seqlens_k: must not be null for ", fn);
    if (p.total_q < 0) return invalid("total_q: ", p.total_q, " is negative");
    if (p.block_table == nullptr && p.total_k < 0)
      return invalid("total_k: ", p.total_k, " is negative");
  } else {
    const char* why = e == Entry::kKVCache ? " (q is dense)" : " (use the varlen entry point)";
    if (p.cu_seqlens_q != nullptr) return invalid("cu_seqlens_q: must be null for ", fn, why);
    if (p.cu_seqlens_k != nullptr) return invalid("cu_seqlens_k: must be null for ", fn, why);
  }
  if (e == Entry::kKVCache && p.seqused_k != nullptr)
    return invalid("seqused_k: must be null for mha_fwd_kvcache (cache_seqlens gives the lengths)");

  if (p.p_ptr != nullptr) {
    if (e == Entry::kBwd) return invalid("p_ptr: must be null for ", fn, " (a forward output)");
    if (e == Entry::kKVCache) return invalid("p_ptr: must be null for mha_fwd_kvcache");
    if (varlen)
      return invalid("p_ptr: must be null for mha_varlen_fwd (attention probabilities are dense "
                     "[b, h, seqlen_q, seqlen_k], returned by mha_fwd only)");
  }

  if (p.block_table != nullptr) {
    if (e == Entry::kBwd) return invalid("block_table: paged KV has no backward");
    if (p.page_block_size < 1)
      return invalid("page_block_size: ", p.page_block_size, " must be >= 1 with block_table");
    if (p.num_blocks < 1)
      return invalid("num_blocks: ", p.num_blocks, " must be >= 1 with block_table");
    if (p.max_blocks_per_seq < 1)
      return invalid("max_blocks_per_seq: ", p.max_blocks_per_seq,
                     " must be >= 1 with block_table");
    if (p.b > 1 && p.block_table_batch_stride < p.max_blocks_per_seq)
      return invalid("block_table_batch_stride: ", p.block_table_batch_stride,
                     " is less than max_blocks_per_seq = ", p.max_blocks_per_seq,
                     " (rows of block_table would overlap)");
    const int64_t capacity = int64_t(p.max_blocks_per_seq) * p.page_block_size;
    if (p.seqlen_k > capacity)
      return invalid("seqlen_k: ", p.seqlen_k, " exceeds the paged capacity max_blocks_per_seq * ",
                     "page_block_size = ", p.max_blocks_per_seq, " * ", p.page_block_size, " = ",
                     capacity);
  }
  return Status::ok_status();
}

// Argument names of one strided tensor, for messages.
struct Names {
  const char* name;  // "q"
  const char* ptr;   // "q_ptr"
  const char* batch_stride;
  const char* row_stride;
  const char* head_stride;
};

// A q-like tensor: dense [b, seqlen_q, h, hd] or varlen [total_q, h, hd], with hd = d for q
// and dq, dv for o and dout.
TensorArg q_like(const FwdParams& p, bool varlen, const Names& n, const void* ptr, int64_t bs,
                 int64_t rs, int64_t hs, bool written, DType t, int hd) {
  std::vector<Dim> dims;
  if (!varlen) dims.push_back({n.batch_stride, "batch", p.b, bs});
  dims.push_back({n.row_stride, "row", varlen ? p.total_q : p.seqlen_q, rs});
  dims.push_back({n.head_stride, "head", p.h, hs});
  return strided(n.name, n.ptr, ptr, t, std::move(dims), hd, written);
}

// A k-like tensor: paged [num_blocks, page_block_size, h_k, hd], varlen [total_k, h_k, hd], or
// dense [batch, seqlen_k, h_k, hd] with batch = b (b_cache for the KV cache), hd = d for k and
// dk, dv for v and its gradient.
TensorArg k_like(const FwdParams& p, bool varlen, int batch, const Names& n, const void* ptr,
                 int64_t bs, int64_t rs, int64_t hs, bool written, DType t, int hd) {
  std::vector<Dim> dims;
  if (p.block_table != nullptr) {
    dims.push_back({n.batch_stride, "page", p.num_blocks, bs});
    dims.push_back({n.row_stride, "row", p.page_block_size, rs});
  } else if (varlen) {
    dims.push_back({n.row_stride, "row", p.total_k, rs});
  } else {
    dims.push_back({n.batch_stride, "batch", batch, bs});
    dims.push_back({n.row_stride, "row", p.seqlen_k, rs});
  }
  dims.push_back({n.head_stride, "head", p.h_k, hs});
  return strided(n.name, n.ptr, ptr, t, std::move(dims), hd, written);
}

// The fp8 descale factors: [b, h_k] per head (both strides free), [b, heads, blocks] per block
// (the block dim contiguous). fp32, read-only, moved as scalars (no 16-byte vectors).
void add_descale_tensors(const FwdParams& p, std::vector<TensorArg>* out) {
  auto per_head = [&](const char* name, const float* ptr, const char* bs_name, int64_t bs,
                      const char* hs_name, int64_t hs) {
    if (ptr == nullptr) return;
    TensorArg a = strided(name, name, ptr, DType::kFloat32,
                          {{bs_name, "batch", p.b, bs}, {hs_name, "head", p.h_k, hs}}, 1, false);
    a.vector_io = false;
    out->push_back(std::move(a));
  };
  per_head("q_descale", p.q_descale, "q_descale_batch_stride", p.q_descale_batch_stride,
           "q_descale_head_stride", p.q_descale_head_stride);
  per_head("k_descale", p.k_descale, "k_descale_batch_stride", p.k_descale_batch_stride,
           "k_descale_head_stride", p.k_descale_head_stride);
  per_head("v_descale", p.v_descale, "v_descale_batch_stride", p.v_descale_batch_stride,
           "v_descale_head_stride", p.v_descale_head_stride);
  auto per_block = [&](const char* name, const float* ptr, const char* bs_name, int64_t bs,
                       const char* hs_name, int64_t hs, int heads, int64_t blocks) {
    if (ptr == nullptr) return;
    TensorArg a = strided(name, name, ptr, DType::kFloat32,
                          {{bs_name, "batch", p.b, bs}, {hs_name, "head", heads, hs}}, blocks,
                          false);
    a.vector_io = false;
    out->push_back(std::move(a));
  };
  auto blocks = [](int rows, int block) { return block < 1 ? 0 : (int64_t(rows) + block - 1) / block; };
  per_block("q_block_descale", p.q_block_descale, "q_block_descale_batch_stride",
            p.q_block_descale_batch_stride, "q_block_descale_head_stride",
            p.q_block_descale_head_stride, p.h, blocks(p.seqlen_q, p.descale_block_m));
  per_block("k_block_descale", p.k_block_descale, "k_block_descale_batch_stride",
            p.k_block_descale_batch_stride, "k_block_descale_head_stride",
            p.k_block_descale_head_stride, p.h_k, blocks(p.seqlen_k, p.descale_block_n));
  per_block("v_block_descale", p.v_block_descale, "v_block_descale_batch_stride",
            p.v_block_descale_batch_stride, "v_block_descale_head_stride",
            p.v_block_descale_head_stride, p.h_k, blocks(p.seqlen_k, p.descale_block_n));
}

// The fp8 descale factors' values (host memory): each must be finite and > 0. Positive, because
// the FP8 kernel folds them into the softmax scale and keeps the row maximum of the unscaled
// scores (max(c s) = c max(s) only for c > 0); finite, because an infinite or NaN factor has no
// attention to compute.
Status check_descale_values(const FwdParams& p) {
  // n2 < 0: a per-head [n0, n1] tensor; else per block, [n0, n1, n2].
  auto check = [](const char* name, const float* ptr, int n0, int64_t s0, int n1, int64_t s1,
                  int64_t n2) -> Status {
    if (ptr == nullptr) return Status::ok_status();
    for (int i = 0; i < n0; ++i)
      for (int j = 0; j < n1; ++j)
        for (int64_t t = 0; t < std::max<int64_t>(n2, 1); ++t) {
          const float v = ptr[int64_t(i) * s0 + int64_t(j) * s1 + t];
          if (!(std::isfinite(v) && v > 0.f))
            return invalid(name, "[", i, "][", j, n2 < 0 ? std::string() : cat("][", t), "]: ", v,
                           " must be finite and > 0 (a descale multiplies the e4m3 values)");
        }
    return Status::ok_status();
  };
  auto blocks = [](int rows, int block) { return block < 1 ? 0 : (int64_t(rows) + block - 1) / block; };
  const Status checks[] = {
      check("q_descale", p.q_descale, p.b, p.q_descale_batch_stride, p.h_k,
            p.q_descale_head_stride, -1),
      check("k_descale", p.k_descale, p.b, p.k_descale_batch_stride, p.h_k,
            p.k_descale_head_stride, -1),
      check("v_descale", p.v_descale, p.b, p.v_descale_batch_stride, p.h_k,
            p.v_descale_head_stride, -1),
      check("q_block_descale", p.q_block_descale, p.b, p.q_block_descale_batch_stride, p.h,
            p.q_block_descale_head_stride, blocks(p.seqlen_q, p.descale_block_m)),
      check("k_block_descale", p.k_block_descale, p.b, p.k_block_descale_batch_stride, p.h_k,
            p.k_block_descale_head_stride, blocks(p.seqlen_k, p.descale_block_n)),
      check("v_block_descale", p.v_block_descale, p.b, p.v_block_descale_batch_stride, p.h_k,
            p.v_block_descale_head_stride, blocks(p.seqlen_k, p.descale_block_n))};
  for (const Status& s : checks)
    if (!s.ok()) return s;
  return Status::ok_status();
}

// The arguments every forward-shaped call has. `k_batch` is the batch extent of a contiguous
// dense k/v: b, or b_cache for the KV cache. `kv_written`: the KV cache appends into k/v;
// `o_written`: o and the LSE are outputs (forward) rather than inputs (backward).
void add_fwd_tensors(const FwdParams& p, bool varlen, int k_batch, bool kv_written,
                     bool o_written, std::vector<TensorArg>* out) {
  out->push_back(q_like(p, varlen, {"q", "q_ptr", "q_batch_stride", "q_row_stride",
                                    "q_head_stride"},
                        p.q_ptr, p.q_batch_stride, p.q_row_stride, p.q_head_stride, false,
                        p.dtype, p.d));
  out->push_back(k_like(p, varlen, k_batch,
                        {"k", "k_ptr", "k_batch_stride", "k_row_stride", "k_head_stride"},
                        p.k_ptr, p.k_batch_stride, p.k_row_stride, p.k_head_stride, kv_written,
                        p.dtype, p.d));
  out->push_back(k_like(p, varlen, k_batch,
                        {"v", "v_ptr", "v_batch_stride", "v_row_stride", "v_head_stride"},
                        p.v_ptr, p.v_batch_stride, p.v_row_stride, p.v_head_stride, kv_written,
                        p.dtype, p.dv));
  out->push_back(q_like(p, varlen, {"o", "o_ptr", "o_batch_stride", "o_row_stride",
                                    "o_head_stride"},
                        p.o_ptr, p.o_batch_stride, p.o_row_stride, p.o_head_stride, o_written,
                        p.out_dtype, p.dv));

  const Int128 rows_q = varlen ? Int128(p.total_q) : Int128(p.b) * p.seqlen_q;
  if (p.softmax_lse_ptr != nullptr)
    out->push_back(array("softmax_lse", "softmax_lse_ptr", p.softmax_lse_ptr, 4, rows_q * p.h,
                         o_written));
  if (p.p_ptr != nullptr)
    out->push_back(array("p", "p_ptr", p.p_ptr, dtype_size(p.dtype),
                         Int128(p.b) * p.h * p.seqlen_q * p.seqlen_k, true));
  if (p.alibi_slopes != nullptr) {
    const Int128 n = p.alibi_slopes_batch_stride == 0 || p.b == 0
                           ? Int128(p.h)
                           : Int128(p.b - 1) * p.alibi_slopes_batch_stride + p.h;
    out->push_back(array("alibi_slopes", "alibi_slopes", p.alibi_slopes, 4, n, false));
  }
  if (p.sinks != nullptr) out->push_back(array("sinks", "sinks", p.sinks, 4, p.h, false));
  add_descale_tensors(p, out);
  if (p.cu_seqlens_q != nullptr)
    out->push_back(array("cu_seqlens_q", "cu_seqlens_q", p.cu_seqlens_q, 4, p.b + Int128(1),
                         false));
  if (p.cu_seqlens_k != nullptr)
    out->push_back(array("cu_seqlens_k", "cu_seqlens_k", p.cu_seqlens_k, 4, p.b + Int128(1),
                         false));
  if (p.seqused_k != nullptr)
    out->push_back(array("seqused_k", "seqused_k", p.seqused_k, 4, p.b, false));
  if (p.block_table != nullptr) {
    const Int128 n = p.b == 0 ? 0
                                : Int128(p.b - 1) * p.block_table_batch_stride +
                                      p.max_blocks_per_seq;
    out->push_back(array("block_table", "block_table", p.block_table, 4, n, false));
  }
}

// ------------------------------------------------------------ index values (host memory) --

// cu_seqlens: starts at 0, non-decreasing, no sequence longer than the given maximum, and
// (when `total` >= 0) ending at the number of rows of the packed tensor.
Status check_cu_seqlens(const char* name, const int* cu, int b, const char* max_name, int max_len,
                        const char* total_name, int total) {
  if (cu[0] != 0) return invalid(name, "[0]: ", cu[0], " must be 0");
  for (int i = 0; i < b; ++i) {
    const int64_t len = int64_t(cu[i + 1]) - cu[i];
    if (len < 0)
      return invalid(name, "[", i + 1, "]: ", cu[i + 1], " is less than ", name, "[", i,
                     "] = ", cu[i], " (must be non-decreasing)");
    if (len > max_len)
      return invalid(name, "[", i + 1, "]: sequence ", i, " has length ", len, " > ", max_name,
                     " = ", max_len, " (", max_name, " must be the maximum length)");
  }
  if (total >= 0 && cu[b] != total)
    return invalid(name, "[", b, "]: ", cu[b], " != ", total_name, " = ", total,
                   " (the last entry is the number of packed rows)");
  return Status::ok_status();
}

// Pages [0, ceil(keys / page)) of sequence i must name real pages.
Status check_pages_used(const FwdParams& p, int i, int64_t keys) {
  const int64_t used = (keys + p.page_block_size - 1) / p.page_block_size;
  const int* row = p.block_table + int64_t(i) * p.block_table_batch_stride;
  for (int64_t j = 0; j < used; ++j)
    if (row[j] < 0 || row[j] >= p.num_blocks)
      return invalid("block_table[", i, "][", j, "]: ", row[j],
                     " is out of range [0, num_blocks = ", p.num_blocks, ") (sequence ", i,
                     " uses ", used, " pages for ", keys, " keys)");
  return Status::ok_status();
}

// Values of cu_seqlens, seqused_k and block_table for mha_fwd / mha_varlen_fwd / mha_bwd.
Status check_fwd_values(const FwdParams& p, bool varlen) {
  const bool paged = p.block_table != nullptr;
  if (varlen) {
    if (Status s = check_cu_seqlens("cu_seqlens_q", p.cu_seqlens_q, p.b, "seqlen_q", p.seqlen_q,
                                    "total_q", p.total_q);
        !s.ok())
      return s;
    if (Status s = check_cu_seqlens("cu_seqlens_k", p.cu_seqlens_k, p.b, "seqlen_k", p.seqlen_k,
                                    "total_k", paged ? -1 : p.total_k);
        !s.ok())
      return s;
  }
  for (int i = 0; i < p.b; ++i) {
    const int64_t len_k =
        varlen ? int64_t(p.cu_seqlens_k[i + 1]) - p.cu_seqlens_k[i] : int64_t(p.seqlen_k);
    int64_t keys = len_k;
    if (p.seqused_k != nullptr) {
      // A paged sequence may use keys past its cu_seqlens_k length as long as its pages hold
      // them; seqlen_k (<= the paged capacity) stays an upper bound because tiles and splits
      // are sized from it.
      const bool own_length = varlen && !paged;
      const int64_t bound = own_length ? len_k : int64_t(p.seqlen_k);
      keys = p.seqused_k[i];
      if (keys < 0 || keys > bound)
        return invalid("seqused_k[", i, "]: ", keys, " is out of range [0, ", bound, "] (",
                       own_length ? cat("the key length of sequence ", i) : std::string("seqlen_k"),
                       ")");
    }
    if (paged)
      if (Status s = check_pages_used(p, i, keys); !s.ok()) return s;
  }
  return Status::ok_status();
}

Status validate_fwd_like(const FwdParams& p, Backend be, bool varlen, Entry e) {
  if (Status s = check_dtype(p.dtype, be); !s.ok()) return s;
  if (Status s = check_fp8(p, e); !s.ok()) return s;
  if (Status s = check_sizes(p, be); !s.ok()) return s;
  if (Status s = check_options(p, e); !s.ok()) return s;
  return check_modes(p, e, varlen);
}

}  // namespace

// -------------------------------------------------------------------------- entry points --

Status validate_fwd(const FwdParams& p, Backend be, bool varlen) {
  if (Status s = validate_fwd_like(p, be, varlen, Entry::kFwd); !s.ok()) return s;
  std::vector<TensorArg> args;
  add_fwd_tensors(p, varlen, p.b, /*kv_written=*/false, /*o_written=*/true, &args);
  if (Status s = check_tensors(args, be); !s.ok()) return s;
  if (be != Backend::kCpu) return Status::ok_status();
  if (Status s = check_fwd_values(p, varlen); !s.ok()) return s;
  return check_descale_values(p);
}

Status validate_bwd(const BwdParams& p, Backend be, bool varlen) {
  if (Status s = validate_fwd_like(p, be, varlen, Entry::kBwd); !s.ok()) return s;
  const int64_t rows_q = varlen ? int64_t(p.total_q) : int64_t(p.b) * p.seqlen_q;
  if (p.softmax_lse_ptr == nullptr && rows_q > 0)
    return invalid("softmax_lse_ptr: must not be null for ", entry_name(Entry::kBwd, varlen),
                   " (the forward's LSE is an input of the backward)");
  if (p.dsinks != nullptr && p.sinks == nullptr)
    return invalid("dsinks: must be null when sinks is null (there is no sink to differentiate)");
  std::vector<TensorArg> args;
  add_fwd_tensors(p, varlen, p.b, /*kv_written=*/false, /*o_written=*/false, &args);
  // Each gradient has the geometry of the tensor it belongs to; its elements are fp32 with
  // dqkv_fp32, else dtype.
  const DType grad_t = p.dqkv_fp32 ? DType::kFloat32 : p.dtype;
  args.push_back(q_like(p, varlen,
                        {"dout", "do_ptr", "do_batch_stride", "do_row_stride", "do_head_stride"},
                        p.do_ptr, p.do_batch_stride, p.do_row_stride, p.do_head_stride, false,
                        p.dtype, p.dv));
  args.push_back(q_like(p, varlen,
                        {"dq", "dq_ptr", "dq_batch_stride", "dq_row_stride", "dq_head_stride"},
                        p.dq_ptr, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride, true,
                        grad_t, p.d));
  args.push_back(k_like(p, varlen, p.b,
                        {"dk", "dk_ptr", "dk_batch_stride", "dk_row_stride", "dk_head_stride"},
                        p.dk_ptr, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, true,
                        grad_t, p.d));
  args.push_back(k_like(p, varlen, p.b,
                        {"dv", "dv_ptr", "dv_batch_stride", "dv_row_stride", "dv_head_stride"},
                        p.dv_ptr, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, true,
                        grad_t, p.dv));
  if (p.dsinks != nullptr) args.push_back(array("dsinks", "dsinks", p.dsinks, 4, p.h, true));
  if (Status s = check_tensors(args, be); !s.ok()) return s;
  if (be == Backend::kCpu) return check_fwd_values(p, varlen);
  return Status::ok_status();
}

namespace {

// KV-cache arguments that need no values: cache geometry, append and rotary options.
Status check_kvcache_options(const KVCacheParams& p) {
  if (p.block_table != nullptr) {
    if (p.b_cache != 0 && p.b_cache != p.b)
      return invalid("b_cache: ", p.b_cache, " must be 0 or b = ", p.b,
                     " with a paged cache (block_table maps each sequence to its pages)");
    if (p.cache_batch_idx != nullptr)
      return invalid("cache_batch_idx: must be null with a paged cache (block_table maps each "
                     "sequence to its pages)");
    if (p.cache_leftpad != nullptr)
      return invalid("cache_leftpad: must be null with a paged cache (flash_attn's rule)");
  } else if (p.cache_batch_idx == nullptr && p.b_cache < p.b) {
    return invalid("b_cache: ", p.b_cache, " is less than b = ", p.b,
                   " (without cache_batch_idx sequence i uses cache row i)");
  } else if (p.cache_batch_idx != nullptr && p.b > 0 && p.b_cache < 1) {
    return invalid("b_cache: ", p.b_cache, " must be >= 1 (cache_batch_idx indexes the cache)");
  }

  if (p.cache_seqlens == nullptr && p.cache_seqlen < 0)
    return invalid("cache_seqlen: ", p.cache_seqlen, " is negative");
  if (p.seqlen_knew < 0) return invalid("seqlen_knew: ", p.seqlen_knew, " is negative");
  if ((p.knew_ptr == nullptr) != (p.vnew_ptr == nullptr))
    return p.knew_ptr == nullptr
               ? invalid("knew_ptr: must be given together with vnew_ptr (both or neither)")
               : invalid("vnew_ptr: must be given together with knew_ptr (both or neither)");
  if (p.knew_ptr == nullptr && p.seqlen_knew > 0)
    return invalid("knew_ptr: must not be null when seqlen_knew = ", p.seqlen_knew, " > 0");

  if (p.rotary_cos != nullptr || p.rotary_sin != nullptr) {
    if (p.dtype == DType::kFloat8E4M3)
      return invalid(p.rotary_cos != nullptr ? "rotary_cos" : "rotary_sin",
                     ": rotary is not available with an fp8 cache (the rotated keys would need "
                     "requantizing with a descale the call does not have; rotate and quantize "
                     "before appending)");
    if (p.rotary_cos == nullptr)
      return invalid("rotary_cos: must be given together with rotary_sin (both or neither)");
    if (p.rotary_sin == nullptr)
      return invalid("rotary_sin: must be given together with rotary_cos (both or neither)");
    if (p.knew_ptr == nullptr)
      return invalid("rotary_cos: rotary needs new keys (knew_ptr/vnew_ptr): it rotates them as "
                     "they are appended");
    if (p.rotary_dim < 2 || p.rotary_dim % 2 != 0 || p.rotary_dim > p.d)
      return invalid("rotary_dim: ", p.rotary_dim, " must be even and in [2, d = ", p.d, "]");
    if (p.seqlen_ro < 1) return invalid("seqlen_ro: ", p.seqlen_ro, " must be >= 1");
  }
  return Status::ok_status();
}

}  // namespace

Status validate_kvcache(const KVCacheParams& p, Backend be) {
  if (Status s = validate_fwd_like(p, be, /*varlen=*/false, Entry::kKVCache); !s.ok()) return s;
  if (Status s = check_kvcache_options(p); !s.ok()) return s;
  const bool paged = p.block_table != nullptr;
  const bool rotary = p.rotary_cos != nullptr;
  const int knew = p.knew_ptr != nullptr ? p.seqlen_knew : 0;

  std::vector<TensorArg> args;
  add_fwd_tensors(p, /*varlen=*/false, p.b_cache, /*kv_written=*/knew > 0, /*o_written=*/true,
                  &args);
  if (p.knew_ptr != nullptr) {
    const DType t = p.dtype;
    args.push_back(strided("knew", "knew_ptr", p.knew_ptr, t,
                           {{"knew_batch_stride", "batch", p.b, p.knew_batch_stride},
                            {"knew_row_stride", "row", p.seqlen_knew, p.knew_row_stride},
                            {"knew_head_stride", "head", p.h_k, p.knew_head_stride}},
                           p.d, false));
    args.push_back(strided("vnew", "vnew_ptr", p.vnew_ptr, t,
                           {{"vnew_batch_stride", "batch", p.b, p.vnew_batch_stride},
                            {"vnew_row_stride", "row", p.seqlen_knew, p.vnew_row_stride},
                            {"vnew_head_stride", "head", p.h_k, p.vnew_head_stride}},
                           p.dv, false));
  }
  if (rotary) {
    const Int128 n = Int128(p.seqlen_ro) * (p.rotary_dim / 2);
    args.push_back(array("rotary_cos", "rotary_cos", p.rotary_cos, dtype_size(p.dtype), n, false));
    args.push_back(array("rotary_sin", "rotary_sin", p.rotary_sin, dtype_size(p.dtype), n, false));
  }
  if (p.cache_seqlens != nullptr)
    args.push_back(array("cache_seqlens", "cache_seqlens", p.cache_seqlens, 4, p.b, false));
  if (p.cache_batch_idx != nullptr)
    args.push_back(array("cache_batch_idx", "cache_batch_idx", p.cache_batch_idx, 4, p.b, false));
  if (p.cache_leftpad != nullptr)
    args.push_back(array("cache_leftpad", "cache_leftpad", p.cache_leftpad, 4, p.b, false));
  if (Status s = check_tensors(args, be); !s.ok()) return s;

  const KVIndexLimits lim = kvcache_index_limits(p);

  // With one scalar length for every sequence the value checks need no index array.
  if (p.cache_seqlens == nullptr) {
    const KVIndexViolation v = check_kv_scalars(lim, 0, p.cache_seqlen, nullptr, nullptr);
    if (v.rule != kKVIndexOk) return kvcache_index_error(p, v);
  }
  if (be != Backend::kCpu) return Status::ok_status();
  if (Status s = check_descale_values(p); !s.ok()) return s;

  // Host memory: the index arrays' values, sequence by sequence in the order the GPU's
  // device-side check reports them (common/kvcache_index.h).
  std::vector<char> row_taken;
  if (p.cache_batch_idx != nullptr && knew > 0) row_taken.assign(size_t(p.b_cache), 0);
  for (int i = 0; i < p.b; ++i) {
    const int cs = p.cache_seqlens != nullptr ? p.cache_seqlens[i] : p.cache_seqlen;
    const KVIndexViolation v = check_kv_scalars(lim, i, cs, p.cache_leftpad, p.cache_batch_idx);
    if (v.rule != kKVIndexOk) return kvcache_index_error(p, v);
    if (p.cache_batch_idx != nullptr && knew > 0) {
      // Two sequences appending into one cache row would race and overwrite each other. (Not
      // checked on the GPU: it would need a b_cache-sized table per call; docs/kvcache.md.)
      const int row = p.cache_batch_idx[i];
      if (row_taken[row])
        return invalid("cache_batch_idx[", i, "]: ", row,
                       " repeats an earlier entry; sequences that append new keys need "
                       "distinct cache rows");
      row_taken[row] = 1;
    }
    if (paged) {
      const int64_t used = kv_pages_used(int64_t(cs) + knew, p.page_block_size);
      const int* row = p.block_table + int64_t(i) * p.block_table_batch_stride;
      for (int64_t j = 0; j < used; ++j)
        if (row[j] < 0 || row[j] >= p.num_blocks) {
          KVIndexViolation bad;
          bad.rule = kKVBlockTableRange;
          bad.seq = i;
          bad.value = row[j];
          bad.cache_len = cs;
          bad.column = int(j);
          return kvcache_index_error(p, bad);
        }
    }
  }
  return Status::ok_status();
}

KVIndexLimits kvcache_index_limits(const KVCacheParams& p) {
  const int knew = p.knew_ptr != nullptr ? p.seqlen_knew : 0;
  const bool q_advances = p.is_causal || p.window_size_left >= 0 || p.window_size_right >= 0;
  const int64_t q_positions = q_advances ? p.seqlen_q : std::min(p.seqlen_q, 1);
  KVIndexLimits lim;
  lim.capacity = p.seqlen_k;
  lim.seqlen_knew = knew;
  lim.rotary = p.rotary_cos != nullptr;
  // Rotary positions: new key t at cache_seqlens[i] + t; query r at cache_seqlens[i] + r when
  // causal or local, else every query at cache_seqlens[i]. All must be rows of the table.
  lim.ro_needed = std::max<int64_t>(knew, q_positions);
  lim.seqlen_ro = p.seqlen_ro;
  lim.b_cache = p.b_cache;
  return lim;
}

Status kvcache_index_error(const KVCacheParams& p, const KVIndexViolation& v) {
  const KVIndexLimits lim = kvcache_index_limits(p);
  const bool scalar = p.cache_seqlens == nullptr;
  const std::string len_name = scalar ? std::string("cache_seqlen")
                                      : cat("cache_seqlens[", v.seq, "]");
  const int64_t keys = int64_t(v.cache_len) + lim.seqlen_knew;
  switch (v.rule) {
    case kKVSeqlenNegative:
      return invalid(len_name, ": ", v.value, " is negative");
    case kKVOverCapacity:
      if (p.block_table != nullptr) {
        // flash_attn names the block table here: it is the argument that must grow.
        const int64_t held = int64_t(p.max_blocks_per_seq) * p.page_block_size;
        return invalid("block_table: ", scalar ? std::string("every sequence")
                                               : cat("sequence ", v.seq),
                       " needs ", len_name, " + seqlen_knew = ", v.cache_len, " + ",
                       lim.seqlen_knew, " = ", keys, " keys, more than the paged capacity of ",
                       lim.capacity, " (max_blocks_per_seq ", p.max_blocks_per_seq,
                       " x page_block_size ", p.page_block_size, " = ", held,
                       "); give block_table more columns");
      }
      return invalid(len_name, ": ", v.value, " + seqlen_knew ", lim.seqlen_knew,
                     " exceeds the cache capacity seqlen_k = ", lim.capacity);
    case kKVRotaryTooShort:
      if (scalar)
        return invalid("seqlen_ro: ", p.seqlen_ro, " is too short: positions up to cache_seqlen ",
                       v.cache_len, " + ", lim.ro_needed, " - 1 are rotated");
      return invalid("seqlen_ro: ", p.seqlen_ro, " is too short: sequence ", v.seq,
                     " rotates positions up to cache_seqlens[", v.seq, "] = ", v.cache_len, " + ",
                     lim.ro_needed, " - 1");
    case kKVLeftpadRange:
      return invalid("cache_leftpad[", v.seq, "]: ", v.value, " is out of range [0, ", len_name,
                     " = ", v.cache_len, "]");
    case kKVBatchIdxRange:
      return invalid("cache_batch_idx[", v.seq, "]: ", v.value, " is out of range [0, b_cache = ",
                     p.b_cache, ")");
    case kKVBlockTableRange:
      return invalid("block_table[", v.seq, "][", v.column, "]: ", v.value,
                     " is out of range [0, num_blocks = ", p.num_blocks, ") (sequence ", v.seq,
                     " uses ", kv_pages_used(keys, p.page_block_size), " pages for ", keys,
                     " keys)");
    default:
      return Status::internal(cat("mha_fwd_kvcache: unknown index rule ", v.rule));
  }
}

Status validate_combine(const CombineParams& p, Backend be) {
  if (!known_dtype(p.dtype) || p.dtype == DType::kFloat8E4M3)
    return invalid("dtype: ", dtype_name(p.dtype),
                   " is not an output type of mha_combine (fp32, fp16, bf16)");
  if (p.num_splits < 1) return invalid("num_splits: ", p.num_splits, " must be >= 1");
  if (p.b < 0) return invalid("b: ", p.b, " is negative (b = 0 is an empty no-op call)");
  if (p.seqlen_q < 0) return invalid("seqlen_q: ", p.seqlen_q, " is negative");
  if (p.h < 1) return invalid("h: ", p.h, " must be >= 1");
  if (p.d < 1 || p.d > max_head_dim(be))
    return invalid("d: ", p.d, " is out of range [1, ", max_head_dim(be), "]",
                   head_dim_limit_note(be));
  const Int128 rows = Int128(p.b) * p.seqlen_q * p.h;
  std::vector<TensorArg> args;
  args.push_back(array("out_partial", "out_partial", p.out_partial, 4,
                       rows * p.num_splits * p.d, false));
  args.push_back(array("lse_partial", "lse_partial", p.lse_partial, 4, rows * p.num_splits,
                       false));
  TensorArg out = strided("out", "out", p.out, p.dtype,
                          {{"out_batch_stride", "batch", p.b, p.out_batch_stride},
                           {"out_row_stride", "row", p.seqlen_q, p.out_row_stride},
                           {"out_head_stride", "head", p.h, p.out_head_stride}},
                          p.d, true);
  // The merge is elementwise over fp32 partials: element alignment is all it needs.
  out.vector_io = false;
  args.push_back(std::move(out));
  if (p.lse != nullptr) args.push_back(array("lse", "lse", p.lse, 4, rows, true));
  return check_tensors(args, be);
}

}  // namespace flashattn::detail
