// GPU mha_fwd_kvcache (flash_attn_with_kvcache): host orchestration and the prepare kernel.
//
// Device-resident index values (cache_seqlens, cache_leftpad, cache_batch_idx, the block-table
// entries a sequence uses, the rotary table length) are first checked on the device by a
// check-only launch of the prepare kernel; the host reads the per-sequence verdicts back (one
// small copy and a stream synchronization) and returns kInvalidArgument, naming the argument,
// the sequence and the rule in host validation's words, before anything is written. Where the
// host cannot wait (CUDA graph capture, or FLASHATTN_CHECK_DEVICE_INDICES=0) there is no check
// launch and no synchronization, and the launches below skip each sequence with a bad value.
// Then up to two launches on p.stream:
//   1. kvcache_prepare_kernel, grid (work blocks, b):
//      - block x = 0 of sequence i checks that sequence's device-resident index values
//        (cache_seqlens, cache_leftpad, cache_batch_idx, the block-table entries it will use,
//        the rotary table length) and writes seqused_k[i] = cache_seqlens[i] + seqlen_knew plus
//        sanitized copies of leftpad / batch_idx into scratch. A sequence whose values are out
//        of range gets seqused_k = 0 and leftpad = batch_idx = 0: the forward then reads none of
//        its keys (o = 0, LSE = +inf) instead of reading out of bounds;
//      - every thread takes 8-element (16-byte) pieces of work: appending row t of knew/vnew at
//        cache index cache_seqlens[i] + t (contiguous through cache_batch_idx, or paged through
//        block_table), rotating k at that absolute position, and writing the rotated q into a
//        scratch copy (positions cache_seqlens[i] + r under a causal/local mask, else all at
//        cache_seqlens[i]). Each append re-checks the indices it uses itself, so no write can
//        leave the cache even for a sequence whose other values are bad.
//   2. run_mha_fwd over the cache (FwdParams built from the KVCacheParams: seqlen_k = the
//      capacity, seqused_k / kv_batch_idx / k_leftpad from the scratch, q from the rotated copy,
//      num_splits passed through: the split-KV kernel and its combine run inside run_mha_fwd).
// A call with nothing to write or sanitize on the device (no new tokens, rotary, batch index or
// leftpad) skips the prepare kernel: the forward reads per-sequence cache_seqlens as its
// seqused_k (one out of range makes the sequence empty, common/seqlen.h) and the paged forward
// checks the block-table entries it will use (same rule, kernel_fwd_sm80.cuh), the outcomes the
// prepare kernel's sanitizing gives; a scalar cache_seqlen was validated on the host
// (docs/kvcache.md).
//
// Rotary arithmetic: fp32 from the stored dtype, cos/sin from the dtype tables, one rounding to
// the dtype at the end, through the shared apply_rotary (src/common/rotary.h) on one pair. The
// products and the sum are kept apart (__fmul_rn / __fadd_rn: no FMA contraction), which is what
// the CPU backend computes, so the appended k is bit-identical to the CPU backend's, and the
// rotated q is the CPU backend's fp32 value rounded once to the dtype (the forward kernel reads
// dtype q; the CPU backend keeps it in fp32).
//
// GQA decode packing (flash_attn 2.x's seqlenq_ngroups_swapped): for seqlen_q == 1, h > h_k, no
// ALiBi, no sinks and no left window, q (b, 1, h, d) is viewed as (b, g = h / h_k, h_k, d) through
// its strides: row stride = head stride, head stride = g * head stride. Query head hk * g + r is
// then row r of KV head hk, so one CTA handles all g query heads of a KV head and reads K/V once
// instead of g times. Causal and a right window are no-ops at seqlen_q == 1 and are dropped (they
// would mask the packed rows). o is viewed the same way; the LSE [b, h, 1] already has the packed
// order ((b * h_k + hk) * g + r). Strides stay multiples of the head stride, so the forward's
// 16-byte alignment rules still hold.
#include "cuda/kvcache.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "api/validate.h"
#include "common/host_device.h"
#include "common/kvcache_index.h"
#include "common/numeric.h"
#include "common/paged_kv.h"
#include "common/rotary.h"
#include "cuda/cuda_check.h"
#include "cuda/dispatch.h"
#include "cuda/dispatch_checks.h"
#include "cuda/fwd.h"
#include "sm80/tile_size_sm80.h"

