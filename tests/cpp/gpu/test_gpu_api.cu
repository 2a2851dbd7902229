// The public API on CUDA memory: where a call runs (locate), the errors for mixed host/device
// pointers, the GPU entry points that are not written yet, and the CUDA error plumbing.
// The NoDevice* tests need no GPU and run everywhere: host pointers must work on a machine
// without a driver, and on a GPU machine asking leaves no CUDA error behind.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "api/validate.h"
#include "cuda/cuda_check.h"
#include "cuda/dispatch.h"
#include "cuda/reference.h"
#include "cpu/reference.h"
#include "gpu/gpu_testing.h"

namespace flashattn::testing {
namespace {

AttnConfig small_config(DType t) {
  AttnConfig c;
  c.dtype = t;
  c.b = 2;
  c.seqlen_q = 7;
  c.seqlen_k = 97;
  c.h = 4;
  c.h_k = 2;
  c.d = 128;
  return c;
}

int64_t count_nan(const Buffer& b) {
  int64_t n = 0;
  for (int64_t i = 0; i < b.numel; ++i) n += std::isnan(b.get(i));
  return n;
}

// ------------------------------------------------------------------ runs without a GPU --

TEST(NoDevice, CudaErrorBecomesStatusWithPlace) {
  const Status s = cuda::check_cuda(cudaErrorInvalidValue, "cudaMemcpy(dst, src)", "x.cu", 42);
  EXPECT_EQ(s.code(), StatusCode::kCudaError);
  EXPECT_NE(s.message().find("cudaMemcpy(dst, src)"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("x.cu:42"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(cudaGetErrorString(cudaErrorInvalidValue)), std::string::npos)
      << s.message();
  EXPECT_TRUE(cuda::check_cuda(cudaSuccess, "x", "x.cu", 1).ok());
}

// Host memory is the CPU backend's on every machine, and asking leaves no CUDA error behind.
TEST(NoDevice, HostPointersRunOnCpuAndLeaveNoError) {
  const int n = cuda::device_count();
  EXPECT_GE(n, 0);
  EXPECT_EQ(build_info().cuda_device_count, n);
  std::vector<float> host(16, 1.f);
  Backend be = Backend::kCuda;
  const Status s = cuda::pointer_backend(host.data(), &be);
  EXPECT_TRUE(s.ok()) << s.to_string();
  EXPECT_EQ(be, Backend::kCpu);
  FwdProblem pr = make_fwd_problem(small_config(DType::kBFloat16), fresh_seed());
  ASSERT_TRUE(locate(pr.params, &be).ok());
  EXPECT_EQ(be, Backend::kCpu);
  // Without a driver the runtime reports its failed initialization from every call, including
  // cudaGetLastError (nothing can clear it); with one, the calls above must leave nothing behind.
  if (n > 0) EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "a CUDA error was left behind";
}

TEST(NoDevice, BuildInfoDescribesTheCudaBuild) {
  const BuildInfo info = build_info();
  EXPECT_TRUE(info.cuda);
  EXPECT_FALSE(info.cuda_archs.empty());
  EXPECT_FALSE(info.head_dims.empty());
  EXPECT_FALSE(info.dtypes.empty());
}

// ---------------------------------------------------------------------------- on a GPU --

class GpuApi : public GpuTest {};

TEST_F(GpuApi, DevicePointersRunOnCuda) {
  FwdProblem pr = make_fwd_problem(small_config(DType::kBFloat16), fresh_seed());
  DeviceFwdProblem dev(pr);
  Backend be = Backend::kCpu;
  const Status s = locate(dev.params, &be);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_EQ(be, Backend::kCuda);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST_F(GpuApi, ManagedIsCudaAndPinnedHostIsCpu) {
  void* managed = nullptr;
  void* pinned = nullptr;
  ASSERT_EQ(cudaMallocManaged(&managed, 4096), cudaSuccess);
  ASSERT_EQ(cudaMallocHost(&pinned, 4096), cudaSuccess);
  Backend be = Backend::kCpu;
  EXPECT_TRUE(cuda::pointer_backend(managed, &be).ok());
  EXPECT_EQ(be, Backend::kCuda);
  EXPECT_TRUE(cuda::pointer_backend(pinned, &be).ok());
  EXPECT_EQ(be, Backend::kCpu);
  cudaFree(managed);
  cudaFreeHost(pinned);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// One host pointer among device pointers: InvalidArgument naming that pointer, nothing written.
TEST_F(GpuApi, MixedHostAndDevicePointersNameTheArgument) {
  FwdProblem pr = make_fwd_problem(small_config(DType::kBFloat16), fresh_seed());
  DeviceFwdProblem dev(pr);
  struct Mix {
    const char* name;
    void (*apply)(FwdParams&, FwdProblem&);
  };
  const Mix mixes[] = {
      {"k_ptr", [](FwdParams& p, FwdProblem& h) { p.k_ptr = h.k.data(); }},
      {"v_ptr", [](FwdParams& p, FwdProblem& h) { p.v_ptr = h.v.data(); }},
      {"softmax_lse_ptr", [](FwdParams& p, FwdProblem& h) { p.softmax_lse_ptr = h.lse.data(); }},
  };
  for (const Mix& m : mixes) {
    FwdParams p = dev.params;
    m.apply(p, pr);
    Backend be;
    const Status sl = locate(p, &be);
    EXPECT_EQ(sl.code(), StatusCode::kInvalidArgument) << m.name;
    EXPECT_NE(sl.message().find(m.name), std::string::npos) << sl.message();
    const Status sf = mha_fwd(p);
    EXPECT_EQ(sf.code(), StatusCode::kInvalidArgument) << m.name;
    EXPECT_NE(sf.message().find(m.name), std::string::npos) << sf.message();
  }
  // The device output is still all poison: the rejected calls touched nothing.
  FwdProblem after = pr;
  after.bind();
  dev.copy_back(after);
  EXPECT_EQ(count_nan(after.o), after.o.numel);
  // A host q with device everything else: the message names the first device pointer.
  FwdParams p = dev.params;
  p.q_ptr = pr.q.data();
  const Status sq = mha_fwd(p);
  EXPECT_EQ(sq.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(sq.message().find("k_ptr"), std::string::npos) << sq.message();
}

// The public backward on device memory reaches the SM80 backward kernels: either they cover the
// request and compute this problem (checked here against the CPU reference only coarsely: a wrong
// stride or head mapping gives O(1) errors; test_bwd_sm80 owns the tight accuracy rule), or the
// call says NotSupported and writes nothing.
TEST_F(GpuApi, BackwardOnGpuComputesOrSaysNotSupported) {
  BwdProblem bp = make_bwd_problem(small_config(DType::kBFloat16), fresh_seed());
  bp.fwd.params.is_causal = true;
  // The forward's outputs are inputs of the backward: the CPU backend's forward provides them.
  ASSERT_TRUE(mha_fwd(bp.fwd.params).ok());
  bp.bind();
  BwdProblem got = bp;
  got.bind();
  DeviceBwdProblem dev(bp);
  const Status s = mha_bwd(dev.params);
  dev.copy_back(got);
  if (s.code() == StatusCode::kNotSupported) {
    EXPECT_NE(s.message().find("GPU"), std::string::npos) << s.message();
    EXPECT_EQ(count_nan(got.dq), got.dq.numel) << "NotSupported but dq was written";
    EXPECT_EQ(count_nan(got.dk), got.dk.numel) << "NotSupported but dk was written";
    EXPECT_EQ(count_nan(got.dv), got.dv.numel) << "NotSupported but dv was written";
    std::printf("[gpu-api] backward: %s\n", s.to_string().c_str());
    return;
  }
  ASSERT_TRUE(s.ok()) << s.to_string();
  BwdProblem rp = bp;
  rp.fwd = as_fp32(bp.fwd);
  rp.dout = bp.dout.converted(DType::kFloat32);
  for (Buffer* g : {&rp.dq, &rp.dk, &rp.dv}) *g = g->converted(DType::kFloat32);
  rp.bind();
  rp.params.dtype = DType::kFloat32;
  ASSERT_TRUE(ref::mha_bwd(rp.params).ok());
  double worst = 0;
  for (auto [g, r] : {std::pair{&got.dq, &rp.dq}, std::pair{&got.dk, &rp.dk}, std::pair{&got.dv, &rp.dv}}) {
    std::vector<float> a(size_t(g->numel)), b(size_t(r->numel));
    for (int64_t i = 0; i < g->numel; ++i) {
      a[size_t(i)] = g->get(i);
      b[size_t(i)] = r->get(i);
    }
    EXPECT_EQ(count_nonfinite(a), 0) << "a gradient element was not written";
    const Closeness e = closeness(a, b, 0.0, 0.05);
    EXPECT_EQ(e.violations, 0) << e.str();
    worst = std::max(worst, e.max_abs_err);
  }
  report_error("gpu-api-bwd", "max_abs_err", worst, bp.fwd.cfg.str() + " causal");
}

// A KV-cache request on device memory that the GPU cannot take (fp32: validation rejects it for
// the GPU, whose kernels are fp16/bf16) is refused BEFORE the append: the cache must come back
// untouched, since the append writes it in place (test_gpu_kvcache covers the supported ones).
TEST_F(GpuApi, KVCacheOnGpuRefusesFp32WithoutTouchingTheCache) {
  KVCacheConfig kc;
  kc.attn = small_config(DType::kFloat32);
  kc.attn.seqlen_q = 1;
  kc.seqlen_cache = 64;
  kc.seqlen_new = 1;
  KVCacheProblem pr = make_kvcache_problem(kc, fresh_seed());
  DeviceKVCacheProblem dev(pr);
  const Status s = mha_fwd_kvcache(dev.params);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  EXPECT_NE(s.message().find("dtype: fp32"), std::string::npos) << s.message();
  Buffer k_after = pr.k_cache, v_after = pr.v_cache;
  dev.k_cache.to(k_after);
  dev.v_cache.to(v_after);
  EXPECT_TRUE(k_after.bytes == pr.k_cache.bytes) << "k_cache was written";
  EXPECT_TRUE(v_after.bytes == pr.v_cache.bytes) << "v_cache was written";
}

// The public forward on device memory reaches the SM80 kernels: either they cover the request
// and compute this problem (checked here against the GPU fp32 reference only coarsely: a wrong
// stride or head mapping gives O(1) errors; test_fwd_sm80 owns the tight accuracy rule), or the
// call says NotSupported and writes nothing.
TEST_F(GpuApi, ForwardOnGpuComputesOrSaysNotSupported) {
  FwdProblem pr = make_fwd_problem(small_config(DType::kBFloat16), fresh_seed());
  pr.params.is_causal = true;
  FwdProblem oracle = pr;
  oracle.bind();
  oracle.params = detail::resolve(oracle.params);
  DeviceFwdProblem dev(pr), dev_oracle(oracle);
  const Status s = mha_fwd(dev.params);
  dev.copy_back(pr);
  if (s.code() == StatusCode::kNotSupported) {
    EXPECT_FALSE(s.message().empty());
    EXPECT_EQ(count_nan(pr.o), pr.o.numel) << "NotSupported but o was written";
    std::printf("[gpu-api] forward: %s\n", s.to_string().c_str());
    return;
  }
  ASSERT_TRUE(s.ok()) << s.to_string();
  ASSERT_TRUE(cuda::ref::mha_fwd(dev_oracle.params).ok());
  dev_oracle.copy_back(oracle);
  const std::vector<float> got = gather_o(pr), want = gather_o(oracle);
  EXPECT_EQ(count_nonfinite(got), 0);
  const Closeness e = closeness(got, want, 0.0, 0.05);
  EXPECT_EQ(e.violations, 0) << e.str();
  report_error("gpu-api-fwd", "max_abs_err", e.max_abs_err, pr.cfg.str() + " causal");
}

}  // namespace
}  // namespace flashattn::testing
