// The torch adapter: tensors in, flashattn params out, and the `torch.ops.flashattn.*` custom ops.
//
// Deliberately thin. Each op checks what only the tensors know (rank, shape agreement between
// arguments, dtype, device, a contiguous last dimension), allocates its outputs with torch (so
// they come from torch's caching allocator and CUDA graph capture records them), fills one
// params struct of include/flashattn/params.h and calls the library, which validates everything
// else and runs on the GPU or on the CPU backend depending on where the pointers live. A library
// error becomes a Python exception carrying the library's message:
//   kInvalidArgument (and the adapter's own checks) -> flashattn.InvalidArgumentError, a
//   subclass of both ValueError and RuntimeError; kNotSupported -> NotImplementedError; others
//   -> RuntimeError.
//
// Ops (schemas in TORCH_LIBRARY below; fake implementations live in python/flashattn/_ops.py):
//   fwd, varlen_fwd         forward; return (out, softmax_lse, S_dmask, rng_state); their
//                           `deterministic` is not used here but by the backward that
//                           python/flashattn/_ops.py registers for them, which reads it from
//                           the op's inputs
//   bwd, varlen_bwd         backward; return (dq, dk, dv, dsinks); dsinks is float32 (nheads,)
//                           with sinks, an empty float32 tensor without
//   bwd_into                dense backward into caller buffers dq, dk, dv (q's dtype or
//                           float32), overwritten or added to (context parallelism sums
//                           per-block gradients in fp32); returns nothing
//   fwd_kvcache             inference against a KV cache, appending in place; (out, softmax_lse)
//   fp8_fwd                 FP8 (float8_e4m3fn) forward, dense or varlen (paged or not), with
//                           descales; (out in bfloat16 or float16, softmax_lse); no autograd
//                           (FP8 has no backward)
// rng_state is a host int64 [2] tensor (Philox seed, offset) so the backward can pass it to the
// library without reading device memory (no host synchronization). Every op but bwd_into takes
// `sinks` (float32 (nheads,), optional, last in the schema with a None default so older calls
// keep working). v may have a head dim of its own; out, dout and dv have v's.
#include <torch/csrc/Exceptions.h>
#include <torch/extension.h>

#include <cmath>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "flashattn/flashattn.h"

#if defined(FLASHATTN_TORCH_CUDA)
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#endif
#include <ATen/CPUGeneratorImpl.h>

namespace flashattn_torch {

using at::Tensor;
using c10::optional;

// ------------------------------------------------------------------------------- helpers --

// The Python type of every bad-argument error: a subclass of both ValueError (this package's
// documented exception for bad input) and RuntimeError (what flash_attn raises for every failed
// check, so code and test suites written against flash_attn keep catching it). Created when the
// module is imported (PYBIND11_MODULE below) and exported as flashattn.InvalidArgumentError.
PyObject* g_invalid_argument_type = nullptr;

// torch turns a PyTorchError into the Python type it names, wherever the op was called from.
struct InvalidArgument : torch::PyTorchError {
  using PyTorchError::PyTorchError;
  PyObject* python_type() override {
    return g_invalid_argument_type != nullptr ? g_invalid_argument_type : PyExc_ValueError;
  }
};

// Raises InvalidArgument with the concatenated message parts unless `cond` holds.
#define FA_CHECK_ARG(cond, ...)                                         \
  do {                                                                  \
    if (C10_UNLIKELY(!(cond)))                                          \
      throw ::flashattn_torch::InvalidArgument(::c10::str(__VA_ARGS__)); \
  } while (0)

// Raises the Python exception matching a library status, with the library's message.
void raise_if_error(const flashattn::Status& s, const char* op) {
  switch (s.code()) {
    case flashattn::StatusCode::kSuccess:
      return;
    case flashattn::StatusCode::kInvalidArgument:
      FA_CHECK_ARG(false, "flashattn.", op, ": ", s.message());
    case flashattn::StatusCode::kNotSupported:
      TORCH_CHECK_NOT_IMPLEMENTED(false, "flashattn.", op, ": ", s.message());
    default:
      TORCH_CHECK(false, "flashattn.", op, ": ", s.to_string());
  }
}

flashattn::DType to_dtype(const Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kHalf: return flashattn::DType::kFloat16;
    case at::kBFloat16: return flashattn::DType::kBFloat16;
    case at::kFloat:
      FA_CHECK_ARG(t.device().is_cpu(), "flashattn.", op,
                   ": float32 inputs run on the CPU backend only; on the GPU use float16 or "
                   "bfloat16");
      return flashattn::DType::kFloat32;
    default:
      FA_CHECK_ARG(false, "flashattn.", op, ": dtype ", t.scalar_type(),
                   " is not supported (float16, bfloat16; float32 on CPU)");
  }
  return flashattn::DType::kBFloat16;
}

