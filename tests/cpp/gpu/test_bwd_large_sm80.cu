// Large-shape tests of the SM80-path GPU backward (mha_bwd / mha_varlen_bwd), skipped without a
// GPU: shapes too large for the CPU reference, checked against a naive GPU reference backward
// defined here (fp32, one thread block per query row for dQ and one per key for dK / dV).
//
// Oracle R: the reference in fp32 from the very inputs the kernel saw (its own softmax; D as
// sum_j P_ij dP_ij). Low-precision L: the same reference with every intermediate rounded to the
// dtype the way PyTorch's fp16/bf16 autograd does it (the lowp_backward of test_bwd_sm80.cu:
// q * scale, scores, P, dP, dS and gemm outputs rounded, softmax and its backward in fp32).
// Rule (flash_attn's, for gradients): for each of dq, dk, dv
//     max |G - R| <= 3 * max |L - R| + 2e-5 * max(1, max |R|).
// The forward's o and LSE (the backward's inputs) come from the GPU reference forward
// (cuda::ref::mha_fwd), which also draws the dropout mask from the shared Philox stream.
// Gradients are poisoned with NaN before the call: every element must come back finite.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "api/validate.h"
#include "common/mask.h"
#include "common/numeric.h"
#include "common/philox.h"
#include "common/seqlen.h"
#include "cuda/reference.h"
#include "flashattn/flashattn.h"
#include "gpu/bwd_checks_sm80.h"
#include "gpu/gpu_testing.h"
#include "testing/problem.h"

