// flashattn-bench: the main job. Computes attention for a shape and feature set given on the
// command line, on the GPU when there is one and a kernel covers the request, otherwise on the
// CPU backend; checks sampled rows against the CPU reference (double accumulation); prints the
// device, the median time, TFLOP/s by the FlashAttention formula (4*b*s_q*s_k*h*d, halved for
// causal; backward 2.5x) and the max error.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/numeric.h"
#include "cpu/backend.h"
#include "cpu/reference.h"
#include "flashattn/flashattn.h"

#if defined(FA_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace {

using flashattn::Backend;
using flashattn::DType;

struct Options {
  std::string backend = "auto";  // auto | cpu | cuda
  std::string mode = "fwd";      // fwd | bwd
  DType dtype = DType::kBFloat16;
  int b = 1, h = 16, h_k = 0, d = 128;
  int seqlen_q = 2048, seqlen_k = 2048;
  bool causal = false;
  int window_left = -1, window_right = -1;
  float softcap = 0.f;
  bool alibi = false;
  float dropout = 0.f;
  int splits = 1;
  int iters = 10, warmup = 2;
  int check_rows = 16;
  uint64_t seed = 42;
};

void usage() {
  std::printf(
      "usage: flashattn-bench [options]\n"
      "  --backend auto|cpu|cuda  where to run (auto: GPU if present and supported, else CPU)\n"
      "  --mode fwd|bwd           forward, or backward (timed alone, after one forward)\n"
      "  --dtype bf16|fp16|fp32   input/output type (fp32: CPU only)       [bf16]\n"
      "  --b N                    batch                                     [1]\n"
      "  --h N  --h-k N           query heads, kv heads (GQA; default h)    [16]\n"
      "  --d N                    head dim (<= 256)                         [128]\n"
      "  --seqlen N               s_q = s_k = N                             [2048]\n"
      "  --seqlen-q N --seqlen-k N\n"
      "  --causal                 bottom-right causal mask\n"
      "  --window L,R             sliding window (-1 = unbounded)\n"
      "  --softcap X              tanh softcap (> 0)\n"
      "  --alibi                  ALiBi with slopes 2^(-8(i+1)/h)\n"
      "  --dropout P              dropout probability\n"
      "  --splits N               split-KV count (0 = heuristic)            [1]\n"
      "  --iters N --warmup N     timed / untimed repetitions               [10, 2]\n"
      "  --check-rows N           query rows checked against the reference (0: no check) [16]\n"
      "  --seed N                 input seed                                [42]\n");
}

bool parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&](const char* what) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "flashattn-bench: %s needs a value\n", what);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage();
      std::exit(0);
    } else if (a == "--backend") {
      o->backend = next("--backend");
    } else if (a == "--mode") {
      o->mode = next("--mode");
    } else if (a == "--dtype") {
      std::string t = next("--dtype");
      if (t == "bf16") o->dtype = DType::kBFloat16;
      else if (t == "fp16") o->dtype = DType::kFloat16;
      else if (t == "fp32") o->dtype = DType::kFloat32;
      else return false;
    } else if (a == "--b") {
      o->b = std::atoi(next("--b"));
    } else if (a == "--h") {
      o->h = std::atoi(next("--h"));
    } else if (a == "--h-k") {
      o->h_k = std::atoi(next("--h-k"));
    } else if (a == "--d") {
      o->d = std::atoi(next("--d"));
    } else if (a == "--seqlen") {
      o->seqlen_q = o->seqlen_k = std::atoi(next("--seqlen"));
    } else if (a == "--seqlen-q") {
      o->seqlen_q = std::atoi(next("--seqlen-q"));
    } else if (a == "--seqlen-k") {
      o->seqlen_k = std::atoi(next("--seqlen-k"));
    } else if (a == "--causal") {
      o->causal = true;
    } else if (a == "--window") {
      if (std::sscanf(next("--window"), "%d,%d", &o->window_left, &o->window_right) != 2)
        return false;
    } else if (a == "--softcap") {
      o->softcap = std::strtof(next("--softcap"), nullptr);
    } else if (a == "--alibi") {
      o->alibi = true;
    } else if (a == "--dropout") {
      o->dropout = std::strtof(next("--dropout"), nullptr);
    } else if (a == "--splits") {
      o->splits = std::atoi(next("--splits"));
    } else if (a == "--iters") {
      o->iters = std::max(1, std::atoi(next("--iters")));
    } else if (a == "--warmup") {
      o->warmup = std::max(0, std::atoi(next("--warmup")));
    } else if (a == "--check-rows") {
      o->check_rows = std::atoi(next("--check-rows"));
    } else if (a == "--seed") {
      o->seed = std::strtoull(next("--seed"), nullptr, 10);
    } else {
      std::fprintf(stderr, "flashattn-bench: unknown option %s (see --help)\n", a.c_str());
      return false;
    }
  }
  if (o->h_k == 0) o->h_k = o->h;
  return o->mode == "fwd" || o->mode == "bwd";
}