std::string shape_str(const Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

// Every tensor argument of one call lives on the device of q (the library also checks host vs
// device, but not which GPU, and ops need one device to pick the stream and the guard).
void check_device(const Tensor& q, const Tensor& t, const char* name, const char* op) {
  FA_CHECK_ARG(t.device() == q.device(), "flashattn.", op, ": ", name, " is on ",
               t.device(), " but q is on ", q.device(),
               "; all tensors of a call must be on one device");
}

void check_opt_device(const Tensor& q, const optional<Tensor>& t, const char* name,
                      const char* op) {
  if (t.has_value()) check_device(q, *t, name, op);
}

void check_rank(const Tensor& t, int64_t rank, const char* name, const char* layout,
                const char* op) {
  FA_CHECK_ARG(t.dim() == rank, "flashattn.", op, ": ", name, " must have shape ", layout,
               ", got ", shape_str(t));
}

void check_last_contiguous(const Tensor& t, const char* name, const char* op) {
  FA_CHECK_ARG(t.dim() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1, "flashattn.", op, ": ",
               name, " must have a contiguous last dimension (stride(-1) == 1), got strides ",
               t.strides());
}

void check_same_dtype(const Tensor& q, const Tensor& t, const char* name, const char* op) {
  FA_CHECK_ARG(t.scalar_type() == q.scalar_type(), "flashattn.", op, ": ", name,
               " has dtype ", t.scalar_type(), " but q has ", q.scalar_type(),
               "; q, k, v (and dout) must share one dtype");
}

// int32 index arrays (cu_seqlens, seqused_k, block_table, cache_seqlens, ...).
void check_index(const Tensor& q, const Tensor& t, const char* name, int64_t rank,
                 const char* op) {
  check_device(q, t, name, op);
  FA_CHECK_ARG(t.scalar_type() == at::kInt, "flashattn.", op, ": ", name,
               " must be int32, got ", t.scalar_type());
  FA_CHECK_ARG(t.dim() == rank, "flashattn.", op, ": ", name, " must have ", rank,
               " dimension(s), got ", shape_str(t));
  check_last_contiguous(t, name, op);
}

// ALiBi slopes: fp32, [h] or [b, h] (flash_attn's rule).
void set_alibi(flashattn::FwdParams& p, const Tensor& q, const optional<Tensor>& slopes,
               const char* op) {
  if (!slopes.has_value()) return;
  const Tensor& s = *slopes;
  check_device(q, s, "alibi_slopes", op);
  FA_CHECK_ARG(s.scalar_type() == at::kFloat, "flashattn.", op,
               ": alibi_slopes must be float32, got ", s.scalar_type());
  FA_CHECK_ARG((s.dim() == 1 && s.size(0) == p.h) ||
                   (s.dim() == 2 && s.size(0) == p.b && s.size(1) == p.h),
               "flashattn.", op, ": alibi_slopes must have shape (nheads,) = (", p.h,
               ",) or (batch, nheads) = (", p.b, ", ", p.h, "), got ", shape_str(s));
  check_last_contiguous(s, "alibi_slopes", op);
  p.alibi_slopes = s.data_ptr<float>();
  p.alibi_slopes_batch_stride = s.dim() == 2 ? s.stride(0) : 0;
}

// seqused_k: int32 (batch,), the keys each sequence uses.
template <class Params>
void set_seqused_k(Params& p, const Tensor& q, const optional<Tensor>& seqused_k,
                   const char* op) {
  if (!seqused_k.has_value()) return;
  check_index(q, *seqused_k, "seqused_k", 1, op);
  p.seqused_k = seqused_k->data_ptr<int>();
}

// Paged K / V: block_table int32 (batch, max_blocks_per_seq) into pages of k, which is
// (num_blocks, page_block_size, nheads_k, headdim).
void set_pages(flashattn::FwdParams& p, const Tensor& q, const optional<Tensor>& block_table,
               const Tensor& k, const char* op) {
  if (!block_table.has_value()) return;
  check_index(q, *block_table, "block_table", 2, op);
  p.block_table = block_table->data_ptr<int>();
  p.block_table_batch_stride = block_table->stride(0);
  p.max_blocks_per_seq = block_table->size(1);
  p.num_blocks = k.size(0);
  p.page_block_size = k.size(1);
}

// Attention sinks: fp32 (h,), one logit per query head, contiguous.
void set_sinks(flashattn::FwdParams& p, const Tensor& q, const optional<Tensor>& sinks,
               const char* op) {
  if (!sinks.has_value()) return;
  const Tensor& s = *sinks;
  check_device(q, s, "sinks", op);
  FA_CHECK_ARG(s.scalar_type() == at::kFloat, "flashattn.", op, ": sinks must be float32, got ",
               s.scalar_type());
  FA_CHECK_ARG(s.dim() == 1 && s.size(0) == p.h, "flashattn.", op,
               ": sinks must have shape (nheads,) = (", p.h, ",), got ", shape_str(s));
  check_last_contiguous(s, "sinks", op);
  p.sinks = s.data_ptr<float>();
}

// The gradient of the sinks a backward returns: float32 (nheads,) when there are sinks, else an
// empty float32 tensor on q's device (python/flashattn/_ops.py's fakes allocate the same).
Tensor dsinks_like(const Tensor& q, const optional<Tensor>& sinks) {
  if (sinks.has_value()) return at::empty(sinks->sizes(), sinks->options());
  return at::empty({0}, q.options().dtype(at::kFloat));
}

// out / dout of q's shape with v's head dim.
std::vector<int64_t> out_shape(const Tensor& q, const Tensor& v) {
  std::vector<int64_t> s(q.sizes().begin(), q.sizes().end());
  s.back() = v.size(-1);
  return s;
}

// Score/mask options shared by every op.
void set_options(flashattn::FwdParams& p, double softmax_scale, bool causal, int64_t window_left,
                 int64_t window_right, double softcap) {
  p.softmax_scale = static_cast<float>(softmax_scale);
  p.is_causal = causal;
  p.window_size_left = static_cast<int>(window_left);
  p.window_size_right = static_cast<int>(window_right);
  p.softcap = static_cast<float>(softcap);
}

// q/k/v/o style tensors: dense [b, s, h, d] (batch, row, head strides) or varlen [total, h, d]
// (no batch stride).
struct Strides {
  int64_t batch, row, head;
};
Strides strides_of(const Tensor& t) {
  if (t.dim() == 4) return {t.stride(0), t.stride(1), t.stride(2)};
  return {0, t.stride(0), t.stride(1)};
}

#define FA_SET_STRIDES(p, prefix, t)                 \
  do {                                               \
    const Strides st_ = strides_of(t);               \
    (p).prefix##_batch_stride = st_.batch;           \
    (p).prefix##_row_stride = st_.row;               \
    (p).prefix##_head_stride = st_.head;             \
  } while (0)

// Makes q's device current and hands the library torch's current stream, so kernels are ordered
// with the surrounding torch work and are recorded by CUDA graph capture.
class DeviceScope {
 public:
  DeviceScope(const Tensor& q, flashattn::FwdParams& p) {
#if defined(FLASHATTN_TORCH_CUDA)
    if (q.is_cuda()) {
      guard_.emplace(q.device());
      p.stream = at::cuda::getCurrentCUDAStream(q.device().index()).stream();
    }
#else
    TORCH_CHECK_NOT_IMPLEMENTED(!q.is_cuda(),
                                "flashattn: this build of the torch extension has no CUDA "
                                "support (built against a CPU-only torch or without nvcc)");
    (void)p;
#endif
  }

 private:
#if defined(FLASHATTN_TORCH_CUDA)
  optional<c10::cuda::CUDAGuard> guard_;
#endif
};

// Philox seed and offset for dropout, from torch's generator of q's device, advancing it past
// the counters this call uses (b * h of them, see src/common/philox.h), so consecutive calls draw
// independent masks and torch.manual_seed reproduces them.
Tensor draw_rng_state(const Tensor& q, int64_t b, int64_t h, double dropout_p, const char* op) {
  Tensor rng = at::zeros({2}, at::TensorOptions().dtype(at::kLong).device(at::kCPU));
  if (dropout_p <= 0.0) return rng;
  uint64_t seed = 0, offset = 0;
  if (q.is_cuda()) {
#if defined(FLASHATTN_TORCH_CUDA)
    // Under capture torch hands out device-side seed/offset that change at each replay; the
    // library takes host values, so a captured graph would replay one fixed mask forever.
    TORCH_CHECK_NOT_IMPLEMENTED(
        c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None,
        "flashattn.",
        op, ": dropout_p > 0 is not supported under CUDA graph capture (the library takes a host "
        "Philox seed/offset, so every replay would reuse one dropout mask)");
    auto* impl = at::check_generator<at::CUDAGeneratorImpl>(
        at::cuda::detail::getDefaultCUDAGenerator(q.device().index()));
    std::lock_guard<std::mutex> lock(impl->mutex_);
    // torch advances offsets in multiples of 4.
    const uint64_t increment = ((uint64_t(b) * uint64_t(h) + 3) / 4) * 4;
    std::tie(seed, offset) = impl->philox_engine_inputs(increment);
#endif
  } else {
    auto* impl = at::check_generator<at::CPUGeneratorImpl>(at::detail::getDefaultCPUGenerator());
    std::lock_guard<std::mutex> lock(impl->mutex_);
    seed = impl->random64();
    offset = 0;
  }
  auto* r = rng.data_ptr<int64_t>();
  r[0] = static_cast<int64_t>(seed);
  r[1] = static_cast<int64_t>(offset);
  return rng;
}

void set_rng(flashattn::FwdParams& p, double dropout_p, const Tensor& rng_state, const char* op) {
  p.p_dropout = static_cast<float>(dropout_p);
  if (dropout_p <= 0.0) return;
  FA_CHECK_ARG(rng_state.device().is_cpu() && rng_state.scalar_type() == at::kLong &&
                   rng_state.numel() == 2,
               "flashattn.", op,
               ": rng_state must be the forward's host int64 tensor of 2 values");
  const Tensor r = rng_state.contiguous();
  p.philox_seed = static_cast<uint64_t>(r.data_ptr<int64_t>()[0]);
  p.philox_offset = static_cast<uint64_t>(r.data_ptr<int64_t>()[1]);
}

int64_t round_up_128(int64_t x) { return (x + 127) / 128 * 128; }

// ---------------------------------------------------------------------------------- fwd --

// q, k, v, o and sizes of a forward call (dense or varlen, paged or not).
void set_qkvo(flashattn::FwdParams& p, const Tensor& q, const Tensor& k, const Tensor& v,
              const Tensor& out, const char* op) {
  p.dtype = to_dtype(q, op);
  p.dv = v.size(-1);
  p.q_ptr = q.data_ptr();
  p.k_ptr = k.data_ptr();
  p.v_ptr = v.data_ptr();
  p.o_ptr = out.data_ptr();
  FA_SET_STRIDES(p, q, q);
  FA_SET_STRIDES(p, k, k);
  FA_SET_STRIDES(p, v, v);
  FA_SET_STRIDES(p, o, out);
  if (k.dim() == 4 && q.dim() == 3) {  // varlen with a paged cache: batch stride = page stride
    p.k_batch_stride = k.stride(0);
    p.v_batch_stride = v.stride(0);
    p.k_row_stride = k.stride(1), p.k_head_stride = k.stride(2);
    p.v_row_stride = v.stride(1), p.v_head_stride = v.stride(2);
  }
}

void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v, const char* op) {
  check_device(q, k, "k", op);
  check_device(q, v, "v", op);
  check_same_dtype(q, k, "k", op);
  check_same_dtype(q, v, "v", op);
  to_dtype(q, op);
  check_last_contiguous(q, "q", op);
  check_last_contiguous(k, "k", op);
  check_last_contiguous(v, "v", op);
  // v may have a head dim of its own (DeepSeek's 192 / 128, MLA); every other size is k's.
  FA_CHECK_ARG(
      k.dim() == v.dim() && k.sizes().slice(0, k.dim() - 1) == v.sizes().slice(0, v.dim() - 1),
      "flashattn.", op, ": k and v must have one shape but for the head dim, got ", shape_str(k),
      " and ", shape_str(v));
  FA_CHECK_ARG(k.size(-1) == q.size(-1), "flashattn.", op, ": k must have q's head dim ",
               q.size(-1), ", got ", shape_str(k));
}