namespace flashattn::testing {
namespace {

constexpr int kRefThreads = 128;
constexpr int kMaxKeys = 3584;  // row buffers of the reference: 3 x 14 KB of static shared memory

struct RefBwdArgs {
  BwdParams p;        // resolved, device pointers
  bool lowp = false;  // round intermediates to p.dtype (L) instead of fp32 (R)
  float* dq = nullptr;  // [rows_q, h, d]
  float* dk = nullptr;  // [rows_k, h_k, d]
  float* dv = nullptr;
  float* row_m = nullptr;  // [rows_q, h]: max score (-inf: empty row), sum of exp, D
  float* row_l = nullptr;
  float* row_D = nullptr;
};

__device__ float rdv(const RefBwdArgs& a, float x) { return a.lowp ? round_to_dtype(x, a.p.dtype) : x; }

// q_i . k_j (scaled) with the score modifiers (ALiBi; the large tests use no softcap).
__device__ float ref_score(const RefBwdArgs& a, const SeqlenInfo& seq, int bb, int hh, int i, int j) {
  const BwdParams& p = a.p;
  const bool vl = p.cu_seqlens_q != nullptr;
  const int hk = hh / (p.h / p.h_k);
  const int64_t qo = seq.q_offset(p.q_batch_stride, p.q_row_stride, p.q_head_stride, bb, i, hh, vl);
  const int64_t ko = seq.k_offset(p.k_batch_stride, p.k_row_stride, p.k_head_stride, bb, j, hk, vl);
  float acc = 0.f;
  for (int x = 0; x < p.d; ++x) {
    const float q = load_as_float(p.q_ptr, p.dtype, qo + x);
    const float k = load_as_float(p.k_ptr, p.dtype, ko + x);
    acc += (a.lowp ? rdv(a, q * p.softmax_scale) : q) * k;
  }
  float s = a.lowp ? rdv(a, acc) : acc * p.softmax_scale;
  if (p.alibi_slopes != nullptr) {
    const float slope = p.alibi_slopes[bb * p.alibi_slopes_batch_stride + hh];
    s = s - slope * float(abs(i + seq.seqlen_k - seq.seqlen_q - j));
  }
  return s;
}

__device__ float ref_dot_do_v(const RefBwdArgs& a, const SeqlenInfo& seq, int bb, int hh, int i, int j) {
  const BwdParams& p = a.p;
  const bool vl = p.cu_seqlens_q != nullptr;
  const int hk = hh / (p.h / p.h_k);
  const int64_t oo = seq.q_offset(p.do_batch_stride, p.do_row_stride, p.do_head_stride, bb, i, hh, vl);
  const int64_t vo = seq.k_offset(p.v_batch_stride, p.v_row_stride, p.v_head_stride, bb, j, hk, vl);
  float acc = 0.f;
  for (int x = 0; x < p.d; ++x)
    acc += load_as_float(p.do_ptr, p.dtype, oo + x) * load_as_float(p.v_ptr, p.dtype, vo + x);
  return rdv(a, acc);
}

struct RefDropout {
  DropoutRng rng;
  bool on = false;
  float keep_scale = 1.f;
  __device__ static RefDropout make(const BwdParams& p) {
    RefDropout d;
    d.on = p.p_dropout > 0.f;
    d.rng.seed = p.philox_seed;
    d.rng.offset = p.philox_offset;
    d.rng.threshold = dropout_threshold(p.p_dropout);
    d.keep_scale = d.on ? 1.f / (1.f - p.p_dropout) : 1.f;
    return d;
  }
};

__device__ float block_reduce(float v, float* scratch, bool is_max) {
  for (int o = 16; o > 0; o /= 2) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = is_max ? -INFINITY : 0.f;
  for (int w = 0; w < kRefThreads / 32; ++w) r = is_max ? fmaxf(r, scratch[w]) : r + scratch[w];
  return r;
}

int64_t rows_of(const BwdParams& p, bool q) {
  if (p.cu_seqlens_q != nullptr) return q ? p.total_q : p.total_k;
  return int64_t(p.b) * (q ? p.seqlen_q : p.seqlen_k);
}

__device__ int64_t q_row0(const BwdParams& p, const SeqlenInfo& seq, int bb) {
  return p.cu_seqlens_q != nullptr ? seq.q_row0 : int64_t(bb) * p.seqlen_q;
}

// One block per (query row i, head hh, sequence bb): P, dP, dS of the row, dQ_i, and the row
// statistics for the column pass.
__global__ void __launch_bounds__(kRefThreads) ref_bwd_rows(RefBwdArgs a) {
  __shared__ float scratch[kRefThreads / 32];
  __shared__ float s_row[kMaxKeys], p_row[kMaxKeys], ds_row[kMaxKeys];
  const BwdParams& p = a.p;
  const int i = blockIdx.x, hh = blockIdx.y, bb = blockIdx.z;
  const SeqlenInfo seq = SeqlenInfo::make(p, bb);
  if (i >= seq.seqlen_q) return;
  const VisibilityMask mask = VisibilityMask::make(seq.seqlen_q, seq.seqlen_k, p.is_causal,
                                                   p.window_size_left, p.window_size_right);
  const int cb = mask.col_begin(i), ce = mask.col_end(i), n = max(ce - cb, 0);
  const int64_t r = (q_row0(p, seq, bb) + i) * p.h + hh;  // [rows_q, h] index of (row i, head hh)
  float* dq = a.dq + r * p.d;
  if (n == 0) {
    for (int x = threadIdx.x; x < p.d; x += kRefThreads) dq[x] = 0.f;
    if (threadIdx.x == 0) a.row_m[r] = -INFINITY;
    return;
  }
  const RefDropout drop = RefDropout::make(p);
  const uint64_t bh = uint64_t(bb) * p.h + hh;
  float m = -INFINITY;
  for (int jj = threadIdx.x; jj < n; jj += kRefThreads) {
    s_row[jj] = ref_score(a, seq, bb, hh, i, cb + jj);
    m = fmaxf(m, s_row[jj]);
  }
  m = block_reduce(m, scratch, true);
  float l = 0.f;
  for (int jj = threadIdx.x; jj < n; jj += kRefThreads) l += expf(s_row[jj] - m);
  l = block_reduce(l, scratch, false);
  float dsum = 0.f;
  for (int jj = threadIdx.x; jj < n; jj += kRefThreads) {
    const float pr = rdv(a, expf(s_row[jj] - m) / l);
    float dp = ref_dot_do_v(a, seq, bb, hh, i, cb + jj);
    if (drop.on) dp = drop.rng.keep(bh, i, cb + jj) ? rdv(a, dp * drop.keep_scale) : 0.f;
    p_row[jj] = pr;
    ds_row[jj] = dp;  // dP for now
    dsum += dp * pr;
  }
  dsum = block_reduce(dsum, scratch, false);
  for (int jj = threadIdx.x; jj < n; jj += kRefThreads) ds_row[jj] = rdv(a, p_row[jj] * (ds_row[jj] - dsum));
  __syncthreads();
  const bool vl = p.cu_seqlens_q != nullptr;
  const int hk = hh / (p.h / p.h_k);
  for (int x = threadIdx.x; x < p.d; x += kRefThreads) {
    float acc = 0.f;
    for (int jj = 0; jj < n; ++jj) {
      const int64_t ko = seq.k_offset(p.k_batch_stride, p.k_row_stride, p.k_head_stride, bb, cb + jj, hk, vl);
      acc += ds_row[jj] * load_as_float(p.k_ptr, p.dtype, ko + x);
    }
    dq[x] = rdv(a, rdv(a, acc) * p.softmax_scale);
  }
  if (threadIdx.x == 0) {
    a.row_m[r] = m;
    a.row_l[r] = l;
    a.row_D[r] = dsum;
  }
}

// One block per (key j, kv head hk, sequence bb): dK_j, dV_j summed over the query heads of hk
// (each head's sum rounded once in the low-precision mode, as the autograd of a GQA expand does).
__global__ void __launch_bounds__(kRefThreads) ref_bwd_cols(RefBwdArgs a) {
  __shared__ float ds_c[kRefThreads], pd_c[kRefThreads];
  constexpr int kMaxPerThread = 2;  // d <= 256
  const BwdParams& p = a.p;
  const int j = blockIdx.x, hk = blockIdx.y, bb = blockIdx.z;
  const SeqlenInfo seq = SeqlenInfo::make(p, bb);
  const bool vl = p.cu_seqlens_q != nullptr;
  const int rows_k_seq = vl ? p.cu_seqlens_k[bb + 1] - p.cu_seqlens_k[bb] : p.seqlen_k;
  if (j >= rows_k_seq) return;
  const int64_t krow = (vl ? seq.k_row0 : int64_t(bb) * p.seqlen_k) + j;
  const VisibilityMask mask = VisibilityMask::make(seq.seqlen_q, seq.seqlen_k, p.is_causal,
                                                   p.window_size_left, p.window_size_right);
  const RefDropout drop = RefDropout::make(p);
  const int ratio = p.h / p.h_k;
  float dk_sum[kMaxPerThread] = {}, dv_sum[kMaxPerThread] = {};
  for (int hh = hk * ratio; hh < (hk + 1) * ratio; ++hh) {
    const uint64_t bh = uint64_t(bb) * p.h + hh;
    float dk_h[kMaxPerThread] = {}, dv_h[kMaxPerThread] = {};
    for (int i0 = 0; i0 < seq.seqlen_q; i0 += kRefThreads) {
      const int i = i0 + threadIdx.x;
      float ds = 0.f, pd = 0.f;
      if (i < seq.seqlen_q && j < seq.seqlen_k && mask.visible(i, j)) {
        const int64_t ri = (q_row0(p, seq, bb) + i) * p.h + hh;
        const float pr = rdv(a, expf(ref_score(a, seq, bb, hh, i, j) - a.row_m[ri]) / a.row_l[ri]);
        float dp = ref_dot_do_v(a, seq, bb, hh, i, j);
        const bool keep = !drop.on || drop.rng.keep(bh, i, j);
        pd = drop.on ? (keep ? rdv(a, pr * drop.keep_scale) : 0.f) : pr;
        if (drop.on) dp = keep ? rdv(a, dp * drop.keep_scale) : 0.f;
        ds = rdv(a, pr * (dp - a.row_D[ri]));
      }
      __syncthreads();
      ds_c[threadIdx.x] = ds;
      pd_c[threadIdx.x] = pd;
      __syncthreads();
      const int n = min(kRefThreads, seq.seqlen_q - i0);
      for (int e = 0; e < kMaxPerThread; ++e) {
        const int x = threadIdx.x + e * kRefThreads;
        if (x >= p.d) continue;
        for (int t = 0; t < n; ++t) {
          if (ds_c[t] == 0.f && pd_c[t] == 0.f) continue;
          const int64_t qo = seq.q_offset(p.q_batch_stride, p.q_row_stride, p.q_head_stride, bb, i0 + t, hh, vl);
          const int64_t oo = seq.q_offset(p.do_batch_stride, p.do_row_stride, p.do_head_stride, bb, i0 + t, hh, vl);
          const float q = load_as_float(p.q_ptr, p.dtype, qo + x);
          dk_h[e] += ds_c[t] * (a.lowp ? rdv(a, q * p.softmax_scale) : q);
          dv_h[e] += pd_c[t] * load_as_float(p.do_ptr, p.dtype, oo + x);
        }
      }
    }
    for (int e = 0; e < kMaxPerThread; ++e) {
      dk_sum[e] += a.lowp ? rdv(a, dk_h[e]) : dk_h[e] * p.softmax_scale;
      dv_sum[e] += rdv(a, dv_h[e]);
    }
  }
  for (int e = 0; e < kMaxPerThread; ++e) {
    const int x = threadIdx.x + e * kRefThreads;
    if (x >= p.d) continue;
    a.dk[(krow * p.h_k + hk) * p.d + x] = rdv(a, dk_sum[e]);
    a.dv[(krow * p.h_k + hk) * p.d + x] = rdv(a, dv_sum[e]);
  }
}

// The reference backward on the device problem `dev` (inputs already there, resolved params).
Grads ref_backward(const BwdParams& p, bool lowp) {
  const int64_t rq = rows_of(p, true), rk = rows_of(p, false);
  DeviceBuffer dq(sizeof(float) * rq * p.h * p.d), dk(sizeof(float) * rk * p.h_k * p.d),
      dv(sizeof(float) * rk * p.h_k * p.d), m(sizeof(float) * rq * p.h), l(sizeof(float) * rq * p.h),
      D(sizeof(float) * rq * p.h);
  RefBwdArgs a;
  a.p = p;
  a.lowp = lowp;
  a.dq = dq.as<float>();
  a.dk = dk.as<float>();
  a.dv = dv.as<float>();
  a.row_m = m.as<float>();
  a.row_l = l.as<float>();
  a.row_D = D.as<float>();
  if (rq > 0) ref_bwd_rows<<<dim3(p.seqlen_q, p.h, p.b), kRefThreads>>>(a);
  cuda_or_throw(cudaGetLastError(), "ref_bwd_rows launch");
  if (rk > 0) ref_bwd_cols<<<dim3(p.seqlen_k, p.h_k, p.b), kRefThreads>>>(a);
  cuda_or_throw(cudaGetLastError(), "ref_bwd_cols launch");
  sync_or_throw();
  Grads g;
  g.dq.resize(rq * p.h * p.d);
  g.dk.resize(rk * p.h_k * p.d);
  g.dv.resize(g.dk.size());
  dq.to(g.dq);
  dk.to(g.dk);
  dv.to(g.dv);
  return g;
}

double max_abs_err(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(double(a[i]) - double(b[i]))));
  return m;
}