namespace flashattn::cuda {
namespace {

// The prepare kernel moves little data (decode: one k/v row and one q row per sequence and
// head, a few KB), so blocks are small and its cost is its launch; 128 threads x 16 bytes cover
// a d = 128 row of 8 heads in one pass. Prefill chunks get more blocks, capped per sequence.
constexpr int kThreads = 128;
constexpr int kVec = 8;               // elements per 16-byte piece (fp16 / bf16)
constexpr int kMaxWorkBlocks = 4096;  // per sequence; a grid-stride loop covers the rest

// fp32 value whose arithmetic is never contracted into an FMA, so the rotary formula rounds the
// two products and the sum separately, exactly as the CPU backend's fp32 code does.
struct ExactFloat {
  float v;
};
FA_HD ExactFloat operator*(ExactFloat a, ExactFloat b) {
#if defined(__CUDA_ARCH__)
  return {__fmul_rn(a.v, b.v)};
#else
  return {a.v * b.v};
#endif
}
FA_HD ExactFloat operator+(ExactFloat a, ExactFloat b) {
#if defined(__CUDA_ARCH__)
  return {__fadd_rn(a.v, b.v)};
#else
  return {a.v + b.v};
#endif
}
FA_HD ExactFloat operator-(ExactFloat a, ExactFloat b) {
#if defined(__CUDA_ARCH__)
  return {__fsub_rn(a.v, b.v)};
#else
  return {a.v - b.v};
#endif
}

struct PrepareArgs {
  KVCacheParams p;
  bool paged = false;
  bool rotary = false;       // rotate new k (and q when rotate_q)
  bool rotate_q = false;     // write the rotated q copy
  bool q_advances = false;   // q row r at cache_seqlens + r (causal / local), else all at + 0
  int seqlen_knew = 0;       // 0 when no new tokens
  int64_t append_items = 0;  // 8-element pieces per sequence: seqlen_knew * h_k * d / 8
  int64_t q_items = 0;       // seqlen_q * h * d / 8 when rotate_q
  KVIndexLimits limits;      // what the index rules compare against (common/kvcache_index.h)
  bool check_only = false;   // the host-visible check: block x = 0 checks, nothing is written
  // Scratch outputs (device).
  int* seqused = nullptr;                // [b]
  int* leftpad = nullptr;                // [b] or null
  int* batch_idx = nullptr;              // [b] or null
  KVIndexViolation* verdicts = nullptr;  // [b], check_only: every sequence's verdict
  void* q_rot = nullptr;                 // [b, seqlen_q, h, d] contiguous, dtype
};

__device__ __forceinline__ int cache_len(const KVCacheParams& p, int i) {
  return p.cache_seqlens != nullptr ? p.cache_seqlens[i] : p.cache_seqlen;
}

// The scalar index values of sequence i (everything but the block-table entries), by the rules
// host validation applies. Cheap: a few loads that every block of the sequence repeats from
// L1/L2.
__device__ KVIndexViolation check_scalars(const PrepareArgs& a, int i) {
  return check_kv_scalars(a.limits, i, cache_len(a.p, i), a.p.cache_leftpad,
                          a.p.cache_batch_idx);
}

template <DType kT>
__device__ __forceinline__ float to_float(uint16_t x) {
  return kT == DType::kFloat16 ? fp16_to_float(x) : bf16_to_float(x);
}
template <DType kT>
__device__ __forceinline__ uint16_t from_float(float x) {
  return kT == DType::kFloat16 ? float_to_fp16(x) : float_to_bf16(x);
}

// Element x of `row` (d contiguous dtype values) after rotary at table row `pos`.
template <DType kT>
__device__ float rotated_element(const PrepareArgs& a, const uint16_t* row, int x, int pos) {
  const int half = a.p.rotary_dim / 2;
  int k, ia, ib;
  if (a.p.rotary_interleaved) {
    k = x / 2;
    ia = 2 * k;
    ib = ia + 1;
  } else {
    k = x < half ? x : x - half;
    ia = k;
    ib = k + half;
  }
  const uint16_t* cos_t = static_cast<const uint16_t*>(a.p.rotary_cos);
  const uint16_t* sin_t = static_cast<const uint16_t*>(a.p.rotary_sin);
  const int64_t tab = int64_t(pos) * half + k;
  // The pair (ia, ib) as a rotary of dimension 2: the shared formula, on this one pair.
  ExactFloat pair[2] = {{to_float<kT>(row[ia])}, {to_float<kT>(row[ib])}};
  apply_rotary(pair, 2, /*interleaved=*/true, [&](int, ExactFloat* c, ExactFloat* s) {
    c->v = to_float<kT>(cos_t[tab]);
    s->v = to_float<kT>(sin_t[tab]);
  });
  return x == ia ? pair[0].v : pair[1].v;
}

// Copies the 8 elements at src + x0 to dst + x0, rotated at `pos` where x0 < rotary_dim.
template <DType kT>
__device__ __forceinline__ void copy_piece(const PrepareArgs& a, const uint16_t* src_row,
                                           uint16_t* dst_row, int x0, bool rotate, int pos) {
  if (!rotate || x0 >= a.p.rotary_dim) {
    *reinterpret_cast<uint4*>(dst_row + x0) = *reinterpret_cast<const uint4*>(src_row + x0);
    return;
  }
  uint32_t words[kVec / 2];
#pragma unroll
  for (int e = 0; e < kVec; e += 2) {
    uint32_t pair = 0;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int x = x0 + e + half;
      const uint16_t v = x < a.p.rotary_dim
                             ? from_float<kT>(rotated_element<kT>(a, src_row, x, pos))
                             : src_row[x];
      pair |= uint32_t(v) << (16 * half);
    }
    words[e / 2] = pair;
  }
  *reinterpret_cast<uint4*>(dst_row + x0) = make_uint4(words[0], words[1], words[2], words[3]);
}

template <DType kT>
__global__ void __launch_bounds__(kThreads)
    kvcache_prepare_kernel(const __grid_constant__ PrepareArgs a) {
  const KVCacheParams& p = a.p;
  const int i = blockIdx.y;

  if (blockIdx.x == 0) {
    // Sequence i's verdict: the scalar values, then every block-table entry its keys (old and
    // appended) live in. The forward reads only pages below seqused_k, so checking those is
    // enough to keep its reads in bounds. The check-only launch reports the lowest bad column,
    // as host validation does.
    __shared__ int first_bad_column;
    KVIndexViolation e = check_scalars(a, i);
    bool bad = e.rule != kKVIndexOk;
    if (!bad && a.paged) {
      if (threadIdx.x == 0) first_bad_column = INT_MAX;
      __syncthreads();
      const int64_t used = kv_pages_used(int64_t(e.cache_len) + a.seqlen_knew, p.page_block_size);
      const int* row = p.block_table + int64_t(i) * p.block_table_batch_stride;
      bool mine = false;
      for (int64_t j = threadIdx.x; j < used; j += blockDim.x) {
        const int page = row[j];
        if (page < 0 || page >= p.num_blocks) {
          if (!mine) atomicMin(&first_bad_column, int(j));
          mine = true;
        }
      }
      bad = __syncthreads_or(mine) != 0;
      if (bad) {
        e.rule = kKVBlockTableRange;
        e.column = first_bad_column;
        e.value = row[e.column];
      }
    }
    if (threadIdx.x == 0 && a.check_only) a.verdicts[i] = e;
    if (threadIdx.x == 0 && !a.check_only) {
      a.seqused[i] = bad ? 0 : cache_len(p, i) + a.seqlen_knew;
      if (a.leftpad != nullptr) a.leftpad[i] = bad ? 0 : p.cache_leftpad[i];
      if (a.batch_idx != nullptr) a.batch_idx[i] = bad ? 0 : p.cache_batch_idx[i];
    }
  }
  if (a.check_only) return;

  const int pieces = p.d / kVec;
  const int64_t total = a.append_items + a.q_items;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  if (first >= total) return;
  const bool scalars_ok = check_scalars(a, i).rule == kKVIndexOk;
  const int cs = scalars_ok ? cache_len(p, i) : 0;

  for (int64_t w = first; w < total; w += step) {
    if (w < a.append_items) {
      if (!scalars_ok) continue;
      const int t = int(w / (int64_t(p.h_k) * pieces));
      const int rem = int(w % (int64_t(p.h_k) * pieces));
      const int hk = rem / pieces;
      const int x0 = (rem % pieces) * kVec;
      const int pos = cs + t;
      int64_t k_off, v_off;
      if (a.paged) {
        const PagedKV pages{p.block_table, p.block_table_batch_stride, p.page_block_size};
        const int page = pages.page_of(i, pos);
        if (page < 0 || page >= p.num_blocks) continue;  // never write outside the pool
        const int64_t r = pos % p.page_block_size;
        k_off = int64_t(page) * p.k_batch_stride + r * p.k_row_stride +
                int64_t(hk) * p.k_head_stride;
        v_off = int64_t(page) * p.v_batch_stride + r * p.v_row_stride +
                int64_t(hk) * p.v_head_stride;
      } else {
        const int cb = p.cache_batch_idx != nullptr ? p.cache_batch_idx[i] : i;
        k_off = int64_t(cb) * p.k_batch_stride + int64_t(pos) * p.k_row_stride +
                int64_t(hk) * p.k_head_stride;
        v_off = int64_t(cb) * p.v_batch_stride + int64_t(pos) * p.v_row_stride +
                int64_t(hk) * p.v_head_stride;
      }
      const uint16_t* kn = static_cast<const uint16_t*>(p.knew_ptr) +
                           int64_t(i) * p.knew_batch_stride + int64_t(t) * p.knew_row_stride +
                           int64_t(hk) * p.knew_head_stride;
      const uint16_t* vn = static_cast<const uint16_t*>(p.vnew_ptr) +
                           int64_t(i) * p.vnew_batch_stride + int64_t(t) * p.vnew_row_stride +
                           int64_t(hk) * p.vnew_head_stride;
      copy_piece<kT>(a, kn, static_cast<uint16_t*>(p.k_ptr) + k_off, x0, a.rotary, pos);
      copy_piece<kT>(a, vn, static_cast<uint16_t*>(p.v_ptr) + v_off, x0, false, pos);
    } else {
      const int64_t wq = w - a.append_items;
      const int r = int(wq / (int64_t(p.h) * pieces));
      const int rem = int(wq % (int64_t(p.h) * pieces));
      const int hq = rem / pieces;
      const int x0 = (rem % pieces) * kVec;
      uint16_t* dst = static_cast<uint16_t*>(a.q_rot) +
                      ((int64_t(i) * p.seqlen_q + r) * p.h + hq) * p.d;
      if (!scalars_ok) {
        // The sequence attends to nothing (seqused_k = 0); keep the copy defined anyway.
        *reinterpret_cast<uint4*>(dst + x0) = make_uint4(0, 0, 0, 0);
        continue;
      }
      const uint16_t* src = static_cast<const uint16_t*>(p.q_ptr) + int64_t(i) * p.q_batch_stride +
                            int64_t(r) * p.q_row_stride + int64_t(hq) * p.q_head_stride;
      copy_piece<kT>(a, src, dst, x0, true, cs + (a.q_advances ? r : 0));
    }
  }
}

// Frees the stream-ordered scratch on every return path (after the kernels that use it, in
// stream order, so no synchronization is needed).
class StreamScratch {
 public:
  explicit StreamScratch(cudaStream_t stream) : stream_(stream) {}
  ~StreamScratch() {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  Status allocate(size_t bytes) {
    FA_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream_));
    return Status::ok_status();
  }
  char* get() const { return static_cast<char*>(ptr_); }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
};