std::tuple<Tensor, Tensor, Tensor, Tensor> fwd(const Tensor& q, const Tensor& k, const Tensor& v,
                                               const optional<Tensor>& alibi_slopes,
                                               double dropout_p, double softmax_scale,
                                               bool causal, int64_t window_size_left,
                                               int64_t window_size_right, double softcap,
                                               bool return_softmax, bool deterministic,
                                               const optional<Tensor>& sinks) {
  const char* op = "fwd";
  (void)deterministic;  // the registered backward's (see the file comment)
  check_rank(q, 4, "q", "(batch, seqlen_q, nheads, headdim)", op);
  check_rank(k, 4, "k", "(batch, seqlen_k, nheads_k, headdim)", op);
  check_rank(v, 4, "v", "(batch, seqlen_k, nheads_k, headdim)", op);
  check_qkv(q, k, v, op);
  FA_CHECK_ARG(k.size(0) == q.size(0), "flashattn.", op, ": k has batch ", k.size(0),
               " but q has ", q.size(0));
  check_opt_device(q, alibi_slopes, "alibi_slopes", op);

  flashattn::FwdParams p;
  p.b = q.size(0), p.seqlen_q = q.size(1), p.h = q.size(2), p.d = q.size(3);
  p.seqlen_k = k.size(1), p.h_k = k.size(2);
  DeviceScope scope(q, p);

  Tensor out = at::empty(out_shape(q, v), q.options());
  Tensor lse = at::empty({p.b, p.h, p.seqlen_q}, q.options().dtype(at::kFloat));
  Tensor probs;
  if (return_softmax) {
    FA_CHECK_ARG(dropout_p > 0.0, "flashattn.", op,
                 ": return_softmax is only supported with dropout_p > 0 (flash_attn's rule)");
    probs = at::empty({p.b, p.h, p.seqlen_q, p.seqlen_k}, q.options());
    p.p_ptr = probs.data_ptr();
  }
  set_qkvo(p, q, k, v, out, op);
  p.softmax_lse_ptr = lse.data_ptr<float>();
  set_options(p, softmax_scale, causal, window_size_left, window_size_right, softcap);
  set_alibi(p, q, alibi_slopes, op);
  set_sinks(p, q, sinks, op);
  Tensor rng_state = draw_rng_state(q, p.b, p.h, dropout_p, op);
  set_rng(p, dropout_p, rng_state, op);
  raise_if_error(flashattn::mha_fwd(p), op);

  Tensor s_dmask;
  if (return_softmax) {
    // flash_attn's S_dmask is (b, h, round128(s_q), round128(s_k)); the padding is zero here.
    s_dmask = at::constant_pad_nd(
        probs, {0, round_up_128(p.seqlen_k) - p.seqlen_k, 0, round_up_128(p.seqlen_q) - p.seqlen_q},
        0);
  } else {
    s_dmask = at::empty({0}, q.options());
  }
  return {out, lse, s_dmask, rng_state};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> varlen_fwd(
    const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens_q,
    const Tensor& cu_seqlens_k, const optional<Tensor>& seqused_k,
    const optional<Tensor>& block_table, const optional<Tensor>& alibi_slopes,
    int64_t max_seqlen_q, int64_t max_seqlen_k, double dropout_p, double softmax_scale,
    bool causal, int64_t window_size_left, int64_t window_size_right, double softcap,
    bool return_softmax, bool deterministic, const optional<Tensor>& sinks) {
  const char* op = "varlen_fwd";
  (void)deterministic;  // the registered backward's (see the file comment)
  const bool paged = block_table.has_value();
  check_rank(q, 3, "q", "(total_q, nheads, headdim)", op);
  if (paged) {
    check_rank(k, 4, "k", "(num_blocks, page_block_size, nheads_k, headdim) with block_table", op);
    check_rank(v, 4, "v", "(num_blocks, page_block_size, nheads_k, headdim) with block_table", op);
  } else {
    check_rank(k, 3, "k", "(total_k, nheads_k, headdim)", op);
    check_rank(v, 3, "v", "(total_k, nheads_k, headdim)", op);
  }
  check_qkv(q, k, v, op);
  check_index(q, cu_seqlens_q, "cu_seqlens_q", 1, op);
  check_index(q, cu_seqlens_k, "cu_seqlens_k", 1, op);
  FA_CHECK_ARG(cu_seqlens_q.numel() >= 1 && cu_seqlens_k.numel() == cu_seqlens_q.numel(),
               "flashattn.", op,
               ": cu_seqlens_q and cu_seqlens_k must both have batch + 1 entries, got ",
               cu_seqlens_q.numel(), " and ", cu_seqlens_k.numel());
  check_opt_device(q, alibi_slopes, "alibi_slopes", op);
  TORCH_CHECK_NOT_IMPLEMENTED(!(return_softmax && dropout_p > 0.0), "flashattn.", op,
                              ": return_attn_probs is not supported by the varlen functions "
                              "(the library returns attention probabilities for dense calls only)");

  flashattn::FwdParams p;
  p.b = cu_seqlens_q.numel() - 1;
  p.seqlen_q = max_seqlen_q, p.seqlen_k = max_seqlen_k;
  p.h = q.size(1), p.d = q.size(2);
  p.h_k = k.size(-2);
  p.total_q = q.size(0);
  p.total_k = paged ? 0 : k.size(0);
  DeviceScope scope(q, p);

  Tensor out = at::empty(out_shape(q, v), q.options());
  Tensor lse = at::empty({p.h, p.total_q}, q.options().dtype(at::kFloat));
  set_qkvo(p, q, k, v, out, op);
  p.softmax_lse_ptr = lse.data_ptr<float>();
  p.cu_seqlens_q = cu_seqlens_q.data_ptr<int>();
  p.cu_seqlens_k = cu_seqlens_k.data_ptr<int>();
  set_seqused_k(p, q, seqused_k, op);
  set_pages(p, q, block_table, k, op);
  set_options(p, softmax_scale, causal, window_size_left, window_size_right, softcap);
  set_alibi(p, q, alibi_slopes, op);
  set_sinks(p, q, sinks, op);
  Tensor rng_state = draw_rng_state(q, p.b, p.h, dropout_p, op);
  set_rng(p, dropout_p, rng_state, op);
  raise_if_error(flashattn::mha_varlen_fwd(p), op);
  return {out, lse, at::empty({0}, q.options()), rng_state};
}


// ------------------------------------------------------------------------------ fp8 fwd --

// One descale tensor: float32 on q's device with the given sizes (the block dim contiguous).
void set_descale(const Tensor& q, const optional<Tensor>& t, const char* name,
                 std::vector<int64_t> sizes, const float** ptr, int64_t* batch_stride,
                 int64_t* head_stride, const char* op) {
  if (!t.has_value()) return;
  check_device(q, *t, name, op);
  FA_CHECK_ARG(t->scalar_type() == at::kFloat, "flashattn.", op, ": ", name,
               " must be float32, got ", t->scalar_type());
  FA_CHECK_ARG(t->sizes() == at::IntArrayRef(sizes), "flashattn.", op, ": ", name,
               " must have shape ", at::IntArrayRef(sizes), ", got ", shape_str(*t));
  if (sizes.size() == 3) check_last_contiguous(*t, name, op);
  *ptr = t->data_ptr<float>();
  *batch_stride = t->stride(0);
  *head_stride = t->stride(1);
}

// FP8 (e4m3) forward, dense or varlen (cu_seqlens given), paged or not: q, k, v in
// float8_e4m3fn, out in out_dtype (bfloat16 unless float16 is asked for), LSE float32. CUDA
// tensors get NotImplementedError from the library (no GPU kernel yet).
std::tuple<Tensor, Tensor> fp8_fwd(
    const Tensor& q, const Tensor& k, const Tensor& v, const optional<Tensor>& cu_seqlens_q,
    const optional<Tensor>& cu_seqlens_k, const optional<Tensor>& seqused_k,
    const optional<Tensor>& block_table, int64_t max_seqlen_q, int64_t max_seqlen_k,
    const optional<Tensor>& q_descale, const optional<Tensor>& k_descale,
    const optional<Tensor>& v_descale, const optional<Tensor>& q_block_descale,
    const optional<Tensor>& k_block_descale, const optional<Tensor>& v_block_descale,
    int64_t descale_block_m, int64_t descale_block_n, const optional<Tensor>& alibi_slopes,
    double softmax_scale, bool causal, int64_t window_size_left, int64_t window_size_right,
    double softcap, optional<at::ScalarType> out_dtype, const optional<Tensor>& sinks) {
  const char* op = "fp8_fwd";
  const bool varlen = cu_seqlens_q.has_value();
  const bool paged = block_table.has_value();
  FA_CHECK_ARG(cu_seqlens_k.has_value() == varlen, "flashattn.", op,
               ": cu_seqlens_q and cu_seqlens_k go together");
  FA_CHECK_ARG(varlen || (!paged && !seqused_k.has_value()), "flashattn.", op,
               ": block_table and seqused_k need the varlen form");
  if (varlen) {
    check_rank(q, 3, "q", "(total_q, nheads, headdim)", op);
    check_rank(k, paged ? 4 : 3, "k", paged ? "(num_blocks, page_block_size, nheads_k, headdim)"
                                            : "(total_k, nheads_k, headdim)", op);
    check_rank(v, paged ? 4 : 3, "v", paged ? "(num_blocks, page_block_size, nheads_k, headdim)"
                                            : "(total_k, nheads_k, headdim)", op);
  } else {
    check_rank(q, 4, "q", "(batch, seqlen_q, nheads, headdim)", op);
    check_rank(k, 4, "k", "(batch, seqlen_k, nheads_k, headdim)", op);
    check_rank(v, 4, "v", "(batch, seqlen_k, nheads_k, headdim)", op);
  }
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{q, "q"}, {k, "k"}, {v, "v"}})
    FA_CHECK_ARG(t.scalar_type() == at::kFloat8_e4m3fn, "flashattn.", op, ": ", name,
                 " must be float8_e4m3fn, got ", t.scalar_type(),
                 " (q, k and v are all fp8, or none is)");
  check_device(q, k, "k", op);
  check_device(q, v, "v", op);
  check_last_contiguous(q, "q", op);
  check_last_contiguous(k, "k", op);
  check_last_contiguous(v, "v", op);
  FA_CHECK_ARG(k.size(-1) == q.size(-1), "flashattn.", op, ": k must have q's head dim ",
               q.size(-1), ", got ", shape_str(k));
  const at::ScalarType odt = out_dtype.value_or(at::kBFloat16);
  FA_CHECK_ARG(odt == at::kBFloat16 || odt == at::kHalf, "flashattn.", op, ": out_dtype ", odt,
               " is not an output type for fp8 inputs (bfloat16 or float16)");
  check_opt_device(q, alibi_slopes, "alibi_slopes", op);

  flashattn::FwdParams p;
  if (varlen) {
    check_index(q, *cu_seqlens_q, "cu_seqlens_q", 1, op);
    check_index(q, *cu_seqlens_k, "cu_seqlens_k", 1, op);
    FA_CHECK_ARG(cu_seqlens_q->numel() >= 1 && cu_seqlens_k->numel() == cu_seqlens_q->numel(),
                 "flashattn.", op, ": cu_seqlens_q and cu_seqlens_k must both have batch + 1 "
                 "entries");
    p.b = cu_seqlens_q->numel() - 1;
    p.seqlen_q = max_seqlen_q, p.seqlen_k = max_seqlen_k;
    p.h = q.size(1), p.d = q.size(2);
    p.total_q = q.size(0);
    p.total_k = paged ? 0 : k.size(0);
  } else {
    FA_CHECK_ARG(k.size(0) == q.size(0), "flashattn.", op, ": k has batch ", k.size(0),
                 " but q has ", q.size(0));
    p.b = q.size(0), p.seqlen_q = q.size(1), p.h = q.size(2), p.d = q.size(3);
    p.seqlen_k = k.size(1);
  }
  p.h_k = k.size(-2);
  DeviceScope scope(q, p);

  Tensor out = at::empty(out_shape(q, v), q.options().dtype(odt));
  Tensor lse = varlen ? at::empty({p.h, p.total_q}, q.options().dtype(at::kFloat))
                      : at::empty({p.b, p.h, p.seqlen_q}, q.options().dtype(at::kFloat));
  p.dtype = flashattn::DType::kFloat8E4M3;
  p.out_dtype = odt == at::kHalf ? flashattn::DType::kFloat16 : flashattn::DType::kBFloat16;
  p.dv = v.size(-1);
  p.q_ptr = q.data_ptr();
  p.k_ptr = k.data_ptr();
  p.v_ptr = v.data_ptr();
  p.o_ptr = out.data_ptr();
  FA_SET_STRIDES(p, q, q);
  FA_SET_STRIDES(p, k, k);
  FA_SET_STRIDES(p, v, v);
  FA_SET_STRIDES(p, o, out);
  if (paged) {  // batch stride = page stride
    p.k_batch_stride = k.stride(0), p.k_row_stride = k.stride(1), p.k_head_stride = k.stride(2);
    p.v_batch_stride = v.stride(0), p.v_row_stride = v.stride(1), p.v_head_stride = v.stride(2);
  }
  p.softmax_lse_ptr = lse.data_ptr<float>();
  if (varlen) {
    p.cu_seqlens_q = cu_seqlens_q->data_ptr<int>();
    p.cu_seqlens_k = cu_seqlens_k->data_ptr<int>();
  }
  set_seqused_k(p, q, seqused_k, op);
  set_pages(p, q, block_table, k, op);
  set_descale(q, q_descale, "q_descale", {p.b, p.h_k}, &p.q_descale, &p.q_descale_batch_stride,
              &p.q_descale_head_stride, op);
  set_descale(q, k_descale, "k_descale", {p.b, p.h_k}, &p.k_descale, &p.k_descale_batch_stride,
              &p.k_descale_head_stride, op);
  set_descale(q, v_descale, "v_descale", {p.b, p.h_k}, &p.v_descale, &p.v_descale_batch_stride,
              &p.v_descale_head_stride, op);
  auto blocks = [](int64_t rows, int64_t block) { return block < 1 ? 0 : (rows + block - 1) / block; };
  if (q_block_descale.has_value() || k_block_descale.has_value() || v_block_descale.has_value()) {
    p.descale_block_m = int(descale_block_m);
    p.descale_block_n = int(descale_block_n);
  }
  if (q_block_descale.has_value())
    FA_CHECK_ARG(descale_block_m >= 1, "flashattn.", op,
                 ": descale_block_m must be >= 1 with q_block_descale, got ", descale_block_m);
  if (k_block_descale.has_value() || v_block_descale.has_value())
    FA_CHECK_ARG(descale_block_n >= 1, "flashattn.", op,
                 ": descale_block_n must be >= 1 with k_block_descale / v_block_descale, got ",
                 descale_block_n);
  if (!q_block_descale.has_value()) p.descale_block_m = 0;
  if (!k_block_descale.has_value() && !v_block_descale.has_value()) p.descale_block_n = 0;
  set_descale(q, q_block_descale, "q_block_descale",
              {p.b, p.h, blocks(p.seqlen_q, descale_block_m)}, &p.q_block_descale,
              &p.q_block_descale_batch_stride, &p.q_block_descale_head_stride, op);
  set_descale(q, k_block_descale, "k_block_descale",
              {p.b, p.h_k, blocks(p.seqlen_k, descale_block_n)}, &p.k_block_descale,
              &p.k_block_descale_batch_stride, &p.k_block_descale_head_stride, op);
  set_descale(q, v_block_descale, "v_block_descale",
              {p.b, p.h_k, blocks(p.seqlen_k, descale_block_n)}, &p.v_block_descale,
              &p.v_block_descale_batch_stride, &p.v_block_descale_head_stride, op);
  set_options(p, softmax_scale, causal, window_size_left, window_size_right, softcap);
  set_alibi(p, q, alibi_slopes, op);
  set_sinks(p, q, sinks, op);
  raise_if_error(varlen ? flashattn::mha_varlen_fwd(p) : flashattn::mha_fwd(p), op);
  return {out, lse};
}