bool hdim_compiled(int d) {
  const int r = d <= 32 ? 32 : d <= 64 ? 64 : d <= 96 ? 96 : d <= 128 ? 128 : d <= 192 ? 192 : 256;
  for (int hd : build_info().head_dims)
    if (hd == r) return true;
  return false;
}

DType any_dtype() {
  for (const std::string& s : build_info().dtypes)
    if (s == "bf16") return DType::kBFloat16;
  return DType::kFloat16;
}

void check_large(const AttnConfig& c, const std::string& what) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(what + " seed=" + std::to_string(seed) + " | " + c.str());
  ASSERT_LE(std::max(c.seqlen_k, c.seqlen_q), kMaxKeys);
  BwdProblem bp = make_bwd_problem(c, seed);
  bp.bind();
  DeviceBwdProblem dev(bp);
  const BwdParams p = detail::resolve(dev.params);
  // The forward's o and LSE on the device (GPU reference forward, the same Philox mask).
  const Status fs = cuda::ref::mha_fwd(p);
  ASSERT_TRUE(fs.ok()) << fs.to_string();
  sync_or_throw();
  const Status s = p.cu_seqlens_q != nullptr ? mha_varlen_bwd(dev.params) : mha_bwd(dev.params);
  ASSERT_TRUE(s.ok()) << s.to_string();
  BwdProblem got = bp;
  got.bind();
  dev.copy_back(got);
  const Grads g = gather_grads(got);
  const Grads r = ref_backward(p, false), l = ref_backward(p, true);
  const char* names[3] = {"dq", "dk", "dv"};
  const std::vector<float>* gs[3] = {&g.dq, &g.dk, &g.dv};
  const std::vector<float>* rs[3] = {&r.dq, &r.dk, &r.dv};
  const std::vector<float>* ls[3] = {&l.dq, &l.dk, &l.dv};
  std::string line = "[bwd-sm80-large] d=" + std::to_string(c.d) + " " + what;
  for (int t = 0; t < 3; ++t) {
    EXPECT_EQ(count_nonfinite(*gs[t]), 0) << names[t] << ": element not written (NaN) or inf";
    EXPECT_EQ(count_nonfinite(*rs[t]), 0) << names[t] << ": reference not finite";
    const double err = max_abs_err(*gs[t], *rs[t]);
    const double err_lowp = max_abs_err(*ls[t], *rs[t]);
    const double bound = 3.0 * err_lowp + 2e-5 * std::max(1.0, max_abs(*rs[t]));
    EXPECT_LE(err, bound) << names[t] << ": max_err=" << err << " lowp_err=" << err_lowp;
    char buf[128];
    std::snprintf(buf, sizeof(buf), " max_err_%s=%.3g bound=%.3g", names[t], err, bound);
    line += buf;
  }
  std::printf("%s cfg=%s\n", line.c_str(), c.str().c_str());
  std::fflush(stdout);
}

