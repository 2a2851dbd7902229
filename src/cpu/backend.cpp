// CPU backend entry points: turn each call into sequence views for the shared FlashAttention-2
// forward core (backend_fwd.cpp) or the backward (backend_bwd.cpp). The KV-cache call first
// appends the new tokens (with rotary) into the cache and rotates a copy of q, then attends over
// keys [cache_leftpad, cache_seqlens + seqlen_knew) through the same core. Params arrive
// validated and resolved (detail::resolve).
//
// fp8 (e4m3) inputs run the reference's emulation of the FP8 kernel (cpu/reference.h: double
// accumulation, one (sequence, head) at a time, no threads): bit for bit the oracle the GPU
// kernel is tested against, at the reference's speed. The tiled fp32 core has no fp8 loads and
// no quantized P.V, and an fp8 path of its own would be a second emulation to keep identical.
#include "cpu/backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <thread>
#include <vector>

#include "common/lse_merge.h"
#include "common/numeric.h"
#include "common/rotary.h"
#include "cpu/backend_common.h"
#include "cpu/kernels.h"
#include "cpu/reference.h"
#include "cpu/thread_pool.h"

namespace flashattn::cpu {

namespace {

template <typename F>
Status guarded(const char* what, F f) {
  try {
    f();
    return Status::ok_status();
  } catch (const std::bad_alloc&) {
    return Status::internal(std::string(what) + ": out of host memory for the CPU backend's buffers");
  }
}

// Rotary embedding of one head vector x (fp32, in place) at table row `pos`.
void rotate(float* x, const KVCacheParams& p, int pos) {
  const int half = p.rotary_dim / 2;
  apply_rotary(x, p.rotary_dim, p.rotary_interleaved, [&](int k, float* c, float* s) {
    *c = load_as_float(p.rotary_cos, p.dtype, int64_t(pos) * half + k);
    *s = load_as_float(p.rotary_sin, p.dtype, int64_t(pos) * half + k);
  });
}

}  // namespace

struct Workspace::Store {
  struct Buffer {
    std::unique_ptr<char[]> mem;
    size_t bytes = 0;
    char* aligned = nullptr;
  };
  std::vector<Buffer> slots;
  bool in_use = false;
};

Workspace::Workspace() {
  static thread_local Store per_thread;
  Store* mine = &per_thread;
  owned_ = mine->in_use;
  store_ = owned_ ? new Store() : mine;
  store_->in_use = true;
}

Workspace::~Workspace() {
  if (owned_)
    delete store_;
  else
    store_->in_use = false;
}

void* Workspace::raw(int slot, size_t bytes) {
  if (store_->slots.size() <= size_t(slot)) store_->slots.resize(size_t(slot) + 1);
  Store::Buffer& b = store_->slots[size_t(slot)];
  if (b.bytes < bytes || b.mem == nullptr) {
    b.mem.reset();  // release first: old and new need not both be held
    b.mem.reset(new char[bytes + 64]);
    b.bytes = bytes;
    const uintptr_t p = reinterpret_cast<uintptr_t>(b.mem.get());
    b.aligned = reinterpret_cast<char*>((p + 63) & ~uintptr_t(63));
  }
  return b.aligned;
}

int num_threads() {
  if (const char* env = std::getenv("FLASHATTN_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return std::min(n, 1024);
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : int(hw);
}

const char* isa() { return active_kernels().name; }

Status mha_fwd(const FwdParams& p) {
  if (p.dtype == DType::kFloat8E4M3) {
    Status s;
    const Status g = guarded("mha_fwd", [&] { s = ref::mha_fwd(p); });
    return g.ok() ? s : g;
  }
  return guarded("mha_fwd", [&] { run_forward(p, make_seq_views(p)); });
}

Status mha_bwd(const BwdParams& p) {
  return guarded("mha_bwd", [&] { run_backward(p); });
}

Status mha_fwd_kvcache(const KVCacheParams& p) {
  if (p.dtype == DType::kFloat8E4M3) {
    Status s;
    const Status g = guarded("mha_fwd_kvcache", [&] { s = ref::mha_fwd_kvcache(p); });
    return g.ok() ? s : g;
  }
  return guarded("mha_fwd_kvcache", [&] {
    const int es = dtype_size(p.dtype);
    const bool paged = p.block_table != nullptr;
    const bool has_new = p.knew_ptr != nullptr && p.seqlen_knew > 0;
    const bool rotary = p.rotary_cos != nullptr && p.rotary_dim > 0;
    const bool local = p.is_causal || p.window_size_left >= 0 || p.window_size_right >= 0;
    const Kernels& kern = active_kernels();
    auto cache_len = [&](int b) { return p.cache_seqlens ? p.cache_seqlens[b] : p.cache_seqlen; };
    auto leftpad = [&](int b) { return p.cache_leftpad ? p.cache_leftpad[b] : 0; };

    std::vector<SeqView> views(size_t(p.b));
    for (int b = 0; b < p.b; ++b) {
      SeqView& v = views[size_t(b)];
      v.bidb = b;
      v.seqlen_q = p.seqlen_q;
      v.seqlen_k = cache_len(b) + p.seqlen_knew - leftpad(b);
      v.key_rows = v.seqlen_k;
      v.row0 = int64_t(b) * p.seqlen_q;
      v.q = static_cast<const char*>(p.q_ptr) + int64_t(b) * p.q_batch_stride * es;
      v.q_dtype = p.dtype;
      v.q_row_stride = p.q_row_stride;
      v.q_head_stride = p.q_head_stride;
      v.o = static_cast<char*>(p.o_ptr) + int64_t(b) * p.o_batch_stride * es;
      v.o_row_stride = p.o_row_stride;
      v.o_head_stride = p.o_head_stride;
      if (p.softmax_lse_ptr != nullptr) {
        v.lse = p.softmax_lse_ptr + int64_t(b) * p.h * p.seqlen_q;
        v.lse_head_stride = p.seqlen_q;
      }
      KeySource& ks = v.keys;
      ks.elem_size = es;
      ks.k_row_stride = p.k_row_stride;
      ks.k_head_stride = p.k_head_stride;
      ks.v_row_stride = p.v_row_stride;
      ks.v_head_stride = p.v_head_stride;
      ks.key0 = leftpad(b);
      if (paged) {
        ks.paged = true;
        ks.k = p.k_ptr;
        ks.v = p.v_ptr;
        ks.k_page_stride = p.k_batch_stride;
        ks.v_page_stride = p.v_batch_stride;
        ks.pages.block_table = p.block_table;
        ks.pages.block_table_batch_stride = p.block_table_batch_stride;
        ks.pages.page_block_size = p.page_block_size;
        ks.bidb = b;
      } else {
        const int cb = p.cache_batch_idx ? p.cache_batch_idx[b] : b;
        ks.k = static_cast<const char*>(p.k_ptr) + int64_t(cb) * p.k_batch_stride * es;
        ks.v = static_cast<const char*>(p.v_ptr) + int64_t(cb) * p.v_batch_stride * es;
      }
    }
    const int threads = num_threads();

    // 1. Append knew/vnew at absolute cache positions cache_seqlens[b] + t; new keys are
    //    rotated at those positions. The cache rows are only written here, before attention.
    if (has_new) {
      std::vector<std::vector<float>> rows(size_t(threads), std::vector<float>(size_t(p.d)));
      ThreadPool::instance().parallel_for(
          int64_t(p.b) * p.seqlen_knew, threads, [&](int64_t idx, int worker) {
            const int b = int(idx / p.seqlen_knew), t = int(idx % p.seqlen_knew);
            const KeySource& ks = views[size_t(b)].keys;
            const int pos = cache_len(b) + t;
            const int j = pos - ks.key0;  // key index within the sequence view
            float* row = rows[size_t(worker)].data();
            for (int hk = 0; hk < p.h_k; ++hk) {
              const char* kn = static_cast<const char*>(p.knew_ptr) +
                               (int64_t(b) * p.knew_batch_stride + int64_t(t) * p.knew_row_stride +
                                int64_t(hk) * p.knew_head_stride) * es;
              const char* vn = static_cast<const char*>(p.vnew_ptr) +
                               (int64_t(b) * p.vnew_batch_stride + int64_t(t) * p.vnew_row_stride +
                                int64_t(hk) * p.vnew_head_stride) * es;
              // The views are read-only for attention; the cache itself is the caller's
              // writable k_ptr/v_ptr, so casting the constness away here is sound.
              void* kd = const_cast<void*>(ks.k_row(j, hk));
              void* vd = const_cast<void*>(ks.v_row(j, hk));
              if (rotary) {
                kern.load_row(kn, p.dtype, p.d, row);
                rotate(row, p, pos);
                kern.store_row(row, p.dtype, p.d, kd);
              } else {
                std::memcpy(kd, kn, size_t(p.d) * es);
              }
              std::memcpy(vd, vn, size_t(p.dv) * es);
            }
          });
    }

    // 2. Rotary on an fp32 copy of q (never stored, so it keeps fp32 precision instead of being
    //    rounded back to the dtype): positions cache_seqlens + i under a causal/local mask,
    //    else cache_seqlens for every query.
    std::vector<float> q_rot;
    if (rotary && p.seqlen_q > 0) {
      const int64_t row_elems = int64_t(p.h) * p.d;
      q_rot.resize(size_t(int64_t(p.b) * p.seqlen_q * row_elems));
      ThreadPool::instance().parallel_for(
          int64_t(p.b) * p.seqlen_q, threads, [&](int64_t idx, int) {
            const int b = int(idx / p.seqlen_q), i = int(idx % p.seqlen_q);
            const int pos = cache_len(b) + (local ? i : 0);
            for (int hq = 0; hq < p.h; ++hq) {
              const char* src = static_cast<const char*>(p.q_ptr) +
                                (int64_t(b) * p.q_batch_stride + int64_t(i) * p.q_row_stride +
                                 int64_t(hq) * p.q_head_stride) * es;
              float* dst = q_rot.data() + idx * row_elems + int64_t(hq) * p.d;
              kern.load_row(src, p.dtype, p.d, dst);
              rotate(dst, p, pos);
            }
          });
      for (int b = 0; b < p.b; ++b) {
        SeqView& v = views[size_t(b)];
        v.q = q_rot.data() + int64_t(b) * p.seqlen_q * row_elems;
        v.q_dtype = DType::kFloat32;
        v.q_row_stride = row_elems;
        v.q_head_stride = p.d;
      }
    }

    // 3. Attention over the cache through the shared forward core (p_ptr is dense-only).
    FwdParams attn = p;
    attn.p_ptr = nullptr;
    run_forward(attn, views);
  });
}

Status mha_combine(const CombineParams& p) {
  return guarded("mha_combine", [&] {
    const int64_t rows = int64_t(p.b) * p.seqlen_q;
    const int threads = num_threads();
    const Kernels& kern = active_kernels();
    std::vector<std::vector<float>> accs(size_t(threads), std::vector<float>(size_t(p.d)));
    ThreadPool::instance().parallel_for(rows, threads, [&](int64_t idx, int worker) {
      const int b = int(idx / p.seqlen_q), i = int(idx % p.seqlen_q);
      float* acc = accs[size_t(worker)].data();
      for (int hh = 0; hh < p.h; ++hh) {
        auto lse_at = [&](int s) {
          return p.lse_partial[((int64_t(s) * p.b + b) * p.h + hh) * p.seqlen_q + i];
        };
        float lse = neg_inf<float>();
        for (int s = 0; s < p.num_splits; ++s) lse = logaddexp(lse, lse_at(s));
        std::fill(acc, acc + p.d, 0.f);
        for (int s = 0; s < p.num_splits; ++s) {
          const float w = merge_weight(lse_at(s), lse);
          if (w == 0.f) continue;
          const float* os =
              p.out_partial + (((int64_t(s) * p.b + b) * p.seqlen_q + i) * p.h + hh) * p.d;
          for (int x = 0; x < p.d; ++x) acc[x] += w * os[x];
        }
        char* out = static_cast<char*>(p.out) +
                    (int64_t(b) * p.out_batch_stride + int64_t(i) * p.out_row_stride +
                     int64_t(hh) * p.out_head_stride) * dtype_size(p.dtype);
        kern.store_row(acc, p.dtype, p.d, out);
        if (p.lse != nullptr) p.lse[(int64_t(b) * p.h + hh) * p.seqlen_q + i] = finalize_lse(lse);
      }
    });
  });
}

}  // namespace flashattn::cpu
