// Public entry points: resolve defaults, find where the data lives, validate, dispatch.
#include "flashattn/flashattn.h"

#include <cstdlib>

#include "api/route.h"
#include "api/validate.h"
#include "cpu/backend.h"
#if defined(FA_WITH_CUDA)
#include "cuda/dispatch.h"
#endif

#ifndef FA_VERSION
#define FA_VERSION "dev"
#endif

namespace flashattn {

const char* status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::kSuccess: return "OK";
    case StatusCode::kInvalidArgument: return "InvalidArgument";
    case StatusCode::kNotSupported: return "NotSupported";
    case StatusCode::kCudaError: return "CudaError";
    case StatusCode::kInternal: return "Internal";
  }
  return "Unknown";
}

std::string Status::to_string() const {
  if (ok()) return "OK";
  return std::string(status_code_name(code_)) + ": " + message_;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "fp32";
    case DType::kFloat16: return "fp16";
    case DType::kBFloat16: return "bf16";
    case DType::kFloat8E4M3: return "fp8_e4m3";
    case DType::kUnset: return "unset";
  }
  return "unknown";
}

int dtype_size(DType t) {
  switch (t) {
    case DType::kFloat32: return 4;
    case DType::kFloat8E4M3: return 1;
    default: return 2;
  }
}

const char* backend_name(Backend b) { return b == Backend::kCuda ? "cuda" : "cpu"; }

namespace {

// Every pointer of a call, with its argument name, for locate().
struct NamedPtr {
  const char* name;
  const void* ptr;
};

Status locate_all(std::initializer_list<NamedPtr> ptrs, Backend* out) {
  *out = Backend::kCpu;
#if defined(FA_WITH_CUDA)
  const NamedPtr* first = nullptr;
  for (const NamedPtr& np : ptrs) {
    if (np.ptr == nullptr) continue;
    Backend b;
    Status s = cuda::pointer_backend(np.ptr, &b);
    if (!s.ok()) return Status::invalid(std::string(np.name) + ": " + s.message());
    if (first == nullptr) {
      first = &np;
      *out = b;
    } else if (b != *out) {
      return Status::invalid(std::string(np.name) + ": is " + backend_name(b) + " memory but " +
                             first->name + " is " + backend_name(*out) +
                             " memory; all pointers of a call must live on one device");
    }
  }
#else
  (void)ptrs;
#endif
  return Status::ok_status();
}

Status locate_fwd(const FwdParams& p, Backend* out) {
  return locate_all({{"q_ptr", p.q_ptr}, {"k_ptr", p.k_ptr}, {"v_ptr", p.v_ptr},
                     {"o_ptr", p.o_ptr}, {"softmax_lse_ptr", p.softmax_lse_ptr},
                     {"cu_seqlens_q", p.cu_seqlens_q}, {"cu_seqlens_k", p.cu_seqlens_k},
                     {"seqused_k", p.seqused_k}, {"block_table", p.block_table},
                     {"alibi_slopes", p.alibi_slopes}, {"sinks", p.sinks}, {"p_ptr", p.p_ptr},
                     {"q_descale", p.q_descale}, {"k_descale", p.k_descale},
                     {"v_descale", p.v_descale}, {"q_block_descale", p.q_block_descale},
                     {"k_block_descale", p.k_block_descale},
                     {"v_block_descale", p.v_block_descale}},
                    out);
}

#if defined(FA_WITH_CUDA)
// Why no GPU kernel path can run a request at all (empty: some may); combine has no such case.
std::string gpu_refusal(const FwdParams& p) { return route::gpu_unsupported(p); }
std::string gpu_refusal(const KVCacheParams& p) { return route::gpu_unsupported(p); }
std::string gpu_refusal(const CombineParams&) { return ""; }
#endif

template <typename P, typename CpuFn, typename CudaFn>
Status run(const P& p, Backend be, CpuFn cpu_fn, CudaFn cuda_fn) {
  if (be == Backend::kCpu) return cpu_fn(p);
#if defined(FA_WITH_CUDA)
  // Requests no GPU kernel path covers at all (most fp8 ones, route::gpu_unsupported) are refused
  // here, before any kernel code runs or writes.
  if (std::string why = gpu_refusal(p); !why.empty())
    return Status::not_supported(why);
  return cuda_fn(p);
#else
  (void)cuda_fn;
  return Status::not_supported("this build of flashattn has no CUDA kernels");
#endif
}

#if defined(FA_WITH_CUDA)
#define FA_CUDA_FN(fn) cuda::fn
#else
#define FA_CUDA_FN(fn) nullptr
#endif

Status fwd_entry(const FwdParams& in, bool varlen) {
  const FwdParams p = detail::resolve(in);
  Backend be;
  Status s = locate_fwd(p, &be);
  if (!s.ok()) return s;
  s = detail::validate_fwd(p, be, varlen);
  if (!s.ok()) return s;
  return run(p, be, cpu::mha_fwd, FA_CUDA_FN(mha_fwd));
}

Status bwd_entry(const BwdParams& in, bool varlen) {
  const BwdParams p = detail::resolve(in);
  Backend be;
  Status s = locate_fwd(p, &be);
  if (s.ok()) {
    Backend be2;
    s = locate_all({{"q_ptr", p.q_ptr}, {"do_ptr", p.do_ptr}, {"dq_ptr", p.dq_ptr},
                    {"dk_ptr", p.dk_ptr}, {"dv_ptr", p.dv_ptr}, {"dsinks", p.dsinks}},
                   &be2);
    if (s.ok() && be2 != be)
      s = Status::invalid(
          "do_ptr/dq_ptr/dk_ptr/dv_ptr/dsinks: must live on the same device as q_ptr");
  }
  if (!s.ok()) return s;
  s = detail::validate_bwd(p, be, varlen);
  if (!s.ok()) return s;
  return run(p, be, cpu::mha_bwd, FA_CUDA_FN(mha_bwd));
}

}  // namespace