// ---------------------------------------------------------------------------------- bwd --

void set_bwd_tensors(flashattn::BwdParams& p, const Tensor& dout, const Tensor& q,
                     const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                     const Tensor& dq, const Tensor& dk, const Tensor& dv, const char* op) {
  set_qkvo(p, q, k, v, out, op);
  p.softmax_lse_ptr = const_cast<float*>(lse.data_ptr<float>());
  p.do_ptr = dout.data_ptr();
  FA_SET_STRIDES(p, do, dout);
  p.dq_ptr = dq.data_ptr();
  FA_SET_STRIDES(p, dq, dq);
  p.dk_ptr = dk.data_ptr();
  FA_SET_STRIDES(p, dk, dk);
  p.dv_ptr = dv.data_ptr();
  FA_SET_STRIDES(p, dv, dv);
}

void check_bwd_extra(const Tensor& dout, const Tensor& q, const Tensor& v, const Tensor& out,
                     const Tensor& lse, const char* op) {
  check_device(q, dout, "dout", op);
  check_device(q, out, "out", op);
  check_device(q, lse, "softmax_lse", op);
  check_same_dtype(q, dout, "dout", op);
  check_same_dtype(q, out, "out", op);
  const std::vector<int64_t> want = out_shape(q, v);
  FA_CHECK_ARG(dout.sizes() == at::IntArrayRef(want) && out.sizes() == at::IntArrayRef(want),
               "flashattn.", op, ": dout and out must have q's shape with v's head dim ",
               at::IntArrayRef(want), ", got ", shape_str(dout), " and ", shape_str(out));
  check_last_contiguous(dout, "dout", op);
  check_last_contiguous(out, "out", op);
  FA_CHECK_ARG(lse.scalar_type() == at::kFloat && lse.is_contiguous(), "flashattn.", op,
               ": softmax_lse must be the forward's contiguous float32 LSE");
}