size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// Whether this call may wait for the device-side verdicts before it writes anything. Not when
// the caller opted out (FLASHATTN_CHECK_DEVICE_INDICES=0), and not while `stream` is being
// captured into a CUDA graph: a synchronization there is illegal, and the values a replay reads
// are not the ones present at capture time anyway. A failed capture query means a capture this
// thread must not disturb (the legacy stream during another thread's capture).
bool host_check_possible(cudaStream_t stream) {
  const char* env = std::getenv(kCheckIndicesEnv);
  if (env != nullptr && std::string(env) == "0") return false;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    (void)cudaGetLastError();  // the query's error is not the caller's: do not leave it behind
    return false;
  }
  return status == cudaStreamCaptureStatusNone;
}

// What the forward dispatch would refuse, asked before anything is written: the compute
// capability, the compiled (dtype, head dim), and the feature checks run_mha_fwd performs before
// it looks at the sizes (a dry run with seqlen_q = 0 returns right after them).
Status forward_supported(const FwdParams& fp, const FwdCacheArgs& cache) {
  if (Status s = check_compute_capability("KV-cache"); !s.ok()) return s;
  const int hd = sm80::round_head_dim_sm80(fp.d);
  const std::vector<int> hdims = compiled_head_dims();
  const std::vector<std::string> dtypes = compiled_dtypes();
  if (std::find(hdims.begin(), hdims.end(), hd) == hdims.end() ||
      std::find(dtypes.begin(), dtypes.end(), dtype_name(fp.dtype)) == dtypes.end())
    return Status::not_supported(std::string("head dim ") + std::to_string(hd) + " " +
                                 dtype_name(fp.dtype) +
                                 " GPU forward kernels not compiled in this build " +
                                 compiled_config_string());
  FwdParams dry = fp;
  dry.seqlen_q = 0;
  return run_mha_fwd(dry, cache);
}