// Host tensors in the call's dtype, plus fp32 copies for the reference.
struct HostTensor {
  DType dtype;
  std::vector<uint16_t> half;  // fp16/bf16 storage
  std::vector<float> f32;      // fp32 storage, or the exact fp32 values of `half`
  void* data() { return dtype == DType::kFloat32 ? static_cast<void*>(f32.data()) : half.data(); }
  size_t bytes() const { return f32.size() * flashattn::dtype_size(dtype); }
  static HostTensor random(DType t, size_t n, std::mt19937_64& rng) {
    HostTensor x{t, {}, {}};
    x.f32.resize(n);
    if (t != DType::kFloat32) x.half.resize(n);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (size_t i = 0; i < n; ++i) {
      float v = u(rng);
      if (t != DType::kFloat32) {
        flashattn::store_from_float(x.half.data(), t, int64_t(i), v);
        v = flashattn::load_as_float(x.half.data(), t, int64_t(i));
      }
      x.f32[i] = v;
    }
    return x;
  }
  static HostTensor empty(DType t, size_t n) {
    HostTensor x{t, {}, {}};
    x.f32.assign(n, 0.f);
    if (t != DType::kFloat32) x.half.assign(n, 0);
    return x;
  }
  float get(size_t i) const {
    return dtype == DType::kFloat32 ? f32[i]
                                    : flashattn::load_as_float(half.data(), dtype, int64_t(i));
  }
};