// Checks of a dense backward's inputs, shared by bwd and bwd_into.
void check_dense_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& out, const Tensor& softmax_lse, const char* op) {
  check_rank(q, 4, "q", "(batch, seqlen_q, nheads, headdim)", op);
  check_rank(k, 4, "k", "(batch, seqlen_k, nheads_k, headdim)", op);
  check_rank(v, 4, "v", "(batch, seqlen_k, nheads_k, headdim)", op);
  check_qkv(q, k, v, op);
  check_bwd_extra(dout, q, v, out, softmax_lse, op);
  FA_CHECK_ARG(k.size(0) == q.size(0), "flashattn.", op, ": k has batch ", k.size(0),
               " but q has ", q.size(0));
  FA_CHECK_ARG(softmax_lse.sizes() == at::IntArrayRef({q.size(0), q.size(2), q.size(1)}),
               "flashattn.", op, ": softmax_lse must have shape (batch, nheads, seqlen_q), got ",
               shape_str(softmax_lse));
}

// The dense backward into dq, dk, dv (fresh or the caller's).
void run_dense_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& out, const Tensor& softmax_lse, const Tensor& dq,
                   const Tensor& dk, const Tensor& dv, bool accumulate,
                   const optional<Tensor>& alibi_slopes, double dropout_p, double softmax_scale,
                   bool causal, int64_t window_size_left, int64_t window_size_right,
                   double softcap, bool deterministic, const Tensor& rng_state,
                   const optional<Tensor>& sinks, const Tensor& dsinks, const char* op) {
  flashattn::BwdParams p;
  p.b = q.size(0), p.seqlen_q = q.size(1), p.h = q.size(2), p.d = q.size(3);
  p.seqlen_k = k.size(1), p.h_k = k.size(2);
  DeviceScope scope(q, p);
  set_bwd_tensors(p, dout, q, k, v, out, softmax_lse, dq, dk, dv, op);
  p.dqkv_fp32 = dq.scalar_type() == at::kFloat;
  p.dqkv_accumulate = accumulate;
  set_options(p, softmax_scale, causal, window_size_left, window_size_right, softcap);
  set_alibi(p, q, alibi_slopes, op);
  set_sinks(p, q, sinks, op);
  if (sinks.has_value()) p.dsinks = dsinks.data_ptr<float>();
  set_rng(p, dropout_p, rng_state, op);
  p.deterministic = deterministic;
  raise_if_error(flashattn::mha_bwd(p), op);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> bwd(
    const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
    const Tensor& softmax_lse, const optional<Tensor>& alibi_slopes, double dropout_p,
    double softmax_scale, bool causal, int64_t window_size_left, int64_t window_size_right,
    double softcap, bool deterministic, const Tensor& rng_state, const optional<Tensor>& sinks) {
  const char* op = "bwd";
  check_dense_bwd(dout, q, k, v, out, softmax_lse, op);
  Tensor dq = at::empty(q.sizes(), q.options());
  Tensor dk = at::empty(k.sizes(), k.options());
  Tensor dv = at::empty(v.sizes(), v.options());
  Tensor dsinks = dsinks_like(q, sinks);
  run_dense_bwd(dout, q, k, v, out, softmax_lse, dq, dk, dv, /*accumulate=*/false, alibi_slopes,
                dropout_p, softmax_scale, causal, window_size_left, window_size_right, softcap,
                deterministic, rng_state, sinks, dsinks, op);
  return {dq, dk, dv, dsinks};
}

// A caller's gradient buffer: on q's device, the shape of the tensor it is the gradient of, the
// element type of dq (q's dtype or float32), a contiguous last dimension.
void check_grad_buffer(const Tensor& q, const Tensor& g, const char* name, const Tensor& like,
                       const char* like_name, const Tensor& dq, const char* op) {
  check_device(q, g, name, op);
  FA_CHECK_ARG(g.sizes() == like.sizes(), "flashattn.", op, ": ", name, " must have ",
               like_name, "'s shape ", shape_str(like), ", got ", shape_str(g));
  FA_CHECK_ARG(g.scalar_type() == dq.scalar_type(), "flashattn.", op, ": ", name,
               " has dtype ", g.scalar_type(), " but dq has ", dq.scalar_type(),
               "; dq, dk, dv must share one dtype");
  check_last_contiguous(g, name, op);
}

void bwd_into(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
              const Tensor& out, const Tensor& softmax_lse, Tensor& dq, Tensor& dk, Tensor& dv,
              bool accumulate, const optional<Tensor>& alibi_slopes, double dropout_p,
              double softmax_scale, bool causal, int64_t window_size_left,
              int64_t window_size_right, double softcap, bool deterministic,
              const Tensor& rng_state) {
  const char* op = "bwd_into";
  check_dense_bwd(dout, q, k, v, out, softmax_lse, op);
  FA_CHECK_ARG(dq.scalar_type() == q.scalar_type() || dq.scalar_type() == at::kFloat,
               "flashattn.", op, ": dq has dtype ", dq.scalar_type(),
               "; gradient buffers are q's dtype (", q.scalar_type(), ") or float32");
  check_grad_buffer(q, dq, "dq", q, "q", dq, op);
  check_grad_buffer(q, dk, "dk", k, "k", dq, op);
  check_grad_buffer(q, dv, "dv", v, "v", dq, op);
  run_dense_bwd(dout, q, k, v, out, softmax_lse, dq, dk, dv, accumulate, alibi_slopes, dropout_p,
                softmax_scale, causal, window_size_left, window_size_right, softcap,
                deterministic, rng_state, c10::nullopt, Tensor(), op);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> varlen_bwd(
    const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
    const Tensor& softmax_lse, const Tensor& cu_seqlens_q, const Tensor& cu_seqlens_k,
    const optional<Tensor>& seqused_k, const optional<Tensor>& alibi_slopes, int64_t max_seqlen_q,
    int64_t max_seqlen_k, double dropout_p, double softmax_scale, bool causal,
    int64_t window_size_left, int64_t window_size_right, double softcap, bool deterministic,
    const Tensor& rng_state, const optional<Tensor>& sinks) {
  const char* op = "varlen_bwd";
  check_rank(q, 3, "q", "(total_q, nheads, headdim)", op);
  check_rank(k, 3, "k", "(total_k, nheads_k, headdim)", op);
  check_rank(v, 3, "v", "(total_k, nheads_k, headdim)", op);
  check_qkv(q, k, v, op);
  check_bwd_extra(dout, q, v, out, softmax_lse, op);
  check_index(q, cu_seqlens_q, "cu_seqlens_q", 1, op);
  check_index(q, cu_seqlens_k, "cu_seqlens_k", 1, op);
  FA_CHECK_ARG(cu_seqlens_q.numel() >= 1 && cu_seqlens_k.numel() == cu_seqlens_q.numel(),
               "flashattn.", op,
               ": cu_seqlens_q and cu_seqlens_k must both have batch + 1 entries");
  FA_CHECK_ARG(softmax_lse.sizes() == at::IntArrayRef({q.size(1), q.size(0)}), "flashattn.",
               op, ": softmax_lse must have shape (nheads, total_q), got ",
               shape_str(softmax_lse));

  flashattn::BwdParams p;
  p.b = cu_seqlens_q.numel() - 1;
  p.seqlen_q = max_seqlen_q, p.seqlen_k = max_seqlen_k;
  p.h = q.size(1), p.d = q.size(2), p.h_k = k.size(1);
  p.total_q = q.size(0), p.total_k = k.size(0);
  DeviceScope scope(q, p);
  Tensor dq = at::empty(q.sizes(), q.options());
  Tensor dk = at::empty(k.sizes(), k.options());
  Tensor dv = at::empty(v.sizes(), v.options());
  Tensor dsinks = dsinks_like(q, sinks);
  set_bwd_tensors(p, dout, q, k, v, out, softmax_lse, dq, dk, dv, op);
  p.cu_seqlens_q = cu_seqlens_q.data_ptr<int>();
  p.cu_seqlens_k = cu_seqlens_k.data_ptr<int>();
  set_seqused_k(p, q, seqused_k, op);
  set_options(p, softmax_scale, causal, window_size_left, window_size_right, softcap);
  set_alibi(p, q, alibi_slopes, op);
  set_sinks(p, q, sinks, op);
  if (sinks.has_value()) p.dsinks = dsinks.data_ptr<float>();
  set_rng(p, dropout_p, rng_state, op);
  p.deterministic = deterministic;
  raise_if_error(flashattn::mha_varlen_bwd(p), op);
  return {dq, dk, dv, dsinks};
}

// -------------------------------------------------------------------------- fwd_kvcache --

std::tuple<Tensor, Tensor> fwd_kvcache(
    const Tensor& q, Tensor& k_cache, Tensor& v_cache, const optional<Tensor>& k,
    const optional<Tensor>& v, const optional<Tensor>& rotary_cos,
    const optional<Tensor>& rotary_sin, const optional<Tensor>& cache_seqlens,
    int64_t cache_seqlen, const optional<Tensor>& cache_batch_idx,
    const optional<Tensor>& cache_leftpad, const optional<Tensor>& block_table,
    const optional<Tensor>& alibi_slopes, double softmax_scale, bool causal,
    int64_t window_size_left, int64_t window_size_right, double softcap, bool rotary_interleaved,
    int64_t num_splits, const optional<Tensor>& sinks) {
  const char* op = "fwd_kvcache";
  const bool paged = block_table.has_value();
  check_rank(q, 4, "q", "(batch, seqlen_q, nheads, headdim)", op);
  check_rank(k_cache, 4, "k_cache",
             paged ? "(num_blocks, page_block_size, nheads_k, headdim) with block_table"
                   : "(batch_cache, seqlen_cache, nheads_k, headdim)",
             op);
  check_rank(v_cache, 4, "v_cache", "like k_cache", op);
  check_qkv(q, k_cache, v_cache, op);
  FA_CHECK_ARG(k.has_value() == v.has_value(), "flashattn.", op,
               ": k and v must be given together (both or neither)");
  FA_CHECK_ARG(rotary_cos.has_value() == rotary_sin.has_value(), "flashattn.", op,
               ": rotary_cos and rotary_sin must be given together (both or neither)");
  check_opt_device(q, alibi_slopes, "alibi_slopes", op);

  flashattn::KVCacheParams p;
  p.dtype = to_dtype(q, op);
  p.b = q.size(0), p.seqlen_q = q.size(1), p.h = q.size(2), p.d = q.size(3);
  p.dv = v_cache.size(3);
  p.h_k = k_cache.size(2);
  if (paged) {
    check_index(q, *block_table, "block_table", 2, op);
    FA_CHECK_ARG(block_table->size(0) == p.b, "flashattn.", op,
                 ": block_table must have one row per batch entry (", p.b, "), got ",
                 shape_str(*block_table));
    p.block_table = block_table->data_ptr<int>();
    p.block_table_batch_stride = block_table->stride(0);
    p.max_blocks_per_seq = block_table->size(1);
    p.num_blocks = k_cache.size(0);
    p.page_block_size = k_cache.size(1);
    p.seqlen_k = p.max_blocks_per_seq * p.page_block_size;
    p.b_cache = p.b;
  } else {
    p.seqlen_k = k_cache.size(1);
    p.b_cache = k_cache.size(0);
  }
  DeviceScope scope(q, p);

  Tensor out = at::empty(out_shape(q, v_cache), q.options());
  Tensor lse = at::empty({p.b, p.h, p.seqlen_q}, q.options().dtype(at::kFloat));
  p.q_ptr = q.data_ptr();
  FA_SET_STRIDES(p, q, q);
  p.k_ptr = k_cache.data_ptr();
  FA_SET_STRIDES(p, k, k_cache);
  p.v_ptr = v_cache.data_ptr();
  FA_SET_STRIDES(p, v, v_cache);
  p.o_ptr = out.data_ptr();
  FA_SET_STRIDES(p, o, out);
  p.softmax_lse_ptr = lse.data_ptr<float>();

  if (cache_seqlens.has_value()) {
    check_index(q, *cache_seqlens, "cache_seqlens", 1, op);
    p.cache_seqlens = cache_seqlens->data_ptr<int>();
  }
  p.cache_seqlen = static_cast<int>(cache_seqlen);
  if (cache_batch_idx.has_value()) {
    check_index(q, *cache_batch_idx, "cache_batch_idx", 1, op);
    p.cache_batch_idx = cache_batch_idx->data_ptr<int>();
  }
  if (cache_leftpad.has_value()) {
    check_index(q, *cache_leftpad, "cache_leftpad", 1, op);
    p.cache_leftpad = cache_leftpad->data_ptr<int>();
  }
  if (k.has_value()) {
    check_rank(*k, 4, "k", "(batch, seqlen_new, nheads_k, headdim)", op);
    check_device(q, *k, "k", op);
    check_device(q, *v, "v", op);
    check_same_dtype(q, *k, "k", op);
    check_same_dtype(q, *v, "v", op);
    check_last_contiguous(*k, "k", op);
    check_last_contiguous(*v, "v", op);
    FA_CHECK_ARG(k->size(0) == p.b && k->size(2) == p.h_k && k->size(3) == p.d &&
                     v->size(0) == p.b && v->size(1) == k->size(1) && v->size(2) == p.h_k &&
                     v->size(3) == p.dv,
                 "flashattn.", op, ": k and v must have shape (batch, seqlen_new, nheads_k, "
                 "headdim) = (", p.b, ", *, ", p.h_k, ", ", p.d, ") and (", p.b, ", *, ", p.h_k,
                 ", ", p.dv, ") (v with v_cache's head dim), got ", shape_str(*k), " and ",
                 shape_str(*v));
    p.knew_ptr = k->data_ptr();
    FA_SET_STRIDES(p, knew, *k);
    p.vnew_ptr = v->data_ptr();
    FA_SET_STRIDES(p, vnew, *v);
    p.seqlen_knew = k->size(1);
  }
  if (rotary_cos.has_value()) {
    for (const Tensor* t : {&*rotary_cos, &*rotary_sin}) {
      const char* name = t == &*rotary_cos ? "rotary_cos" : "rotary_sin";
      check_device(q, *t, name, op);
      check_same_dtype(q, *t, name, op);
      check_rank(*t, 2, name, "(seqlen_ro, rotary_dim / 2)", op);
      FA_CHECK_ARG(t->is_contiguous(), "flashattn.", op, ": ", name, " must be contiguous");
    }
    FA_CHECK_ARG(rotary_cos->sizes() == rotary_sin->sizes(), "flashattn.", op,
                 ": rotary_cos and rotary_sin must have one shape");
    p.rotary_cos = rotary_cos->data_ptr();
    p.rotary_sin = rotary_sin->data_ptr();
    p.seqlen_ro = rotary_cos->size(0);
    p.rotary_dim = rotary_cos->size(1) * 2;
    p.rotary_interleaved = rotary_interleaved;
  }
  set_options(p, softmax_scale, causal, window_size_left, window_size_right, softcap);
  set_alibi(p, q, alibi_slopes, op);
  set_sinks(p, q, sinks, op);
  p.num_splits = static_cast<int>(num_splits);
  raise_if_error(flashattn::mha_fwd_kvcache(p), op);
  return {out, lse};
}

// ------------------------------------------------------------------------- build info --

pybind11::dict build_info() {
  const flashattn::BuildInfo info = flashattn::build_info();
  pybind11::dict d;
  d["version"] = info.version;
  d["cuda"] = info.cuda;
  d["cuda_archs"] = info.cuda_archs;
  d["head_dims"] = info.head_dims;
  d["dtypes"] = info.dtypes;
  d["cuda_device_count"] = info.cuda_device_count;
  d["cpu_isa"] = info.cpu_isa;
#if defined(FLASHATTN_TORCH_CUDA)
  d["torch_cuda"] = true;
#else
  d["torch_cuda"] = false;
#endif
  return d;
}

}  // namespace flashattn_torch

TORCH_LIBRARY(flashattn, m) {
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, Tensor? alibi_slopes, float dropout_p, "
      "float softmax_scale, bool causal, int window_size_left, int window_size_right, "
      "float softcap, bool return_softmax, bool deterministic, Tensor? sinks=None) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "varlen_fwd(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
      "Tensor? seqused_k, Tensor? block_table, Tensor? alibi_slopes, int max_seqlen_q, "
      "int max_seqlen_k, float dropout_p, float softmax_scale, bool causal, "
      "int window_size_left, int window_size_right, float softcap, bool return_softmax, "
      "bool deterministic, Tensor? sinks=None) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor softmax_lse, "
      "Tensor? alibi_slopes, float dropout_p, float softmax_scale, bool causal, "
      "int window_size_left, int window_size_right, float softcap, bool deterministic, "
      "Tensor rng_state, Tensor? sinks=None) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "bwd_into(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor softmax_lse, "
      "Tensor(a!) dq, Tensor(b!) dk, Tensor(c!) dv, bool accumulate, Tensor? alibi_slopes, "
      "float dropout_p, float softmax_scale, bool causal, int window_size_left, "
      "int window_size_right, float softcap, bool deterministic, Tensor rng_state) -> ()");
  m.def(
      "varlen_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor softmax_lse, "
      "Tensor cu_seqlens_q, Tensor cu_seqlens_k, Tensor? seqused_k, Tensor? alibi_slopes, "
      "int max_seqlen_q, int max_seqlen_k, float dropout_p, float softmax_scale, bool causal, "
      "int window_size_left, int window_size_right, float softcap, bool deterministic, "
      "Tensor rng_state, Tensor? sinks=None) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "fwd_kvcache(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor? k, Tensor? v, "
      "Tensor? rotary_cos, Tensor? rotary_sin, Tensor? cache_seqlens, int cache_seqlen, "
      "Tensor? cache_batch_idx, Tensor? cache_leftpad, Tensor? block_table, "
      "Tensor? alibi_slopes, float softmax_scale, bool causal, int window_size_left, "
      "int window_size_right, float softcap, bool rotary_interleaved, int num_splits, "
      "Tensor? sinks=None) -> (Tensor, Tensor)");
  m.def(
      "fp8_fwd(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, "
      "Tensor? seqused_k, Tensor? block_table, int max_seqlen_q, int max_seqlen_k, "
      "Tensor? q_descale, Tensor? k_descale, Tensor? v_descale, Tensor? q_block_descale, "
      "Tensor? k_block_descale, Tensor? v_block_descale, int descale_block_m, "
      "int descale_block_n, Tensor? alibi_slopes, float softmax_scale, bool causal, "
      "int window_size_left, int window_size_right, float softcap, ScalarType? out_dtype, "
      "Tensor? sinks) -> (Tensor, Tensor)");
}

// One implementation serves both dispatch keys: the library picks GPU kernels or the CPU
// backend from where the pointers live.
TORCH_LIBRARY_IMPL(flashattn, CPU, m) {
  m.impl("fwd", &flashattn_torch::fwd);
  m.impl("varlen_fwd", &flashattn_torch::varlen_fwd);
  m.impl("bwd", &flashattn_torch::bwd);
  m.impl("bwd_into", &flashattn_torch::bwd_into);
  m.impl("varlen_bwd", &flashattn_torch::varlen_bwd);
  m.impl("fwd_kvcache", &flashattn_torch::fwd_kvcache);
  m.impl("fp8_fwd", &flashattn_torch::fp8_fwd);
}

TORCH_LIBRARY_IMPL(flashattn, CUDA, m) {
  m.impl("fwd", &flashattn_torch::fwd);
  m.impl("varlen_fwd", &flashattn_torch::varlen_fwd);
  m.impl("bwd", &flashattn_torch::bwd);
  m.impl("bwd_into", &flashattn_torch::bwd_into);
  m.impl("varlen_bwd", &flashattn_torch::varlen_bwd);
  m.impl("fwd_kvcache", &flashattn_torch::fwd_kvcache);
  m.impl("fp8_fwd", &flashattn_torch::fp8_fwd);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "flashattn torch extension: registers torch.ops.flashattn.*";
  PyObject* bases = PyTuple_Pack(2, PyExc_ValueError, PyExc_RuntimeError);
  if (bases == nullptr) throw pybind11::error_already_set();
  flashattn_torch::g_invalid_argument_type = PyErr_NewExceptionWithDoc(
      "flashattn.InvalidArgumentError",
      "A flashattn call broke an argument rule; the message names the argument and the rule. "
      "Both a ValueError and a RuntimeError (flash_attn raises RuntimeError for bad input).",
      bases, nullptr);
  Py_DECREF(bases);
  if (flashattn_torch::g_invalid_argument_type == nullptr) throw pybind11::error_already_set();
  m.attr("InvalidArgumentError") = pybind11::handle(flashattn_torch::g_invalid_argument_type);
  m.def("build_info", &flashattn_torch::build_info, "What the linked flashattn library contains");
}