template <DType kT>
Status launch_prepare(const PrepareArgs& a, int b, cudaStream_t stream) {
  int64_t blocks = 1;
  if (!a.check_only)
    blocks = std::max<int64_t>(1, (a.append_items + a.q_items + kThreads - 1) / kThreads);
  const dim3 grid(unsigned(std::min<int64_t>(blocks, kMaxWorkBlocks)), unsigned(b));
  kvcache_prepare_kernel<kT><<<grid, kThreads, 0, stream>>>(a);
  FA_CUDA_CHECK_LAUNCH("kvcache_prepare_kernel");
  return Status::ok_status();
}

Status launch_prepare(const PrepareArgs& a, int b, cudaStream_t stream) {
  return a.p.dtype == DType::kFloat16 ? launch_prepare<DType::kFloat16>(a, b, stream)
                                      : launch_prepare<DType::kBFloat16>(a, b, stream);
}

}  // namespace

Status run_mha_fwd_kvcache(const KVCacheParams& p, const KVCacheRunOptions& options) {
  // Refused before the append writes the cache (forward_supported below would refuse it too,
  // after the scratch setup): the forward kernels do not take it yet.
  if (p.dv != p.d)
    return Status::not_supported("dv = " + std::to_string(p.dv) + " != d = " +
                                 std::to_string(p.d) +
                                 " (a V head dim other than the Q/K head dim) in the GPU "
                                 "KV-cache path is not implemented yet");
  if (p.b == 0) return Status::ok_status();
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return Status::not_supported(std::string("dtype ") + dtype_name(p.dtype) +
                                 " has no GPU KV-cache path (fp16 and bf16 only)");
  if (p.b > 65535)
    return Status::not_supported("mha_fwd_kvcache: more than 65535 sequences (grid y limit)");
  const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);

  const bool paged = p.block_table != nullptr;
  const int seqlen_knew = p.knew_ptr != nullptr ? p.seqlen_knew : 0;
  const bool rotary = p.rotary_cos != nullptr && p.rotary_dim > 0;
  const bool rotate_q = rotary && p.seqlen_q > 0;
  const bool q_advances = p.is_causal || p.window_size_left >= 0 || p.window_size_right >= 0;
  // The prepare kernel runs only for what must happen on the device before the forward:
  // appends, rotary, and the sanitized copies of cache_batch_idx / cache_leftpad (the forward
  // trusts those two). Per-sequence cache_seqlens alone are read by the forward as its seqused_k
  // (SeqlenInfo turns a value outside [0, capacity] into an empty sequence), and a paged cache's
  // block-table entries are checked by the paged forward kernels themselves (pages_in_range:
  // a sequence using a bad page is empty), the same outcomes the prepare kernel's sanitizing
  // gave. On the H100 the prepare launch cost ~4 us of a 4k-key decode step (its 1.8 us plus
  // the dependent launch).
  const bool need_prepare = seqlen_knew > 0 || rotate_q || p.cache_batch_idx != nullptr ||
                            p.cache_leftpad != nullptr;
  // Index values in device memory are checked before anything is written, with the verdicts
  // read back (one small launch, a b * 20-byte copy and a stream synchronization: see
  // docs/kvcache.md for the cost), unless the call cannot wait for them (host_check_possible).
  // Then each sequence with a bad value is skipped on the device, as the paragraph above says.
  const bool device_values = need_prepare || p.cache_seqlens != nullptr || paged;
  const bool check_mode = device_values && host_check_possible(stream);

  // Scratch: seqused_k, leftpad and batch-index copies, the verdicts, the rotated q.
  const size_t ints = size_t(p.b) * (1 + (p.cache_leftpad ? 1 : 0) + (p.cache_batch_idx ? 1 : 0));
  const size_t verdicts_off = align_up(ints * sizeof(int), alignof(KVIndexViolation));
  const size_t verdicts_bytes = check_mode ? size_t(p.b) * sizeof(KVIndexViolation) : 0;
  const size_t q_off = align_up(verdicts_off + verdicts_bytes, 256);
  const size_t q_bytes =
      rotate_q ? size_t(p.b) * p.seqlen_q * p.h * p.d * size_t(dtype_size(p.dtype)) : 0;
  StreamScratch scratch(stream);
  PrepareArgs a;
  a.p = p;
  a.paged = paged;
  a.rotary = rotary;
  a.rotate_q = rotate_q;
  a.q_advances = q_advances;
  a.seqlen_knew = seqlen_knew;
  a.limits = detail::kvcache_index_limits(p);
  a.append_items = int64_t(seqlen_knew) * p.h_k * (p.d / kVec);
  a.q_items = rotate_q ? int64_t(p.seqlen_q) * p.h * (p.d / kVec) : 0;

  FwdParams fp = p;  // the forward's fields, sliced off the KV-cache ones
  FwdCacheArgs cache;
  // Every KV-cache call runs the split-capable kernels, as flash_attn's does: their tile is the
  // decode tile (tile_size_sm80.h), and a contiguous cache then gives the same bits as a paged
  // one whatever the split count.
  cache.split_family = true;
  if (need_prepare || check_mode) {
    if (Status s = scratch.allocate(q_off + q_bytes); !s.ok()) return s;
    int* next = reinterpret_cast<int*>(scratch.get());
    a.seqused = next;
    next += p.b;
    if (p.cache_leftpad != nullptr) {
      a.leftpad = next;
      next += p.b;
    }
    if (p.cache_batch_idx != nullptr) {
      a.batch_idx = next;
      next += p.b;
    }
    if (check_mode)
      a.verdicts = reinterpret_cast<KVIndexViolation*>(scratch.get() + verdicts_off);
    a.q_rot = rotate_q ? scratch.get() + q_off : nullptr;
  }
  if (need_prepare) {
    fp.seqused_k = a.seqused;
    cache.k_leftpad = a.leftpad;
    cache.kv_batch_idx = a.batch_idx;
  } else if (p.cache_seqlens != nullptr) {
    fp.seqused_k = p.cache_seqlens;
  } else {
    fp.seqlen_k = p.cache_seqlen;  // a host value, validated <= the capacity
  }
  if (rotate_q) {
    fp.q_ptr = a.q_rot;
    fp.q_row_stride = int64_t(p.h) * p.d;
    fp.q_batch_stride = int64_t(p.seqlen_q) * fp.q_row_stride;
    fp.q_head_stride = p.d;
  }
  // Not with ALiBi or sinks: both are per query head, and the kernel reads them per (packed)
  // head, not per row.
  if (options.pack_gqa && p.seqlen_q == 1 && p.h > p.h_k && p.alibi_slopes == nullptr &&
      p.sinks == nullptr && p.window_size_left < 0) {
    const int g = p.h / p.h_k;
    fp.seqlen_q = g;
    fp.h = p.h_k;
    fp.q_row_stride = fp.q_head_stride;
    fp.q_head_stride *= g;
    fp.o_row_stride = fp.o_head_stride;
    fp.o_head_stride *= g;
    fp.is_causal = false;
    fp.window_size_right = -1;
  }

  // Nothing is written before the forward has agreed to run this request.
  if (Status s = forward_supported(fp, cache); !s.ok()) return s;

  if (check_mode) {
    // Every sequence writes its verdict (no memset needed); the lowest bad sequence is the one
    // host validation would have named first.
    PrepareArgs check = a;
    check.check_only = true;
    if (Status s = launch_prepare(check, p.b, stream); !s.ok()) return s;
    std::vector<KVIndexViolation> verdicts(size_t(p.b));
    FA_CUDA_CHECK(cudaMemcpyAsync(verdicts.data(), check.verdicts, verdicts_bytes,
                                  cudaMemcpyDeviceToHost, stream));
    FA_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (const KVIndexViolation& v : verdicts)
      if (v.rule != kKVIndexOk) return detail::kvcache_index_error(p, v);
  }
  if (need_prepare) {
    if (Status s = launch_prepare(a, p.b, stream); !s.ok()) return s;
  }
  return run_mha_fwd(fp, cache);
}

}  // namespace flashattn::cuda
