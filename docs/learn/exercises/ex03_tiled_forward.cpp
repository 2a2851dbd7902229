// Exercise 3 (docs/learn/03-read-this-first-cpu.md): FlashAttention-2's Algorithm 1 in a page of
// C++, checked against the CPU reference (the oracle of every test).
//
// tiled_forward() below is the algorithm the CPU backend and the GPU kernel run: query rows in
// blocks of Br, keys in blocks of Bc, a running max m, sum l and unnormalized O per row, the
// visibility rule and score modifiers of src/common (the very headers the kernels include).
// flashattn::ref::mha_fwd (src/cpu/reference.cpp) materializes each row instead. They must agree
// to fp32 rounding, for every mask and any block sizes. Try: change Br / Bc, break the rescale
// (drop `alpha`), or drop the -inf baseline, and watch the check fail.
//
// sources: src/cpu/reference.cpp
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "common/mask.h"
#include "common/score_mod.h"
#include "cpu/reference.h"

using flashattn::ScoreMod;
using flashattn::VisibilityMask;

// One head: q [s_q][d], k, v [s_k][d] row-major; o [s_q][d], lse [s_q].
void tiled_forward(const std::vector<float>& q, const std::vector<float>& k,
                   const std::vector<float>& v, int s_q, int s_k, int d, int Br, int Bc,
                   const VisibilityMask& mask, const ScoreMod<float>& mod, std::vector<float>* o,
                   std::vector<float>* lse) {
  const float kInf = std::numeric_limits<float>::infinity();
  o->assign(size_t(s_q) * d, 0.f);
  lse->assign(s_q, kInf);
  for (int m0 = 0; m0 < s_q; m0 += Br) {
    const int m1 = std::min(m0 + Br, s_q);
    std::vector<float> m(Br, -kInf), l(Br, 0.f), acc(size_t(Br) * d, 0.f);
    int n_begin = 0, n_end = 0;  // the block face: keys any row of [m0, m1) can see
    mask.key_range(m0, m1, &n_begin, &n_end);
    for (int n0 = (n_begin / Bc) * Bc; n0 < n_end; n0 += Bc) {
      const int n1 = std::min(n0 + Bc, s_k);
      for (int i = m0; i < m1; ++i) {
        const int r = i - m0;
        // S_ij for this block, -inf where the element face says invisible.
        std::vector<float> s(Bc, -kInf);
        float m_blk = -kInf;
        for (int j = n0; j < n1; ++j) {
          if (!mask.visible(i, j)) continue;
          float dot = 0.f;
          for (int x = 0; x < d; ++x) dot += q[size_t(i) * d + x] * k[size_t(j) * d + x];
          s[j - n0] = mod.apply(dot, i, j);
          m_blk = std::max(m_blk, s[j - n0]);
        }
        const float m_new = std::max(m[r], m_blk);
        const float base = m_new == -kInf ? 0.f : m_new;  // Check_inf: no (-inf) - (-inf)
        const float alpha = std::exp(m[r] - base);        // exp(-inf) = 0 on the first block
        l[r] *= alpha;
        for (int x = 0; x < d; ++x) acc[size_t(r) * d + x] *= alpha;
        for (int j = n0; j < n1; ++j) {
          const float p = std::exp(s[j - n0] - base);  // 0 for masked keys
          l[r] += p;
          for (int x = 0; x < d; ++x) acc[size_t(r) * d + x] += p * v[size_t(j) * d + x];
        }
        m[r] = m_new;
      }
    }
    for (int i = m0; i < m1; ++i) {
      const int r = i - m0;
      if (l[r] == 0.f) continue;  // no visible key: o = 0, lse = +inf
      for (int x = 0; x < d; ++x) (*o)[size_t(i) * d + x] = acc[size_t(r) * d + x] / l[r];
      (*lse)[i] = m[r] + std::log(l[r]);
    }
  }
}

struct Case {
  const char* name;
  int s_q, s_k;
  bool causal;
  int left, right;
  float softcap, slope;
};