class BwdLargeSm80 : public GpuTest {};

TEST_F(BwdLargeSm80, AgainstGpuReference) {
  const DType t = any_dtype();
  int ran = 0;
  struct L { int b, s_q, s_k, h, hk, d; bool causal; };
  for (L x : {L{2, 1023, 1025, 4, 2, 128, false}, L{1, 2049, 2047, 2, 1, 64, true},
              L{1, 1500, 1500, 2, 2, 256, true}, L{1, 1025, 3000, 2, 2, 128, true}}) {
    if (!hdim_compiled(x.d)) continue;
    AttnConfig c = base(t, x.b, x.s_q, x.s_k, x.h, x.hk, x.d);
    c.causal = x.causal;
    check_large(c, x.causal ? "causal" : "plain");
    ++ran;
  }
  const int d = hdim_compiled(128) ? 128 : build_info().head_dims.front();
  AttnConfig drop = base(t, 2, 1000, 1100, 4, 2, d);
  drop.causal = true;
  drop.p_dropout = 0.2f;
  drop.philox_seed = fresh_seed();
  drop.philox_offset = 777;
  check_large(drop, "dropout gqa causal");
  AttnConfig w = base(t, 1, 3000, 3000, 2, 2, d);
  w.window_left = 700;
  w.window_right = 50;
  w.alibi = true;
  check_large(w, "window alibi");
  AttnConfig v = base(t, 3, 0, 0, 4, 2, d);
  v.seqlens_q = {1500, 1, 700};
  v.seqlens_k = {1400, 900, 701};
  v.seqlen_q = 1500;
  v.seqlen_k = 1400;
  v.causal = true;
  check_large(v, "varlen causal");
  ++ran;
  if (ran == 0) GTEST_SKIP() << "no head dim of this test is compiled in this build";
}

}  // namespace
}  // namespace flashattn::testing
