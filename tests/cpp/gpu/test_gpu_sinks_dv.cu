// Attention sinks and a V head dim other than d on device memory. The GPU kernels take neither
// yet, so every GPU entry point must return NotSupported naming the feature (sinks, dsinks, dv)
// and leave every output as it was: no silent wrong answer, no half-written result, no append
// into the KV cache. The requests are valid (validation passes them on the GPU: bf16, head dims
// multiples of 8, aligned strides), so the refusal is the dispatch's. When the kernels land,
// these tests become the place to check them against the CPU reference instead.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "api/validate.h"
#include "gpu/gpu_testing.h"

namespace flashattn::testing {
namespace {

// What one case turns on, and the word its NotSupported message must contain.
struct Feature {
  bool sinks;
  int dv;  // 0: = d
  const char* named;
};
const Feature kFeatures[] = {{true, 0, "sinks"}, {false, 32, "dv"}, {true, 96, "sinks"}};

AttnConfig config(const Feature& f, bool varlen) {
  AttnConfig c;
  c.dtype = DType::kBFloat16;
  c.b = 2;
  c.seqlen_q = 65;
  c.seqlen_k = 130;
  c.h = 4;
  c.h_k = 2;
  c.d = 64;
  c.dv = f.dv;
  c.sinks = f.sinks;
  c.causal = true;
  if (varlen) {
    c.seqlens_q = {65, 17};
    c.seqlens_k = {130, 40};
  }
  return c;
}

bool all_nan(const Buffer& b) {
  for (int64_t i = 0; i < b.numel; ++i)
    if (!std::isnan(b.get(i))) return false;
  return true;
}
bool all_nan(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isnan(x)) return false;
  return true;
}

::testing::AssertionResult NotSupportedNaming(const Status& s, const std::string& word) {
  if (s.code() != StatusCode::kNotSupported)
    return ::testing::AssertionFailure() << "expected NotSupported naming '" << word << "', got "
                                         << s.to_string();
  if (s.message().find(word) == std::string::npos)
    return ::testing::AssertionFailure() << "the message does not name '" << word
                                         << "': " << s.message();
  return ::testing::AssertionSuccess();
}

class GpuSinksDv : public GpuTest {};

TEST_F(GpuSinksDv, ForwardIsRefusedAndWritesNothing) {
  for (const Feature& f : kFeatures)
    for (bool varlen : {false, true}) {
      const AttnConfig c = config(f, varlen);
      SCOPED_TRACE(c.str());
      FwdProblem pr = make_fwd_problem(c, fresh_seed());
      ASSERT_TRUE(detail::validate_fwd(detail::resolve(pr.params), Backend::kCuda, varlen).ok());
      DeviceFwdProblem dev(pr);
      const Status s = varlen ? mha_varlen_fwd(dev.params) : mha_fwd(dev.params);
      EXPECT_TRUE(NotSupportedNaming(s, f.named));
      dev.copy_back(pr);
      EXPECT_TRUE(all_nan(pr.o)) << "o was written";
      EXPECT_TRUE(all_nan(pr.lse)) << "softmax_lse was written";
      std::printf("[gpu-sinks-dv] forward%s: %s\n", varlen ? " varlen" : "",
                  s.to_string().c_str());
    }
}

TEST_F(GpuSinksDv, BackwardIsRefusedAndWritesNothing) {
  for (const Feature& f : kFeatures)
    for (bool varlen : {false, true})
      for (bool want_dsinks : {true, false}) {
        if (want_dsinks && !f.sinks) continue;
        const AttnConfig c = config(f, varlen);
        SCOPED_TRACE(c.str() + (want_dsinks ? " dsinks" : ""));
        BwdProblem bp = make_bwd_problem(c, fresh_seed());
        // The forward's outputs are inputs of the backward: the CPU backend provides them.
        ASSERT_TRUE((varlen ? mha_varlen_fwd(bp.fwd.params) : mha_fwd(bp.fwd.params)).ok());
        bp.bind();
        if (!want_dsinks) bp.params.dsinks = nullptr;
        ASSERT_TRUE(detail::validate_bwd(detail::resolve(bp.params), Backend::kCuda, varlen).ok());
        DeviceBwdProblem dev(bp);
        const Status s = varlen ? mha_varlen_bwd(dev.params) : mha_bwd(dev.params);
        EXPECT_TRUE(NotSupportedNaming(s, f.named));
        dev.copy_back(bp);
        EXPECT_TRUE(all_nan(bp.dq)) << "dq was written";
        EXPECT_TRUE(all_nan(bp.dk)) << "dk was written";
        EXPECT_TRUE(all_nan(bp.dv)) << "dv was written";
        EXPECT_TRUE(all_nan(bp.dsinks)) << "dsinks was written";
      }
}

// The KV-cache call appends into the cache in place: a refused request must leave the cache
// byte for byte as it was, on the paged and the contiguous path, with and without rotary.
TEST_F(GpuSinksDv, KVCacheIsRefusedBeforeTheAppend) {
  for (const Feature& f : kFeatures)
    for (int page : {0, 16}) {
      KVCacheConfig kc;
      kc.attn = config(f, false);
      kc.attn.seqlen_q = 1;
      kc.seqlen_cache = 256;
      kc.seqlen_new = 1;
      kc.page_size = page;
      kc.rotary_dim = page == 0 ? 64 : 0;
      SCOPED_TRACE(kc.attn.str() + " page=" + std::to_string(page));
      KVCacheProblem pr = make_kvcache_problem(kc, fresh_seed());
      ASSERT_TRUE(detail::validate_kvcache(detail::resolve(pr.params), Backend::kCuda).ok());
      const Buffer k_before = pr.k_cache, v_before = pr.v_cache;
      DeviceKVCacheProblem dev(pr);
      const Status s = mha_fwd_kvcache(dev.params);
      EXPECT_TRUE(NotSupportedNaming(s, f.named));
      dev.copy_back(pr);
      EXPECT_TRUE(pr.k_cache.bytes == k_before.bytes) << "k_cache was written";
      EXPECT_TRUE(pr.v_cache.bytes == v_before.bytes) << "v_cache was written";
      EXPECT_TRUE(all_nan(pr.o)) << "o was written";
      EXPECT_TRUE(all_nan(pr.lse)) << "softmax_lse was written";
    }
}

}  // namespace
}  // namespace flashattn::testing