Status locate(const FwdParams& p, Backend* out) { return locate_fwd(p, out); }

Status mha_fwd(const FwdParams& p) { return fwd_entry(p, /*varlen=*/false); }
Status mha_varlen_fwd(const FwdParams& p) { return fwd_entry(p, /*varlen=*/true); }
Status mha_bwd(const BwdParams& p) { return bwd_entry(p, /*varlen=*/false); }
Status mha_varlen_bwd(const BwdParams& p) { return bwd_entry(p, /*varlen=*/true); }

Status mha_fwd_kvcache(const KVCacheParams& in) {
  const KVCacheParams p = detail::resolve(in);
  Backend be;
  Status s = locate_fwd(p, &be);
  if (s.ok()) {
    Backend be2;
    s = locate_all({{"q_ptr", p.q_ptr}, {"cache_seqlens", p.cache_seqlens},
                    {"cache_batch_idx", p.cache_batch_idx}, {"cache_leftpad", p.cache_leftpad},
                    {"knew_ptr", p.knew_ptr}, {"vnew_ptr", p.vnew_ptr},
                    {"rotary_cos", p.rotary_cos}, {"rotary_sin", p.rotary_sin}},
                   &be2);
    if (s.ok() && be2 != be)
      s = Status::invalid("cache_seqlens/knew_ptr/rotary_*: must live on the same device as q_ptr");
  }
  if (!s.ok()) return s;
  s = detail::validate_kvcache(p, be);
  if (!s.ok()) return s;
  return run(p, be, cpu::mha_fwd_kvcache, FA_CUDA_FN(mha_fwd_kvcache));
}

Status mha_combine(const CombineParams& p) {
  Backend be;
  Status s = locate_all({{"out_partial", p.out_partial}, {"lse_partial", p.lse_partial},
                         {"out", p.out}, {"lse", p.lse}},
                        &be);
  if (!s.ok()) return s;
  s = detail::validate_combine(p, be);
  if (!s.ok()) return s;
  return run(p, be, cpu::mha_combine, FA_CUDA_FN(mha_combine));
}

BuildInfo build_info() {
  BuildInfo info;
  info.version = FA_VERSION;
  info.cpu_isa = cpu::isa();
#if defined(FA_WITH_CUDA)
  info.cuda = true;
  info.cuda_archs = cuda::compiled_archs();
  info.head_dims = cuda::compiled_head_dims();
  info.dtypes = cuda::compiled_dtypes();
  info.fp8_head_dims = cuda::compiled_fp8_head_dims();
  info.cuda_device_count = cuda::device_count();
#endif
  return info;
}

}  // namespace flashattn