int main() {
  const int d = 16, Br = 4, Bc = 8;
  const Case cases[] = {
      {"dense", 13, 21, false, -1, -1, 0.f, 0.f},
      {"causal s_q < s_k", 13, 21, true, -1, -1, 0.f, 0.f},
      {"causal s_q > s_k (empty rows)", 21, 9, true, -1, -1, 0.f, 0.f},
      {"window (5, 2)", 17, 17, false, 5, 2, 0.f, 0.f},
      {"causal + softcap + ALiBi", 11, 19, true, -1, -1, 5.f, 0.25f},
  };
  std::mt19937 gen(3);
  std::normal_distribution<float> normal;
  int failures = 0;
  for (const Case& c : cases) {
    std::vector<float> q(size_t(c.s_q) * d), k(size_t(c.s_k) * d), v(size_t(c.s_k) * d);
    for (auto& e : q) e = normal(gen);
    for (auto& e : k) e = normal(gen);
    for (auto& e : v) e = normal(gen);

    // The reference through the public params: one sequence, one head, fp32, contiguous.
    flashattn::FwdParams p;
    p.dtype = flashattn::DType::kFloat32;
    p.b = 1, p.h = 1, p.h_k = 1, p.d = d, p.seqlen_q = c.s_q, p.seqlen_k = c.s_k;
    std::vector<float> o_ref(q.size()), lse_ref(c.s_q);
    p.q_ptr = q.data(), p.k_ptr = k.data(), p.v_ptr = v.data(), p.o_ptr = o_ref.data();
    p.q_row_stride = p.k_row_stride = p.v_row_stride = p.o_row_stride = d;
    p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = d;
    p.q_batch_stride = p.o_batch_stride = int64_t(c.s_q) * d;
    p.k_batch_stride = p.v_batch_stride = int64_t(c.s_k) * d;
    p.softmax_lse_ptr = lse_ref.data();
    p.is_causal = c.causal;
    p.window_size_left = c.left, p.window_size_right = c.right;
    p.softcap = c.softcap;
    const float slopes[1] = {c.slope};
    if (c.slope != 0.f) p.alibi_slopes = slopes;
    const flashattn::Status st = flashattn::ref::mha_fwd(p);
    if (!st.ok()) {
      std::printf("reference failed: %s\n", st.message().c_str());
      return 1;
    }

    const float scale = 1.f / std::sqrt(float(d));  // what detail::resolve fills in for 0
    const VisibilityMask mask =
        VisibilityMask::make(c.s_q, c.s_k, c.causal, c.left, c.right);
    ScoreMod<float> mod;
    mod.scale = scale;
    mod.softcap = c.softcap;
    mod.alibi_slope = c.slope;
    mod.offset = c.s_k - c.s_q;
    std::vector<float> o, lse;
    tiled_forward(q, k, v, c.s_q, c.s_k, d, Br, Bc, mask, mod, &o, &lse);

    double max_err = 0;
    for (size_t i = 0; i < o.size(); ++i) max_err = std::max(max_err, double(std::fabs(o[i] - o_ref[i])));
    bool lse_ok = true;
    for (int i = 0; i < c.s_q; ++i) {
      if (std::isinf(lse_ref[i]) || std::isinf(lse[i])) {
        lse_ok &= lse_ref[i] == lse[i];  // empty rows: +inf in both
      } else {
        lse_ok &= std::fabs(lse[i] - lse_ref[i]) <= 1e-5f * std::max(1.f, std::fabs(lse_ref[i]));
      }
    }
    const bool ok = max_err <= 2e-6 && lse_ok;
    std::printf("%-32s max |o - ref| = %.2e, lse %s: %s\n", c.name, max_err,
                lse_ok ? "matches" : "DIFFERS", ok ? "ok" : "FAILED");
    failures += ok ? 0 : 1;
  }
  return failures == 0 ? 0 : 1;
}
