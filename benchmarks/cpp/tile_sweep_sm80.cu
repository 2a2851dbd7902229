// Tile-policy sweep of the SM80-path forward (a development tool, not part of the library build):
// times the plain kernel (no softcap / ALiBi) of several (kBlockM, kBlockN, warps) choices per
// head dim on the standard grid (bf16, batch * seqlen = 16384, hidden 2048, h = 2048 / d), and
// prints TFLOP/s (FLOPs = 4 * b * s^2 * h * d, halved for causal) and the output difference to
// the policy the library uses (a cross-check that every variant computes the same thing).
// Build by hand (docs/sm80_forward.md):
//   nvcc -std=c++17 -O3 --expt-relaxed-constexpr --use_fast_math -gencode arch=compute_90a,code=sm_90a \
//        -Isrc -Iinclude -I.deps/cutlass/include benchmarks/cpp/tile_sweep_sm80.cu -o tile_sweep_sm80
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "sm80/launch_fwd_sm80.cuh"

namespace fa = flashattn;
namespace sm80 = flashattn::sm80;

#define SWEEP_CHECK(x)                                                              \
  do {                                                                              \
    cudaError_t e_ = (x);                                                           \
    if (e_ != cudaSuccess) {                                                        \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                  \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (0)

__global__ void fill_random(cutlass::bfloat16_t* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    x ^= x >> 15;
    p[i] = cutlass::bfloat16_t(float(x & 0xffff) / 32768.f - 1.f);
  }
}

struct Problem {
  int b, s, h, d;
  bool causal;
  cutlass::bfloat16_t *q, *k, *v, *o;
  float* lse;
  fa::FwdParams params() const {
    fa::FwdParams p;
    p.dtype = fa::DType::kBFloat16;
    p.b = b;
    p.seqlen_q = p.seqlen_k = s;
    p.h = p.h_k = h;
    p.d = d;
    p.q_ptr = q;
    p.k_ptr = k;
    p.v_ptr = v;
    p.o_ptr = o;
    p.softmax_lse_ptr = lse;
    const int64_t row = int64_t(h) * d, batch = int64_t(s) * row;
    p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = p.o_batch_stride = batch;
    p.q_row_stride = p.k_row_stride = p.v_row_stride = p.o_row_stride = row;
    p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = d;
    p.softmax_scale = 1.f / std::sqrt(float(d));
    p.is_causal = causal;
    p.window_size_right = causal ? 0 : -1;
    return p;
  }
};

template <int kHeadDim, int kBlockM, int kBlockN, int kNWarps>
fa::Status launch(const fa::FwdParams& p) {
  using Traits = sm80::FwdKernelTraitsSm80<kHeadDim, kBlockM, kBlockN, kNWarps, cutlass::bfloat16_t>;
  sm80::FwdArgsSm80 args;
  args.p = p;
  args.unit = p.softmax_scale;
  args.unit_log2 = args.unit * float(M_LOG2E);
  args.h_h_k_ratio = p.h / p.h_k;
  args.num_m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;
  return sm80::launch_fwd_sm80<Traits, false, false>(args);
}

using LaunchFn = fa::Status (*)(const fa::FwdParams&);
struct Variant {
  int d;
  const char* name;
  LaunchFn fn;
};

double time_ms(LaunchFn fn, const fa::FwdParams& p, int iters) {
  for (int i = 0; i < 3; ++i) fn(p);
  cudaEvent_t a, b;
  SWEEP_CHECK(cudaEventCreate(&a));
  SWEEP_CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    SWEEP_CHECK(cudaEventRecord(a));
    fa::Status s = fn(p);
    SWEEP_CHECK(cudaEventRecord(b));
    SWEEP_CHECK(cudaEventSynchronize(b));
    if (!s.ok()) {
      std::fprintf(stderr, "launch failed: %s\n", s.message().c_str());
      std::exit(1);
    }
    float t;
    SWEEP_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  SWEEP_CHECK(cudaEventDestroy(a));
  SWEEP_CHECK(cudaEventDestroy(b));
  return ms[ms.size() / 2];
}

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 20;
  const std::vector<Variant> variants = {
      {64, "128x64x4 (lib)", &launch<64, 128, 64, 4>},
      {64, "128x128x4", &launch<64, 128, 128, 4>},
      {128, "128x64x4 (lib)", &launch<128, 128, 64, 4>},
      {128, "128x32x4", &launch<128, 128, 32, 4>},
      {128, "128x64x8", &launch<128, 128, 64, 8>},
      {256, "128x64x8 (lib)", &launch<256, 128, 64, 8>},
      {256, "64x64x4", &launch<256, 64, 64, 4>},
  };
  const int64_t tokens = 16384, hidden = 2048;
  cutlass::bfloat16_t *q, *k, *v, *o, *o_ref;
  float* lse;
  const int64_t n = tokens * hidden;
  SWEEP_CHECK(cudaMalloc(&q, n * 2));
  SWEEP_CHECK(cudaMalloc(&k, n * 2));
  SWEEP_CHECK(cudaMalloc(&v, n * 2));
  SWEEP_CHECK(cudaMalloc(&o, n * 2));
  SWEEP_CHECK(cudaMalloc(&o_ref, n * 2));
  SWEEP_CHECK(cudaMalloc(&lse, tokens * 256 * sizeof(float)));
  fill_random<<<1024, 256>>>(q, n, 1);
  fill_random<<<1024, 256>>>(k, n, 2);
  fill_random<<<1024, 256>>>(v, n, 3);
  SWEEP_CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> a(n), b(n);

  std::printf("%-4s %-7s %-6s %-16s %9s %9s %10s\n", "d", "causal", "seqlen", "tile", "ms", "TFLOP/s",
              "max|o-lib|");
  for (int d : {64, 128, 256}) {
    for (bool causal : {false, true}) {
      for (int s : {512, 1024, 2048, 4096, 8192, 16384}) {
        Problem pr{int(tokens / s), s, int(hidden / d), d, causal, q, k, v, o, lse};
        const fa::FwdParams p = pr.params();
        const double flops = 4.0 * pr.b * double(s) * s * pr.h * d * (causal ? 0.5 : 1.0);
        bool first = true;
        for (const Variant& var : variants) {
          if (var.d != d) continue;
          const double ms = time_ms(var.fn, p, iters);
          SWEEP_CHECK(cudaMemcpy(first ? a.data() : b.data(), o, n * 2, cudaMemcpyDeviceToHost));
          double diff = 0;
          if (!first) {
            for (int64_t i = 0; i < n; ++i) {
              const float x = float(reinterpret_cast<cutlass::bfloat16_t&>(a[i]));
              const float y = float(reinterpret_cast<cutlass::bfloat16_t&>(b[i]));
              diff = std::max(diff, double(std::fabs(x - y)));
            }
          }
          std::printf("%-4d %-7d %-6d %-16s %9.3f %9.1f %10.3g\n", d, int(causal), s, var.name, ms,
                      flops / ms * 1e-9, diff);
          std::fflush(stdout);
          first = false;
        }
      }
    }
  }
  return 0;
}
