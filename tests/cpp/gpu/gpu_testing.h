// GPU test support, shared by every tests/cpp/gpu test (header-only: each .cu there is its own
// test executable).
//  - GpuTest: fixture base that SKIPS (never fails) when no CUDA device is visible, so the GPU
//    suites run green on the GPU-less development and CI machines.
//  - DeviceBuffer and the device mirrors of testing::FwdProblem / BwdProblem / KVCacheProblem:
//    every host buffer of a CPU test problem is copied to the device and the params re-pointed,
//    so GPU tests reuse the CPU test problems (same random inputs, same NaN poisoning) and copy
//    the outputs back into the host problem for the usual comparisons.
//  - Tolerances and the one-line error reports that scripts/gpu-check collects.
// CUDA failures inside these helpers throw std::runtime_error: GoogleTest reports the test as
// failed with the message, and the fixture's destructors still free the device memory.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cuda/dispatch.h"
#include "flashattn/flashattn.h"
#include "testing/problem.h"

namespace flashattn::testing {

inline void cuda_or_throw(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
}

// Every GPU test derives from this: no device -> skipped with the reason, not failed.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (flashattn::build_info().cuda_device_count == 0)
      GTEST_SKIP() << "no CUDA device visible (build_info().cuda_device_count == 0): GPU tests "
                      "run on a GPU machine (scripts/gpu-check)";
  }
};

// A fresh seed per problem, printed by the tests on failure so a case can be replayed.
inline uint64_t fresh_seed() {
  static std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}

