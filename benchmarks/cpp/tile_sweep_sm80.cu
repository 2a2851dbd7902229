// Tile-policy sweep of the SM80-path forward (a development tool, not part of the library):
// times the plain kernel (no softcap / ALiBi) of several (kBlockM, kBlockN, warps) choices per
// head dim on the standard grid (bf16, batch * seqlen = 16384, hidden 2048, h = 2048 / d), and
// prints TFLOP/s (FLOPs = 4 * b * s^2 * h * d, halved for causal) and the output difference to
// the policy the library uses (a cross-check that every variant computes the same thing).
// Built by CMake with -DFA_BUILD_BENCH_CPP=ON (-DFA_BENCH_CPP_HDIM=128 compiles the d = 128
// variants only, as -DSWEEP_D=128 does), or by hand (docs/sm80_forward.md):
//   nvcc -std=c++17 -O3 --expt-relaxed-constexpr --use_fast_math -gencode arch=compute_90a,code=sm_90a \
//        -Isrc -Iinclude -I.deps/cutlass/include benchmarks/cpp/tile_sweep_sm80.cu -o tile_sweep_sm80
// Put another directory holding an sm80/ tree before -Isrc to time a variant of the kernel code.
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

// ALiBi slopes of the kMod = 3 / 4 kernels, [h] on the device (main fills them).
float* g_alibi_slopes = nullptr;

// kMod: 0 plain, 1 softcap, 2 dropout (p = 0.1, the dropout kernels' features), 3 ALiBi,
// 4 softcap + ALiBi.
template <class Traits, int kMod>
fa::Status launch_traits(const fa::FwdParams& p) {
  fa::FwdParams q = p;
  if (kMod == 1 || kMod == 4) q.softcap = 30.f;  // the softcap kernel (Gemma 2's cap), same inputs
  if (kMod == 2) q.p_dropout = 0.1f;
  if (kMod == 3 || kMod == 4) q.alibi_slopes = g_alibi_slopes;
  const sm80::FwdArgsSm80 args = sm80::fwd_params_sm80<Traits>({q});  // dropout fields from q
  if constexpr (kMod == 2) {
    return sm80::launch_fwd_kernel_sm80<Traits, sm80::FwdFeaturesSm80<false, false, false, false, true>,
                                        sm80::TileSchedulerSm80>(args);
  } else {
    return sm80::launch_fwd_sm80<Traits, kMod == 1 || kMod == 4, kMod >= 3>(args);
  }
}

// A tile given by its knobs (tile_size_sm80.h).
template <int kHeadDim, int kBlockM, int kBlockN, int kNWarps, bool kPadded = false,
          int kStages = 1, bool kSkipRescale = false, int kMod = 0, int kWarpsN = 1,
          bool kQInRegs = false, bool kPaddedQ = kPadded, int kAhead = 0>
fa::Status launch(const fa::FwdParams& p) {
  using Traits = sm80::FwdKernelTraitsSm80<kHeadDim, kBlockM, kBlockN, kNWarps, cutlass::bfloat16_t,
                                           kPadded, kStages, kSkipRescale, kWarpsN, kQInRegs,
                                           kPaddedQ, kAhead>;
  return launch_traits<Traits, kMod>(p);
}

// A tile of the library's policy for head dim D (the plain policy for the "lib" rows, or
// another FwdTilePolicy such as the compact tile), exactly as the library builds its traits.
template <int D, int kMod = 0, sm80::FwdTilePolicy kPolicy = sm80::FwdTilePolicy::kPlain>
fa::Status launch_lib(const fa::FwdParams& p) {
  return launch_traits<sm80::FwdTraitsOf<fa::DType::kBFloat16, D, kPolicy>, kMod>(p);
}

using LaunchFn = fa::Status (*)(const fa::FwdParams&);
struct Variant {
  int d;
  const char* name;
  LaunchFn fn;
};

