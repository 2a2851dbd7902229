// Timing tool of the SM80-path backward (a development tool, not part of the library).
// On the standard grid (bf16, batch * seqlen = 16384, hidden 2048, h = 2048 / d) it times, per
// (d, seqlen, causal), the whole backward (memset + preprocess + main kernel + postprocess) of
// the library's tile policy and of the variants compiled in below, the main kernel alone, and
// the deterministic mode, and prints TFLOP/s with FLOPs = 2.5 * 4 * b * s^2 * h * d (halved for
// causal). Every variant's dq/dk/dv is compared with the policy's (max |diff|): a cross-check
// that each computes the same thing. With --mem it reports the backward's workspace at
// s = 16k, d = 128: the size BwdWorkspaceSm80 computes and the stream-ordered pool's high-water
// mark around one call (cudaMemPoolAttrUsedMemHigh), plus cudaMemGetInfo before and after.
// The forward (o, lse) comes from the library (mha_fwd). Built by CMake with
// -DFA_BUILD_BENCH_CPP=ON (-DFA_BENCH_CPP_HDIM=128 compiles the d = 128 variants only, as
// -DBENCH_D=128 does), or by hand after building the library in build-bwdk (docs/sm80_backward.md):
//   nvcc -std=c++17 -O3 --expt-relaxed-constexpr --use_fast_math -gencode arch=compute_90a,code=sm_90a \
//        -Isrc -Iinclude -Ibuild-bwdk/generated -I.deps/cutlass/include \
//        benchmarks/cpp/bwd_bench_sm80.cu build-bwdk/libflashattn.a -o build-bwdk/bwd_bench_sm80
// Usage: bwd_bench_sm80 [iters] [d list] [seqlen list] [causal list] [--mem] [--det] [--only NAME]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "flashattn/flashattn.h"
#include "sm80/launch_bwd_sm80.cuh"

namespace fa = flashattn;
namespace sm80 = flashattn::sm80;