// Owning device allocation (move-only). Empty (nullptr) for zero bytes, so a mirrored pointer is
// null exactly where the host pointer was.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes > 0) cuda_or_throw(cudaMalloc(&ptr_, bytes), "cudaMalloc");
  }
  static DeviceBuffer from_host(const void* src, size_t bytes) {
    DeviceBuffer b(src != nullptr ? bytes : 0);
    if (b.ptr_ != nullptr)
      cuda_or_throw(cudaMemcpy(b.ptr_, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
    return b;
  }
  static DeviceBuffer from(const Buffer& buf) {
    return from_host(buf.data(), buf.bytes.size());
  }
  template <typename T>
  static DeviceBuffer from(const std::vector<T>& v) {
    return from_host(v.empty() ? nullptr : v.data(), v.size() * sizeof(T));
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(o.bytes_) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

  void to_host(void* dst) const {
    if (ptr_ != nullptr)
      cuda_or_throw(cudaMemcpy(dst, ptr_, bytes_, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  }
  void to(Buffer& buf) const { to_host(buf.data()); }
  template <typename T>
  void to(std::vector<T>& v) const { to_host(v.data()); }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Wait for the device and surface any asynchronous kernel error.
// While alive, the dispatch sees `bytes` of shared memory per SM (cuda::set_smem_per_sm_override):
// the GPU under test stands in for one with less, e.g. an A100's 164 KB, whose compact tiles then
// run.
struct ScopedSmemPerSm {
  explicit ScopedSmemPerSm(int bytes) { cuda::set_smem_per_sm_override(bytes); }
  ~ScopedSmemPerSm() { cuda::set_smem_per_sm_override(0); }
  ScopedSmemPerSm(const ScopedSmemPerSm&) = delete;
  ScopedSmemPerSm& operator=(const ScopedSmemPerSm&) = delete;
};

inline void sync_or_throw() {
  cuda_or_throw(cudaDeviceSynchronize(), "cudaDeviceSynchronize (kernel error)");
  cuda_or_throw(cudaGetLastError(), "cudaGetLastError");
}

// A FwdProblem's buffers on the device. params = the host params re-pointed at device memory
// (a pointer the host params leave null stays null).
struct DeviceFwdProblem {
  DeviceBuffer q, k, v, o, p, lse, alibi, sinks, cu_q, cu_k, seqused_k, block_table;
  FwdParams params;

  DeviceFwdProblem() = default;
  explicit DeviceFwdProblem(const FwdProblem& h) { mirror(h, h.params, &params); }

  // Fills every FwdParams pointer of `out` from this mirror (used by the Bwd mirror too).
  void mirror(const FwdProblem& h, const FwdParams& hp, FwdParams* out) {
    q = DeviceBuffer::from(h.q);
    k = DeviceBuffer::from(h.k);
    v = DeviceBuffer::from(h.v);
    o = DeviceBuffer::from(h.o);
    p = DeviceBuffer::from(h.p);
    lse = DeviceBuffer::from(h.lse);
    alibi = DeviceBuffer::from(h.alibi);
    sinks = DeviceBuffer::from(h.sinks);
    cu_q = DeviceBuffer::from(h.cu_q);
    cu_k = DeviceBuffer::from(h.cu_k);
    seqused_k = DeviceBuffer::from(h.seqused_k);
    block_table = DeviceBuffer::from(h.block_table);
    *out = hp;
    auto pick = [](const void* host_ptr, const DeviceBuffer& d) {
      return host_ptr != nullptr ? d.get() : nullptr;
    };
    out->q_ptr = pick(hp.q_ptr, q);
    out->k_ptr = pick(hp.k_ptr, k);
    out->v_ptr = pick(hp.v_ptr, v);
    out->o_ptr = pick(hp.o_ptr, o);
    out->p_ptr = pick(hp.p_ptr, p);
    out->softmax_lse_ptr = static_cast<float*>(pick(hp.softmax_lse_ptr, lse));
    out->alibi_slopes = static_cast<const float*>(pick(hp.alibi_slopes, alibi));
    out->sinks = static_cast<const float*>(pick(hp.sinks, sinks));
    out->cu_seqlens_q = static_cast<const int*>(pick(hp.cu_seqlens_q, cu_q));
    out->cu_seqlens_k = static_cast<const int*>(pick(hp.cu_seqlens_k, cu_k));
    out->seqused_k = static_cast<const int*>(pick(hp.seqused_k, seqused_k));
    out->block_table = static_cast<const int*>(pick(hp.block_table, block_table));
  }

  // Outputs (o, lse, p) back into the host problem, after waiting for the device.
  void copy_back(FwdProblem& h) const {
    sync_or_throw();
    o.to(h.o);
    lse.to(h.lse);
    p.to(h.p);
  }
};

struct DeviceBwdProblem {
  DeviceFwdProblem fwd;
  DeviceBuffer dout, dq, dk, dv, dsinks;
  BwdParams params;

  explicit DeviceBwdProblem(const BwdProblem& h) {
    params = h.params;
    fwd.mirror(h.fwd, h.params, &params);
    fwd.params = params;
    dout = DeviceBuffer::from(h.dout);
    dq = DeviceBuffer::from(h.dq);
    dk = DeviceBuffer::from(h.dk);
    dv = DeviceBuffer::from(h.dv);
    dsinks = DeviceBuffer::from(h.dsinks);
    params.do_ptr = dout.get();
    params.dq_ptr = dq.get();
    params.dk_ptr = dk.get();
    params.dv_ptr = dv.get();
    params.dsinks = h.params.dsinks != nullptr ? dsinks.as<float>() : nullptr;
  }
  void copy_back(BwdProblem& h) const {
    sync_or_throw();
    dq.to(h.dq);
    dk.to(h.dk);
    dv.to(h.dv);
    dsinks.to(h.dsinks);
  }
};

struct DeviceKVCacheProblem {
  DeviceBuffer q, k_cache, v_cache, knew, vnew, o, rotary_cos, rotary_sin, lse, alibi, sinks;
  DeviceBuffer cache_seqlens, cache_batch_idx, cache_leftpad, block_table;
  KVCacheParams params;

  explicit DeviceKVCacheProblem(const KVCacheProblem& h) {
    q = DeviceBuffer::from(h.q);
    k_cache = DeviceBuffer::from(h.k_cache);
    v_cache = DeviceBuffer::from(h.v_cache);
    knew = DeviceBuffer::from(h.knew);
    vnew = DeviceBuffer::from(h.vnew);
    o = DeviceBuffer::from(h.o);
    rotary_cos = DeviceBuffer::from(h.rotary_cos);
    rotary_sin = DeviceBuffer::from(h.rotary_sin);
    lse = DeviceBuffer::from(h.lse);
    alibi = DeviceBuffer::from(h.alibi);
    sinks = DeviceBuffer::from(h.sinks);
    cache_seqlens = DeviceBuffer::from(h.cache_seqlens);
    cache_batch_idx = DeviceBuffer::from(h.cache_batch_idx);
    cache_leftpad = DeviceBuffer::from(h.cache_leftpad);
    block_table = DeviceBuffer::from(h.block_table);
    const KVCacheParams& hp = h.params;
    params = hp;
    auto pick = [](const void* host_ptr, const DeviceBuffer& d) {
      return host_ptr != nullptr ? d.get() : nullptr;
    };
    params.q_ptr = pick(hp.q_ptr, q);
    params.k_ptr = pick(hp.k_ptr, k_cache);
    params.v_ptr = pick(hp.v_ptr, v_cache);
    params.o_ptr = pick(hp.o_ptr, o);
    params.knew_ptr = pick(hp.knew_ptr, knew);
    params.vnew_ptr = pick(hp.vnew_ptr, vnew);
    params.rotary_cos = pick(hp.rotary_cos, rotary_cos);
    params.rotary_sin = pick(hp.rotary_sin, rotary_sin);
    params.softmax_lse_ptr = static_cast<float*>(pick(hp.softmax_lse_ptr, lse));
    params.alibi_slopes = static_cast<const float*>(pick(hp.alibi_slopes, alibi));
    params.sinks = static_cast<const float*>(pick(hp.sinks, sinks));
    params.cache_seqlens = static_cast<const int*>(pick(hp.cache_seqlens, cache_seqlens));
    params.cache_batch_idx = static_cast<const int*>(pick(hp.cache_batch_idx, cache_batch_idx));
    params.cache_leftpad = static_cast<const int*>(pick(hp.cache_leftpad, cache_leftpad));
    params.block_table = static_cast<const int*>(pick(hp.block_table, block_table));
  }
  // o, lse and the cache (mha_fwd_kvcache appends into it in place).
  void copy_back(KVCacheProblem& h) const {
    sync_or_throw();
    o.to(h.o);
    lse.to(h.lse);
    k_cache.to(h.k_cache);
    v_cache.to(h.v_cache);
  }
};

// A dense problem's shape: dtype, batch, query / key lengths, query / kv heads, head dim.
inline AttnConfig base(DType t, int b, int sq, int sk, int h, int hk, int d) {
  AttnConfig c;
  c.dtype = t;
  c.b = b;
  c.seqlen_q = sq;
  c.seqlen_k = sk;
  c.h = h;
  c.h_k = hk;
  c.d = d;
  return c;
}

// The same problem with every floating-point buffer upcast to fp32 (exactly: fp16 and bf16 are
// subsets of fp32). The CPU reference runs on this copy, so it sees the very values the GPU saw
// and its only rounding is the final one to fp32.
inline FwdProblem as_fp32(const FwdProblem& pr) {
  FwdProblem c = pr;
  c.q = pr.q.converted(DType::kFloat32);
  c.k = pr.k.converted(DType::kFloat32);
  c.v = pr.v.converted(DType::kFloat32);
  c.o = pr.o.converted(DType::kFloat32);
  c.p = pr.p.converted(DType::kFloat32);
  c.cfg.dtype = DType::kFloat32;
  c.params.dtype = DType::kFloat32;
  // o is fp32 too: a resolved 16-bit problem carries out_dtype = its dtype, which would make the
  // reference write 16-bit values into the fp32 buffer.
  c.params.out_dtype = DType::kUnset;
  c.bind();
  return c;
}

// Unit roundoff of a storage type (half the spacing at 1): the largest relative error of one
// round-to-nearest into it.
inline double unit_roundoff(DType t) {
  switch (t) {
    case DType::kFloat32: return std::ldexp(1.0, -24);
    case DType::kFloat16: return std::ldexp(1.0, -11);
    default: return std::ldexp(1.0, -8);
  }
}

// Elementwise |got - want| <= rel * |want| + abs, NaN never passes; infinities must match exactly.
struct Closeness {
  double max_abs_err = 0;     // over elements finite in both
  double worst_excess = 0;    // max of |got - want| - bound (> 0: out of tolerance)
  int64_t worst_index = -1;
  int64_t violations = 0;     // out-of-tolerance elements, NaN and infinity mismatches included
  std::string str() const {
    char buf[160];
    std::snprintf(buf, sizeof(buf), "max_abs_err=%.3g violations=%lld worst_index=%lld",
                  max_abs_err, static_cast<long long>(violations),
                  static_cast<long long>(worst_index));
    return buf;
  }
};

inline Closeness closeness(const std::vector<float>& got, const std::vector<float>& want,
                           double rel, double abs) {
  Closeness c;
  if (got.size() != want.size()) {
    c.violations = -1;
    return c;
  }
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    if (std::isnan(g) || std::isnan(w) || std::isinf(g) || std::isinf(w)) {
      if (!(g == w)) {  // NaN anywhere, or a different infinity / inf vs finite
        ++c.violations;
        if (c.worst_index < 0) c.worst_index = int64_t(i);
      }
      continue;
    }
    const double err = std::fabs(g - w);
    c.max_abs_err = std::max(c.max_abs_err, err);
    const double excess = err - (rel * std::fabs(w) + abs);
    if (excess > 0) {
      ++c.violations;
      if (excess > c.worst_excess) {
        c.worst_excess = excess;
        c.worst_index = int64_t(i);
      }
    }
  }
  return c;
}

// One parseable line per checked case; scripts/gpu-check greps "[gpu-" lines into its summary.
inline void report_error(const char* tag, const std::string& what, double max_abs_err,
                         const std::string& cfg) {
  std::printf("[%s] %s=%.3g cfg=%s\n", tag, what.c_str(), max_abs_err, cfg.c_str());
  std::fflush(stdout);
}

}  // namespace flashattn::testing