// Median of `iters` launches, each bracketed by events but queued back to back (one host sync at
// the end, as triton's do_bench does): no host launch latency inside the timed intervals.
double time_ms(LaunchFn fn, const fa::FwdParams& p, int iters) {
  for (int i = 0; i < 3; ++i) fn(p);
  std::vector<cudaEvent_t> ev(iters + 1);
  for (cudaEvent_t& e : ev) SWEEP_CHECK(cudaEventCreate(&e));
  SWEEP_CHECK(cudaEventRecord(ev[0]));
  for (int i = 0; i < iters; ++i) {
    const fa::Status s = fn(p);
    if (!s.ok()) {
      std::fprintf(stderr, "launch failed: %s\n", s.message().c_str());
      std::exit(1);
    }
    SWEEP_CHECK(cudaEventRecord(ev[i + 1]));
  }
  SWEEP_CHECK(cudaEventSynchronize(ev[iters]));
  std::vector<float> ms(iters);
  for (int i = 0; i < iters; ++i) SWEEP_CHECK(cudaEventElapsedTime(&ms[i], ev[i], ev[i + 1]));
  for (cudaEvent_t& e : ev) SWEEP_CHECK(cudaEventDestroy(e));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Usage: tile_sweep_sm80 [iters] [d list, e.g. 64,128] [seqlen list] [causal list, e.g. 0,1]
//                       [rounds: every variant timed this many times, interleaved]
// Environment: SWEEP_ONLY (below).
std::vector<int> parse_list(const char* s) {
  std::vector<int> v;
  for (const char* p = s; *p;) {
    v.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  return v;
}

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 20;
  const std::vector<int> dims = argc > 2 ? parse_list(argv[2]) : std::vector<int>{64, 128, 256};
  const std::vector<int> seqlens =
      argc > 3 ? parse_list(argv[3]) : std::vector<int>{512, 1024, 2048, 4096, 8192, 16384};
  const std::vector<int> causals = argc > 4 ? parse_list(argv[4]) : std::vector<int>{0, 1};
  const int rounds = argc > 5 ? std::atoi(argv[5]) : 1;
  // Knobs: s/p = swizzled/padded smem, 1/2 = K/V stages, a/k = always rescale / skip it.
  // SWEEP_ALL_KNOBS times all 8 knob sets of the library tile; by default the library policy
  // and the runners-up recorded in tile_size_sm80.h.
#define SWEEP_KNOBS(D, M, N, W)                                                   \
  {D, #M "x" #N "x" #W " s1a", &launch<D, M, N, W, false, 1, false>},             \
  {D, #M "x" #N "x" #W " s1k", &launch<D, M, N, W, false, 1, true>},              \
  {D, #M "x" #N "x" #W " s2a", &launch<D, M, N, W, false, 2, false>},             \
  {D, #M "x" #N "x" #W " s2k", &launch<D, M, N, W, false, 2, true>},              \
  {D, #M "x" #N "x" #W " p1a", &launch<D, M, N, W, true, 1, false>},              \
  {D, #M "x" #N "x" #W " p1k", &launch<D, M, N, W, true, 1, true>},               \
  {D, #M "x" #N "x" #W " p2a", &launch<D, M, N, W, true, 2, false>},              \
  {D, #M "x" #N "x" #W " p2k", &launch<D, M, N, W, true, 2, true>}
  std::vector<Variant> variants = {
#if !defined(SWEEP_D) || SWEEP_D == 64
      {64, "lib", &launch_lib<64>},
#ifdef SWEEP_ALL_KNOBS
      SWEEP_KNOBS(64, 128, 64, 4),
#else
      {64, "128x64x4 s2k (Q in smem)", &launch<64, 128, 64, 4, false, 2, true>},
      {64, "128x64x4 s1k", &launch<64, 128, 64, 4, false, 1, true, false, 1, true>},
#endif
#endif
#if !defined(SWEEP_D) || SWEEP_D == 128
      {128, "lib", &launch_lib<128>},
#ifdef SWEEP_ALL_KNOBS
      SWEEP_KNOBS(128, 128, 64, 4),
#else
      // The policy before the streamed S gemm (padded, single-buffered) and the streamed
      // policy with other look-aheads.
      {128, "128x64x4 p1k", &launch<128, 128, 64, 4, true, 1, true>},
      // A compact-tile candidate (GPUs that do not hold two CTAs of the policy, e.g. the A100;
      // p1k above is the compact tile): the dropout tile, spill-free with every score mod.
      {128, "128x32 Qp s2k a2", &launch<128, 128, 32, 4, false, 2, true, 0, 1, false, true, 2>},
      {128, "Qp s2k a2", &launch<128, 128, 64, 4, false, 2, true, 0, 1, false, true, 2>},
      {128, "Qp s2k a3", &launch<128, 128, 64, 4, false, 2, true, 0, 1, false, true, 3>},
      // K / V single-buffered: 66 KB of smem at d = 128, so 2 CTAs would fit on an A100 (164 KB
      // per SM; the policy's 98 KB fits one); but it spills 72 bytes (sm_90a).
      {128, "Qp s1k a2", &launch<128, 128, 64, 4, false, 1, true, 0, 1, false, true, 2>},
#ifdef SWEEP_SOFTCAP
      // Softcap kernels (the "diff" column then compares with the plain lib: not a check).
      {128, "softcap lib tile", &launch<128, 128, 64, 4, false, 2, true, 1, 1, false, true, 2>},
      {128, "softcap 128x64x4 p1k", &launch<128, 128, 64, 4, true, 1, true, 1>},
#endif
#ifdef SWEEP_ALIBI
      // ALiBi (slopes 2^(-8 (i + 1) / h)) and softcap + ALiBi: the policy's kernels, and the
      // compact-tile candidates (p1k spills there, tile_size_fwd_compact_sm80; 128 x 32 does not).
      {128, "alibi lib tile", &launch_lib<128, 3>},
      {128, "sc+alibi lib tile", &launch_lib<128, 4>},
      {128, "alibi p1k", &launch<128, 128, 64, 4, true, 1, true, 3>},
      {128, "alibi 128x32 Qp", &launch<128, 128, 32, 4, false, 2, true, 3, 1, false, true, 2>},
      {128, "sc+alibi p1k", &launch<128, 128, 64, 4, true, 1, true, 4>},
      {128, "sc+alibi 128x32", &launch<128, 128, 32, 4, false, 2, true, 4, 1, false, true, 2>},
#endif
#ifdef SWEEP_SOFTCAP_COMPACT
      // The compact tile as the library builds it (tile_size_fwd_compact_sm80), plain and softcap.
      {128, "compact lib", &launch_lib<128, 0, sm80::FwdTilePolicy::kPlainCompact>},
      {128, "softcap compact lib", &launch_lib<128, 1, sm80::FwdTilePolicy::kPlainCompact>},
      {128, "softcap p1k", &launch<128, 128, 64, 4, true, 1, true, 1>},
      {128, "softcap 128x32 Qp", &launch<128, 128, 32, 4, false, 2, true, 1, 1, false, true, 2>},
#endif
#ifdef SWEEP_DROPOUT
      // Dropout kernels, p = 0.1 (again not a check against lib).
      {128, "dropout 128x32 p1k", &launch<128, 128, 32, 4, true, 1, true, 2>},
      {128, "dropout 128x32 Qp s2k a2", &launch<128, 128, 32, 4, false, 2, true, 2, 1, false, true, 2>},
#endif
#endif
#endif
#if !defined(SWEEP_D) || SWEEP_D == 256
      {256, "lib", &launch_lib<256>},
#ifdef SWEEP_ALL_KNOBS
      SWEEP_KNOBS(256, 64, 64, 4),
#else
      {256, "64x64x4 s1k", &launch<256, 64, 64, 4, false, 1, true>},
      {256, "64x64x2x2 s1k Qp a1", &launch<256, 64, 64, 4, false, 1, true, 0, 2, false, true, 1>},
      {256, "64x64x2x2 s1k Qp a3", &launch<256, 64, 64, 4, false, 1, true, 0, 2, false, true, 3>},
      {256, "64x64x2x2 s1k Qp", &launch<256, 64, 64, 4, false, 1, true, 0, 2, false, true>},
#endif
#endif
  };
#undef SWEEP_KNOBS
  // SWEEP_ONLY="name,name,...": time only the variants of those names (exact match).
  if (const char* only = std::getenv("SWEEP_ONLY")) {
    const std::string list = std::string(",") + only + ",";
    std::vector<Variant> kept;
    for (const Variant& var : variants)
      if (list.find(std::string(",") + var.name + ",") != std::string::npos) kept.push_back(var);
    variants = kept;
  }
  const int64_t tokens = 16384, hidden = 2048;
  cutlass::bfloat16_t *q, *k, *v, *o;
  float* lse;
  const int64_t n = tokens * hidden;
  SWEEP_CHECK(cudaMalloc(&q, n * 2));
  SWEEP_CHECK(cudaMalloc(&k, n * 2));
  SWEEP_CHECK(cudaMalloc(&v, n * 2));
  SWEEP_CHECK(cudaMalloc(&o, n * 2));
  SWEEP_CHECK(cudaMalloc(&lse, tokens * 256 * sizeof(float)));
  {
    const int max_h = int(hidden / 32);
    std::vector<float> slopes(max_h);
    for (int i = 0; i < max_h; ++i) slopes[i] = std::exp2(-8.f * float(i + 1) / float(max_h));
    SWEEP_CHECK(cudaMalloc(&g_alibi_slopes, max_h * sizeof(float)));
    SWEEP_CHECK(cudaMemcpy(g_alibi_slopes, slopes.data(), max_h * sizeof(float),
                           cudaMemcpyHostToDevice));
  }
  fill_random<<<1024, 256>>>(q, n, 1);
  fill_random<<<1024, 256>>>(k, n, 2);
  fill_random<<<1024, 256>>>(v, n, 3);
  SWEEP_CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> a(n), b(n);

  // checksum = sum |o| over the whole output: equal (to rounding) across variants and across
  // builds of different code versions, a cheap cross-check that each computes the same thing.
  std::printf("%-4s %-7s %-6s %-16s %9s %9s %10s %12s\n", "d", "causal", "seqlen", "tile", "ms",
              "TFLOP/s", "max|o-first|", "sum|o|");
  for (int d : dims) {
    for (int causal : causals) {
      for (int s : seqlens) {
        Problem pr{int(tokens / s), s, int(hidden / d), d, causal != 0, q, k, v, o, lse};
        const fa::FwdParams p = pr.params();
        const double flops = 4.0 * pr.b * double(s) * s * pr.h * d * (causal ? 0.5 : 1.0);
        bool first = true;
        for (int round = 0; round < rounds; ++round) {
          // Round r starts at variant r: no variant is always the first one timed after the
          // previous point (its host-side check) or always follows the same neighbour.
          for (size_t j = 0; j < variants.size(); ++j) {
            const Variant& var = variants[(j + size_t(round)) % variants.size()];
            if (var.d != d) continue;
            SWEEP_CHECK(cudaMemset(o, 0xff, n * 2));  // NaN: an unwritten element shows in sum|o|
            const double ms = time_ms(var.fn, p, iters);
            double diff = 0, sum = 0;
            if (round == 0) {  // the outputs of later rounds are the same; skip the host work
              SWEEP_CHECK(cudaMemcpy(first ? a.data() : b.data(), o, n * 2, cudaMemcpyDeviceToHost));
              for (int64_t i = 0; i < n; ++i) {
                const float y = float(reinterpret_cast<cutlass::bfloat16_t&>(first ? a[i] : b[i]));
                sum += std::fabs(y);
                if (!first) {
                  const float x = float(reinterpret_cast<cutlass::bfloat16_t&>(a[i]));
                  diff = std::max(diff, double(std::fabs(x - y)));
                }
              }
            }
            std::printf("%-4d %-7d %-6d %-16s %9.3f %9.1f %10.3g %12.6g\n", d, causal, s,
                        var.name, ms, flops / ms * 1e-9, diff, sum);
            std::fflush(stdout);
            first = false;
          }
        }
      }
    }
  }
  return 0;
}