#define BENCH_CHECK(x)                                                            \
  do {                                                                            \
    cudaError_t e_ = (x);                                                         \
    if (e_ != cudaSuccess) {                                                      \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                \
      std::exit(1);                                                               \
    }                                                                             \
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

template <int D, int M, int N, int W, int AM, int AN, int AQ, int SQ, int SdO, int Atomics = 0,
          int DqParts = 1, int Ahead = 0>
using TraitsOf = sm80::BwdKernelTraitsSm80<D, M, N, W, AM, AN, AQ, SQ, SdO, cutlass::bfloat16_t, Atomics,
                                           DqParts, Ahead>;

// Plain kernels only (no softcap / ALiBi / dropout instantiations): a sixth of the compile time.
template <class Traits>
fa::Status run_full(const fa::BwdParams& p) {
  return sm80::run_bwd_with_traits_sm80<Traits, /*kPlainOnly=*/true>(p);
}

// The library's policy (tile_size_bwd_sm80.h) for head dim D: the same kernel the library runs.
template <int D>
fa::Status run_lib(const fa::BwdParams& p) {
  constexpr sm80::TileSizeBwdSm80 t = sm80::tile_size_bwd_sm80(D);
  return run_full<TraitsOf<D, t.block_m, t.block_n, t.n_warps, t.atom_m_sdp, t.atom_n_dkv,
                           t.atom_m_dq, t.stages_q, t.stages_do, 0, t.dq_parts,
                           t.gemm_chunks_ahead>>(p);
}

using RunFn = fa::Status (*)(const fa::BwdParams&);
struct Variant {
  int d;
  const char* name;
  RunFn fn;
};

// Median of `iters` calls, each bracketed by events, queued back to back (one host sync).
double time_ms(RunFn fn, const fa::BwdParams& p, int iters) {
  for (int i = 0; i < 2; ++i) fn(p);
  std::vector<cudaEvent_t> ev(iters + 1);
  for (cudaEvent_t& e : ev) BENCH_CHECK(cudaEventCreate(&e));
  BENCH_CHECK(cudaEventRecord(ev[0]));
  for (int i = 0; i < iters; ++i) {
    const fa::Status s = fn(p);
    if (!s.ok()) {
      std::fprintf(stderr, "backward failed: %s\n", s.message().c_str());
      std::exit(1);
    }
    BENCH_CHECK(cudaEventRecord(ev[i + 1]));
  }
  BENCH_CHECK(cudaEventSynchronize(ev[iters]));
  std::vector<float> ms(iters);
  for (int i = 0; i < iters; ++i) BENCH_CHECK(cudaEventElapsedTime(&ms[i], ev[i], ev[i + 1]));
  for (cudaEvent_t& e : ev) BENCH_CHECK(cudaEventDestroy(e));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

std::vector<int> parse_list(const char* s) {
  std::vector<int> v;
  for (const char* q = s; *q;) {
    v.push_back(std::atoi(q));
    while (*q && *q != ',') ++q;
    if (*q == ',') ++q;
  }
  return v;
}

struct Buffers {
  cutlass::bfloat16_t *q, *k, *v, *o, *dout, *dq, *dk, *dv;
  float* lse;
};

fa::BwdParams make_params(const Buffers& buf, int b, int s, int h, int d, bool causal) {
  fa::BwdParams p;
  p.dtype = fa::DType::kBFloat16;
  p.b = b;
  p.seqlen_q = p.seqlen_k = s;
  p.h = p.h_k = h;
  p.d = d;
  const int64_t row = int64_t(h) * d, batch = int64_t(s) * row;
  p.q_ptr = buf.q;
  p.k_ptr = buf.k;
  p.v_ptr = buf.v;
  p.o_ptr = buf.o;
  p.do_ptr = buf.dout;
  p.dq_ptr = buf.dq;
  p.dk_ptr = buf.dk;
  p.dv_ptr = buf.dv;
  p.softmax_lse_ptr = buf.lse;
  p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = p.o_batch_stride = batch;
  p.do_batch_stride = p.dq_batch_stride = p.dk_batch_stride = p.dv_batch_stride = batch;
  p.q_row_stride = p.k_row_stride = p.v_row_stride = p.o_row_stride = row;
  p.do_row_stride = p.dq_row_stride = p.dk_row_stride = p.dv_row_stride = row;
  p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = d;
  p.do_head_stride = p.dq_head_stride = p.dk_head_stride = p.dv_head_stride = d;
  p.softmax_scale = 1.f / std::sqrt(float(d));
  p.is_causal = causal;
  p.window_size_right = causal ? 0 : -1;
  return p;
}

std::vector<uint16_t> download(const void* src, int64_t n) {
  std::vector<uint16_t> h(n);
  BENCH_CHECK(cudaMemcpy(h.data(), src, n * 2, cudaMemcpyDeviceToHost));
  return h;
}

float bf16f(uint16_t x) {
  uint32_t u = uint32_t(x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

double max_diff(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(bf16f(a[i]) - bf16f(b[i]))));
  return m;
}

// The "lib" variant of head dim d, or null where BENCH_D left it out (so that a build for one
// head dim instantiates no other head dim's kernels).
RunFn lib_of(const std::vector<Variant>& variants, int d) {
  for (const Variant& var : variants)
    if (var.d == d && std::string(var.name) == "lib") return var.fn;
  return nullptr;
}

int main(int argc, char** argv) {
  bool mem = false, det = false;
  std::string only;  // --only NAME: time only the variants whose name contains NAME
  std::vector<const char*> pos;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--mem")) mem = true;
    else if (!std::strcmp(argv[i], "--det")) det = true;
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else pos.push_back(argv[i]);
  }
  const int iters = pos.size() > 0 ? std::atoi(pos[0]) : 10;
  const std::vector<int> dims = pos.size() > 1 ? parse_list(pos[1]) : std::vector<int>{64, 128, 256};
  const std::vector<int> seqlens =
      pos.size() > 2 ? parse_list(pos[2]) : std::vector<int>{1024, 2048, 4096, 8192, 16384};
  const std::vector<int> causals = pos.size() > 3 ? parse_list(pos[3]) : std::vector<int>{0, 1};

  // Variants: (d, M, N, warps, warps along M of S/dP, along N of dK/dV, along M of dQ, Q buffers,
  // dO buffers[, dQ atomics kind, dQ gemm slices]); "q2o1" = two Q buffers and one dO buffer.
  const std::vector<Variant> variants = {
#if !defined(BENCH_D) || BENCH_D == 64
      {64, "lib", &run_lib<64>},
#ifdef BENCH_VARIANTS
      {64, "q1o1", &run_full<TraitsOf<64, 128, 128, 8, 4, 4, 4, 1, 1>>},
      {64, "q1o1 dQ halves", &run_full<TraitsOf<64, 128, 128, 8, 4, 4, 4, 1, 1, 0, 2>>},
#ifndef BENCH_QUICK
      {64, "S/dP 2x4 q2o1", &run_full<TraitsOf<64, 128, 128, 8, 2, 4, 4, 2, 1>>},
      {64, "64x128 2/4/2 q2o1", &run_full<TraitsOf<64, 64, 128, 8, 2, 4, 2, 2, 1>>},
      {64, "64x128x8 2/4/2 q2o2", &run_full<TraitsOf<64, 64, 128, 8, 2, 4, 2, 2, 2>>},
      {64, "q2o2", &run_full<TraitsOf<64, 128, 128, 8, 4, 4, 4, 2, 2>>},
#endif
#endif
#endif
#if !defined(BENCH_D) || BENCH_D == 128
      {128, "lib", &run_lib<128>},
#ifdef BENCH_VARIANTS
      {128, "q2o1", &run_full<TraitsOf<128, 64, 128, 8, 2, 4, 2, 2, 1>>},
      {128, "dQ halves", &run_full<TraitsOf<128, 64, 128, 8, 2, 4, 2, 2, 2, 0, 2>>},
#ifndef BENCH_QUICK
      {128, "scalar-red", &run_full<TraitsOf<128, 64, 128, 8, 2, 4, 2, 2, 2, 1>>},
      {128, "no-dQ-atomics", &run_full<TraitsOf<128, 64, 128, 8, 2, 4, 2, 2, 2, 2>>},
#endif
#endif
#endif
#if !defined(BENCH_D) || BENCH_D == 256
      {256, "lib", &run_lib<256>},
#ifdef BENCH_VARIANTS
      {256, "dQ whole", &run_full<TraitsOf<256, 64, 64, 8, 4, 2, 2, 1, 1>>},
      {256, "dQ halves", &run_full<TraitsOf<256, 64, 64, 8, 4, 2, 2, 1, 1, 0, 2>>},
      {256, "q2o1 dQ quarters", &run_full<TraitsOf<256, 64, 64, 8, 4, 2, 2, 2, 1, 0, 4>>},
#ifndef BENCH_QUICK
      {256, "q2o1 dQ whole", &run_full<TraitsOf<256, 64, 64, 8, 4, 2, 2, 2, 1>>},
      {256, "q2o2", &run_full<TraitsOf<256, 64, 64, 8, 4, 2, 2, 2, 2, 0, 4>>},
      {256, "scalar-red", &run_full<TraitsOf<256, 64, 64, 8, 4, 2, 2, 1, 1, 1, 4>>},
#endif
#endif
#endif
  };

  const int64_t tokens = 16384, hidden = 2048, n = tokens * hidden;
  Buffers buf;
  for (cutlass::bfloat16_t** ptr : {&buf.q, &buf.k, &buf.v, &buf.o, &buf.dout, &buf.dq, &buf.dk, &buf.dv})
    BENCH_CHECK(cudaMalloc(ptr, n * 2));
  BENCH_CHECK(cudaMalloc(&buf.lse, tokens * 64 * sizeof(float)));
  fill_random<<<1024, 256>>>(buf.q, n, 1);
  fill_random<<<1024, 256>>>(buf.k, n, 2);
  fill_random<<<1024, 256>>>(buf.v, n, 3);
  fill_random<<<1024, 256>>>(buf.dout, n, 4);
  BENCH_CHECK(cudaDeviceSynchronize());

  cudaDeviceProp prop;
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  std::printf("%-4s %-6s %-7s %-18s %9s %8s %10s\n", "d", "seqlen", "causal", "variant", "ms", "TFLOP/s",
              "max|diff|");
  for (int d : dims) {
    const int h = int(hidden / d);
    for (int s : seqlens) {
      const int b = int(tokens / s);
      for (int causal : causals) {
        fa::BwdParams p = make_params(buf, b, s, h, d, causal != 0);
        const fa::Status fs = fa::mha_fwd(p);
        if (!fs.ok()) {
          std::fprintf(stderr, "forward failed: %s\n", fs.message().c_str());
          return 1;
        }
        BENCH_CHECK(cudaDeviceSynchronize());
        const double flops = 2.5 * 4.0 * b * double(s) * s * h * d * (causal ? 0.5 : 1.0);
        std::vector<uint16_t> ref_dq, ref_dk, ref_dv;
        for (const Variant& var : variants) {
          if (var.d != d || std::string(var.name).find(only) == std::string::npos) continue;
          const double ms = time_ms(var.fn, p, iters);
          BENCH_CHECK(cudaDeviceSynchronize());
          // The cross-check at the first seqlen of the list only (it moves 3 x 64 MB each time).
          double diff = -1;
          if (s == seqlens.front()) {
            std::vector<uint16_t> gq = download(buf.dq, n), gk = download(buf.dk, n), gv = download(buf.dv, n);
            if (ref_dq.empty()) {
              ref_dq = gq, ref_dk = gk, ref_dv = gv;
              diff = 0;
            } else {
              diff = std::max({max_diff(gq, ref_dq), max_diff(gk, ref_dk), max_diff(gv, ref_dv)});
            }
          }
          std::printf("%-4d %-6d %-7d %-18s %9.3f %8.1f %10.3g\n", d, s, causal, var.name, ms,
                      flops / ms * 1e-9, diff);
          std::fflush(stdout);
        }
        if (det) {
          fa::BwdParams pd = p;
          pd.deterministic = true;
          const RunFn lib = lib_of(variants, d);
          if (lib == nullptr) continue;
          const double ms = time_ms(lib, pd, iters);
          BENCH_CHECK(cudaDeviceSynchronize());
          const double diff = ref_dq.empty() ? -1.0 : max_diff(download(buf.dq, n), ref_dq);
          std::printf("%-4d %-6d %-7d %-18s %9.3f %8.1f %10.3g\n", d, s, causal, "lib deterministic",
                      ms, flops / ms * 1e-9, diff);
          std::fflush(stdout);
        }
      }
    }
  }

  if (mem && lib_of(variants, 128) == nullptr) {
    std::fprintf(stderr, "--mem times d = 128: build with BENCH_D=128 or without BENCH_D\n");
    return 1;
  }
  if (mem) {
    // The standard grid's shape (docs/design.md) at s = 16k, d = 128: b = 1, h = 16.
    fa::BwdParams p = make_params(buf, 1, 16384, 16, 128, false);
    if (!fa::mha_fwd(p).ok()) return 1;
    BENCH_CHECK(cudaDeviceSynchronize());
    const sm80::BwdWorkspaceSm80 ws = sm80::BwdWorkspaceSm80::make(p, 128, 64);
    int dev = 0;
    cudaMemPool_t pool;
    BENCH_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
    uint64_t zero = 0;
    BENCH_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
    BENCH_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &zero));
    size_t free0 = 0, free1 = 0, total = 0;
    BENCH_CHECK(cudaMemGetInfo(&free0, &total));
    if (!lib_of(variants, 128)(p).ok()) return 1;
    BENCH_CHECK(cudaDeviceSynchronize());
    BENCH_CHECK(cudaMemGetInfo(&free1, &total));
    uint64_t used_high = 0, reserved_high = 0;
    BENCH_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &used_high));
    BENCH_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &reserved_high));
    const double mib = 1024.0 * 1024.0;
    std::printf("memory (b=1, s=16384, h=16, d=128, bf16): inputs q,k,v,o,dout + grads dq,dk,dv "
                "%.1f MiB each\n", 16384.0 * 16 * 128 * 2 / mib);
    std::printf("  workspace computed: %.1f MiB (dq_accum %.1f, D %.2f)\n", ws.total * 4 / mib,
                double(ws.dsum - ws.dq_accum) * 4 / mib, double(ws.total - ws.dsum) * 4 / mib);
    std::printf("  pool high-water mark: used %.1f MiB, reserved %.1f MiB\n", used_high / mib,
                reserved_high / mib);
    std::printf("  cudaMemGetInfo free before %.1f MiB, after %.1f MiB (pool memory returned at sync)\n",
                free0 / mib, free1 / mib);
  }
  return 0;
}