// Dense contiguous [b, s, heads, d] strides.
void set_strides(int s, int heads, int d, int64_t* batch, int64_t* row, int64_t* head) {
  *head = d;
  *row = int64_t(heads) * d;
  *batch = int64_t(s) * heads * d;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

#if defined(FA_WITH_CUDA)
#define CUDA_OK(x)                                                                   \
  do {                                                                               \
    cudaError_t e_ = (x);                                                            \
    if (e_ != cudaSuccess) {                                                         \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, \
                   __LINE__);                                                        \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)

void* to_device(const void* host, size_t bytes) {
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, std::max<size_t>(bytes, 16)));
  if (bytes) CUDA_OK(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice));
  return p;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  if (!parse(argc, argv, &opt)) {
    usage();
    return 2;
  }
  const flashattn::BuildInfo info = flashattn::build_info();
  bool use_cuda = false;
  if (opt.backend == "cuda") {
    if (info.cuda_device_count == 0) {
      std::fprintf(stderr, "flashattn-bench: --backend cuda but no CUDA device is available\n");
      return 2;
    }
    use_cuda = true;
  } else if (opt.backend == "auto") {
    use_cuda = info.cuda_device_count > 0 && opt.dtype != DType::kFloat32;
  } else if (opt.backend != "cpu") {
    usage();
    return 2;
  }

  // Inputs.
  std::mt19937_64 rng(opt.seed);
  const size_t nq = size_t(opt.b) * opt.seqlen_q * opt.h * opt.d;
  const size_t nk = size_t(opt.b) * opt.seqlen_k * opt.h_k * opt.d;
  HostTensor q = HostTensor::random(opt.dtype, nq, rng);
  HostTensor k = HostTensor::random(opt.dtype, nk, rng);
  HostTensor v = HostTensor::random(opt.dtype, nk, rng);
  HostTensor dout = HostTensor::random(opt.dtype, nq, rng);
  HostTensor o = HostTensor::empty(opt.dtype, nq);
  std::vector<float> lse(size_t(opt.b) * opt.h * opt.seqlen_q, 0.f);
  std::vector<float> slopes;
  for (int i = 0; i < opt.h && opt.alibi; ++i) slopes.push_back(std::exp2(-8.f * (i + 1) / opt.h));

  flashattn::BwdParams p;
  p.dtype = opt.dtype;
  p.b = opt.b;
  p.seqlen_q = opt.seqlen_q;
  p.seqlen_k = opt.seqlen_k;
  p.h = opt.h;
  p.h_k = opt.h_k;
  p.d = opt.d;
  set_strides(opt.seqlen_q, opt.h, opt.d, &p.q_batch_stride, &p.q_row_stride, &p.q_head_stride);
  set_strides(opt.seqlen_q, opt.h, opt.d, &p.o_batch_stride, &p.o_row_stride, &p.o_head_stride);
  set_strides(opt.seqlen_k, opt.h_k, opt.d, &p.k_batch_stride, &p.k_row_stride, &p.k_head_stride);
  set_strides(opt.seqlen_k, opt.h_k, opt.d, &p.v_batch_stride, &p.v_row_stride, &p.v_head_stride);
  p.do_batch_stride = p.dq_batch_stride = p.o_batch_stride;
  p.do_row_stride = p.dq_row_stride = p.o_row_stride;
  p.do_head_stride = p.dq_head_stride = p.o_head_stride;
  p.dk_batch_stride = p.dv_batch_stride = p.k_batch_stride;
  p.dk_row_stride = p.dv_row_stride = p.k_row_stride;
  p.dk_head_stride = p.dv_head_stride = p.k_head_stride;
  p.is_causal = opt.causal;
  p.window_size_left = opt.window_left;
  p.window_size_right = opt.window_right;
  p.softcap = opt.softcap;
  p.p_dropout = opt.dropout;
  p.philox_seed = opt.seed;
  p.num_splits = opt.splits;
  p.alibi_slopes = opt.alibi ? slopes.data() : nullptr;

  HostTensor dq = HostTensor::empty(opt.dtype, nq), dk = HostTensor::empty(opt.dtype, nk),
             dv = HostTensor::empty(opt.dtype, nk);
  const bool bwd = opt.mode == "bwd";

  // Device copies (GPU path).
  std::vector<void*> device_ptrs;
  std::string device_name = "cpu (" + std::to_string(flashattn::cpu::num_threads()) +
                            " threads, " + info.cpu_isa + ")";
  auto bind_host = [&]() {
    p.q_ptr = q.data();
    p.k_ptr = k.data();
    p.v_ptr = v.data();
    p.o_ptr = o.data();
    p.softmax_lse_ptr = lse.data();
    p.do_ptr = dout.data();
    p.dq_ptr = dq.data();
    p.dk_ptr = dk.data();
    p.dv_ptr = dv.data();
    p.alibi_slopes = opt.alibi ? slopes.data() : nullptr;
  };
  bind_host();

  auto run_once = [&]() -> flashattn::Status {
    return bwd ? flashattn::mha_bwd(p) : flashattn::mha_fwd(p);
  };
  auto time_it = [&](bool cuda) -> double {
    std::vector<double> ms;
    for (int it = 0; it < opt.warmup + opt.iters; ++it) {
#if defined(FA_WITH_CUDA)
      if (cuda) {
        cudaEvent_t e0, e1;
        CUDA_OK(cudaEventCreate(&e0));
        CUDA_OK(cudaEventCreate(&e1));
        CUDA_OK(cudaEventRecord(e0));
        flashattn::Status s = run_once();
        CUDA_OK(cudaEventRecord(e1));
        CUDA_OK(cudaEventSynchronize(e1));
        float t = 0;
        CUDA_OK(cudaEventElapsedTime(&t, e0, e1));
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
        if (!s.ok()) return -1;
        if (it >= opt.warmup) ms.push_back(t);
        continue;
      }
#else
      (void)cuda;
#endif
      auto t0 = std::chrono::steady_clock::now();
      flashattn::Status s = run_once();
      auto t1 = std::chrono::steady_clock::now();
      if (!s.ok()) return -1;
      if (it >= opt.warmup) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    return median(ms);
  };

  // A forward first (the backward needs o and lse), on the chosen device.
  flashattn::Status st;
#if defined(FA_WITH_CUDA)
  if (use_cuda) {
    cudaDeviceProp prop;
    CUDA_OK(cudaGetDeviceProperties(&prop, 0));
    device_name = std::string("cuda: ") + prop.name + " (sm_" + std::to_string(prop.major) +
                  std::to_string(prop.minor) + ", " + std::to_string(prop.multiProcessorCount) +
                  " SMs)";
    auto dev = [&](const void* host, size_t bytes) {
      device_ptrs.push_back(to_device(host, bytes));
      return device_ptrs.back();
    };
    p.q_ptr = dev(q.data(), q.bytes());
    p.k_ptr = dev(k.data(), k.bytes());
    p.v_ptr = dev(v.data(), v.bytes());
    p.o_ptr = dev(o.data(), o.bytes());
    p.softmax_lse_ptr = static_cast<float*>(dev(lse.data(), lse.size() * 4));
    p.do_ptr = dev(dout.data(), dout.bytes());
    p.dq_ptr = dev(dq.data(), dq.bytes());
    p.dk_ptr = dev(dk.data(), dk.bytes());
    p.dv_ptr = dev(dv.data(), dv.bytes());
    p.alibi_slopes = opt.alibi ? static_cast<float*>(dev(slopes.data(), slopes.size() * 4)) : nullptr;
    st = flashattn::mha_fwd(p);
    if (st.ok() && bwd) st = flashattn::mha_bwd(p);
    if (!st.ok() && st.code() == flashattn::StatusCode::kNotSupported && opt.backend == "auto") {
      std::printf("note: no GPU kernel for this request (%s); running on the CPU backend\n",
                  st.message().c_str());
      for (void* ptr : device_ptrs) cudaFree(ptr);
      device_ptrs.clear();
      use_cuda = false;
      device_name = "cpu (" + std::to_string(flashattn::cpu::num_threads()) + " threads, " +
                    info.cpu_isa + ")";
      bind_host();
    }
  }
#endif
  if (!use_cuda) {
    st = flashattn::mha_fwd(p);
    if (st.ok() && bwd) st = flashattn::mha_bwd(p);
  }
  if (!st.ok()) {
    std::fprintf(stderr, "flashattn-bench: %s\n", st.to_string().c_str());
    return 1;
  }

  const double ms = time_it(use_cuda);
  if (ms < 0) {
    std::fprintf(stderr, "flashattn-bench: a timed run failed\n");
    return 1;
  }
#if defined(FA_WITH_CUDA)
  if (use_cuda) {
    // Results back for the check (the forward's o and lse; the last call of a bwd run left them).
    CUDA_OK(cudaMemcpy(o.data(), p.o_ptr, o.bytes(), cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(lse.data(), p.softmax_lse_ptr, lse.size() * 4, cudaMemcpyDeviceToHost));
    for (void* ptr : device_ptrs) cudaFree(ptr);
    bind_host();
  }
#endif

  double flops = 4.0 * opt.b * opt.seqlen_q * opt.seqlen_k * opt.h * opt.d;
  if (opt.causal) flops *= 0.5;
  if (bwd) flops *= 2.5;
  const double tflops = flops / (ms * 1e-3) / 1e12;

  // tools/demo_peer.py reads this line to time torch SDPA on the same problem.
  const std::string dropout = opt.dropout > 0 ? " dropout=" + std::to_string(opt.dropout) : "";
  std::printf("flashattn-bench %s: %s %s b=%d s_q=%d s_k=%d h=%d h_k=%d d=%d%s%s%s%s%s\n",
              info.version.c_str(), opt.mode.c_str(), flashattn::dtype_name(opt.dtype), opt.b,
              opt.seqlen_q, opt.seqlen_k, opt.h, opt.h_k, opt.d, opt.causal ? " causal" : "",
              (opt.window_left >= 0 || opt.window_right >= 0) ? " window" : "",
              opt.softcap > 0 ? " softcap" : "", opt.alibi ? " alibi" : "", dropout.c_str());
  std::printf("device: %s\n", device_name.c_str());
  std::printf("time: %.3f ms (median of %d)  %.2f TFLOP/s  (%.1f GFLOP/s)\n", ms, opt.iters,
              tflops, tflops * 1e3);

  // Check sampled query rows of the forward against the reference on fp32 copies of the inputs.
  int exit_code = 0;
  if (opt.check_rows > 0 && opt.seqlen_q > 0) {
    flashattn::FwdParams r = p;
    std::vector<float> ro(nq, std::nanf("")), rlse(lse.size(), std::nanf(""));
    r.dtype = DType::kFloat32;
    r.q_ptr = q.f32.data();
    r.k_ptr = k.f32.data();
    r.v_ptr = v.f32.data();
    r.o_ptr = ro.data();
    r.softmax_lse_ptr = rlse.data();
    r.num_splits = 1;
    if (r.softmax_scale == 0.f) r.softmax_scale = 1.f / std::sqrt(float(r.d));
    if (r.is_causal) r.window_size_right = 0;
    const int n = std::min(opt.check_rows, opt.seqlen_q);
    std::vector<int> rows;
    for (int i = 0; i < n; ++i) rows.push_back(int(int64_t(i) * (opt.seqlen_q - 1) / std::max(1, n - 1)));
    rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
    double max_err = 0, max_lse_err = 0, max_ref = 0, rounding = 0;
    bool ok = true;
    for (int row : rows) {
      flashattn::ref::Options ro_opt;
      ro_opt.row_begin = row;
      ro_opt.row_end = row + 1;
      flashattn::Status rs = flashattn::ref::mha_fwd(r, ro_opt);
      if (!rs.ok()) {
        std::printf("check: reference unavailable (%s)\n", rs.to_string().c_str());
        ok = false;
        break;
      }
      for (int bb = 0; bb < opt.b; ++bb)
        for (int hh = 0; hh < opt.h; ++hh) {
          const size_t base = (size_t(bb) * opt.seqlen_q + row) * opt.h * opt.d + size_t(hh) * opt.d;
          for (int x = 0; x < opt.d; ++x) {
            const double ref = ro[base + x];
            const double got = o.get(base + x);
            max_ref = std::max(max_ref, std::fabs(ref));
            max_err = std::max(max_err, std::isfinite(got) ? std::fabs(got - ref) : INFINITY);
            rounding = std::max(rounding, std::fabs(double(flashattn::round_to_dtype(float(ref), opt.dtype)) - ref));
          }
          const size_t li = (size_t(bb) * opt.h + hh) * opt.seqlen_q + row;
          if (std::isinf(rlse[li]) || std::isinf(lse[li]))
            max_lse_err = std::max(max_lse_err, rlse[li] == lse[li] ? 0.0 : double(INFINITY));
          else
            max_lse_err = std::max(max_lse_err, std::fabs(double(lse[li]) - rlse[li]));
        }
    }
    if (ok) {
      // Bound: a few ulps of the output dtype on O(1) values (rounding of P to 16 bits before
      // P.V on the GPU costs about one more ulp), plus fp32 accumulation slack.
      const double ulp = opt.dtype == DType::kBFloat16 ? 1.0 / 128 : opt.dtype == DType::kFloat16 ? 1.0 / 1024 : 1e-6;
      const double bound = 4 * ulp * std::max(1.0, max_ref) + 1e-5;
      ok = max_err <= bound && max_lse_err <= 1e-3;
      std::printf("check: %zu sampled rows x %d heads x %d batches vs reference: max_abs_err %.3g "
                  "(bound %.3g, rounding-to-dtype %.3g), lse max_abs_err %.3g: %s\n",
                  rows.size(), opt.h, opt.b, max_err, bound, rounding, max_lse_err, ok ? "OK" : "FAIL");
    }
    if (!ok) exit_code = 1;
  }
  return exit_code;
}
