// Argument validation of mha_fwd_kvcache: one test per rule. Each starts from a valid random
// KV-cache problem (checked to pass validation), breaks one thing, calls the PUBLIC entry point
// and asserts InvalidArgument, a message starting with the offending argument's name, and that
// nothing was touched: o and LSE still hold problem.h's NaN poison and the cache, q and the new
// keys are byte-for-byte unchanged (a rejected call must not append). "Valid edge case passes"
// tests and GPU-only rules call detail::validate_kvcache directly.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "api/validate.h"
#include "flashattn/flashattn.h"
#include "testing/problem.h"

namespace {

using flashattn::Backend;
using flashattn::DType;
using flashattn::KVCacheParams;
using flashattn::Status;
using flashattn::StatusCode;
using flashattn::testing::Buffer;
using flashattn::testing::KVCacheConfig;
using flashattn::testing::KVCacheProblem;
namespace detail = flashattn::detail;

uint64_t fresh_seed() {
  static std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}

// The status is `code` and its message starts with the argument name followed by ':' or '['.
::testing::AssertionResult Rejected(const Status& s, const std::string& arg,
                                    StatusCode code = StatusCode::kInvalidArgument) {
  if (s.code() != code)
    return ::testing::AssertionFailure() << "expected " << flashattn::status_code_name(code)
                                         << " naming '" << arg << "', got " << s.to_string();
  const std::string& m = s.message();
  if (m.compare(0, arg.size(), arg) != 0 || m.size() == arg.size() ||
      (m[arg.size()] != ':' && m[arg.size()] != '['))
    return ::testing::AssertionFailure() << "message does not start with '" << arg
                                         << "': " << m;
  return ::testing::AssertionSuccess();
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

Status validate(const KVCacheParams& p, Backend be) {
  return detail::validate_kvcache(detail::resolve(p), be);
}

// Decode-like problem: 3 sequences, 2 queries, 3 new tokens each, GQA, capacity 40.
KVCacheConfig base_cfg() {
  KVCacheConfig kc;
  kc.attn.dtype = DType::kFloat32;
  kc.attn.b = 3;
  kc.attn.seqlen_q = 2;
  kc.attn.h = 4;
  kc.attn.h_k = 2;
  kc.attn.d = 16;
  kc.seqlen_cache = 40;
  kc.seqlen_new = 3;
  return kc;
}

KVCacheConfig gpu_cfg(KVCacheConfig kc) {
  kc.attn.dtype = DType::kBFloat16;
  kc.attn.d = 32;
  return kc;
}

KVCacheConfig rotary_cfg() {
  KVCacheConfig kc = base_cfg();
  kc.rotary_dim = 8;
  return kc;
}

KVCacheConfig paged_cfg() {
  KVCacheConfig kc = base_cfg();
  kc.page_size = 8;
  return kc;
}

// Returns the status of the rejected call, for tests that check more of its message.
Status expect_kv_rejected(const KVCacheConfig& kc, const std::string& arg,
                          const std::function<void(KVCacheProblem&)>& brk) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(kc.attn.str() + " seed=" + std::to_string(seed));
  KVCacheProblem pr = make_kvcache_problem(kc, seed);
  EXPECT_TRUE(validate(pr.params, Backend::kCpu).ok());
  brk(pr);
  const auto kcache = pr.k_cache.bytes, vcache = pr.v_cache.bytes, q = pr.q.bytes,
             knew = pr.knew.bytes;
  const Status s = flashattn::mha_fwd_kvcache(pr.params);
  EXPECT_TRUE(Rejected(s, arg));
  EXPECT_TRUE(all_nan(pr.o)) << "o was written by a rejected call";
  EXPECT_TRUE(all_nan(pr.lse)) << "softmax_lse was written by a rejected call";
  EXPECT_TRUE(kcache == pr.k_cache.bytes && vcache == pr.v_cache.bytes)
      << "a rejected call modified the cache";
  EXPECT_TRUE(q == pr.q.bytes && knew == pr.knew.bytes) << "an input changed";
  return s;
}

bool contains(const Status& s, const std::string& part) {
  return s.message().find(part) != std::string::npos;
}

void expect_gpu_rejected(const KVCacheConfig& kc, const std::string& arg,
                         const std::function<void(KVCacheProblem&)>& brk) {
  KVCacheProblem pr = make_kvcache_problem(kc, fresh_seed());
  ASSERT_TRUE(validate(pr.params, Backend::kCuda).ok());
  brk(pr);
  EXPECT_TRUE(Rejected(validate(pr.params, Backend::kCuda), arg));
}

// ======================================================================== valid edge cases ==

std::vector<KVCacheConfig> valid_configs() {
  std::vector<KVCacheConfig> v;
  v.push_back(base_cfg());
  KVCacheConfig kc = rotary_cfg();
  kc.attn.causal = true;  // queries advance: seqlen_q 2 <= seqlen_new 3 keeps them in the table
  v.push_back(kc);
  kc = rotary_cfg();
  kc.rotary_interleaved = false;
  kc.rotary_dim = 16;  // = d
  kc.leftpad = true;
  v.push_back(kc);
  kc = base_cfg();
  kc.b_cache = 5;
  kc.batch_idx = true;
  kc.attn.h_k = 1;  // MQA
  v.push_back(kc);
  kc = paged_cfg();
  kc.rotary_dim = 4;
  v.push_back(kc);
  kc = paged_cfg();
  kc.page_size = 1;
  kc.seqlen_new = 0;
  kc.attn.seqlen_q = 1;
  v.push_back(kc);
  kc = base_cfg();
  kc.attn.seqlen_q = 0;
  kc.seqlen_new = 0;
  kc.cache_seqlens = {0, 0, 0};
  v.push_back(kc);
  kc = base_cfg();
  kc.cache_seqlens = {37, 0, 20};  // 37 + 3 = 40: exactly full
  v.push_back(kc);
  return v;
}

TEST(ValidationKVCacheValid, SinksAndOwnValueHeadDimPass) {
  for (KVCacheConfig kc : {base_cfg(), paged_cfg(), gpu_cfg(base_cfg())}) {
    kc.attn.sinks = true;
    kc.attn.dv = kc.attn.d + 8;
    KVCacheProblem pr = make_kvcache_problem(kc, fresh_seed());
    const Backend be = kc.attn.dtype == DType::kFloat32 ? Backend::kCpu : Backend::kCuda;
    const Status s = validate(pr.params, be);
    EXPECT_TRUE(s.ok()) << kc.attn.str() << ": " << s.to_string();
  }
}

TEST(ValidationKVCache, ValueCacheAndNewValuesHaveTheValueHeadDim) {
  // d = 16, dv = 24: the cache is written when appending, so a v head stride of d makes its
  // heads overlap (v is checked with rows of dv columns).
  KVCacheConfig kc = base_cfg();
  kc.attn.dv = 24;
  expect_kv_rejected(kc, "v_head_stride", [](KVCacheProblem& pr) { pr.params.v_head_stride = 16; });
  expect_kv_rejected(kc, "dv", [](KVCacheProblem& pr) { pr.params.dv = 600; });
}

TEST(ValidationKVCacheValid, BaselinesPass) {
  for (const KVCacheConfig& kc : valid_configs()) {
    KVCacheProblem pr = make_kvcache_problem(kc, fresh_seed());
    const Status s = validate(pr.params, Backend::kCpu);
    EXPECT_TRUE(s.ok()) << kc.attn.str() << " page=" << kc.page_size
                        << " rotary=" << kc.rotary_dim << ": " << s.to_string();
  }
}

TEST(ValidationKVCacheValid, GpuBaselinesPass) {
  for (const KVCacheConfig& kc : valid_configs()) {
    KVCacheProblem pr = make_kvcache_problem(gpu_cfg(kc), fresh_seed());
    const Status s = validate(pr.params, Backend::kCuda);
    EXPECT_TRUE(s.ok()) << kc.attn.str() << " page=" << kc.page_size << ": " << s.to_string();
  }
}

TEST(ValidationKVCacheValid, ScalarCacheSeqlenPasses) {
  // 37 + 3 new = capacity 40, and the rotary table has 40 rows.
  for (auto [kc, be] : {std::pair{rotary_cfg(), Backend::kCpu},
                        std::pair{gpu_cfg(rotary_cfg()), Backend::kCuda}}) {
    KVCacheProblem pr = make_kvcache_problem(kc, fresh_seed());
    pr.params.cache_seqlens = nullptr;
    pr.params.cache_seqlen = 37;
    const Status s = validate(pr.params, be);
    EXPECT_TRUE(s.ok()) << s.to_string();
  }
}

TEST(ValidationKVCacheValid, ReadOnlyCacheMayAliasItself) {
  // Without new keys the cache is only read: k and v may be the same memory.
  KVCacheConfig kc = base_cfg();
  kc.seqlen_new = 0;
  KVCacheProblem pr = make_kvcache_problem(kc, fresh_seed());
  pr.params.v_ptr = pr.params.k_ptr;
  EXPECT_TRUE(validate(pr.params, Backend::kCpu).ok());
}

TEST(ValidationKVCacheValid, DuplicateBatchIdxWithoutAppendPasses) {
  // Several sequences may read one cache row when nothing is appended.
  KVCacheConfig kc = base_cfg();
  kc.seqlen_new = 0;
  kc.batch_idx = true;
  KVCacheProblem pr = make_kvcache_problem(kc, fresh_seed());
  pr.cache_batch_idx = {1, 1, 1};
  EXPECT_TRUE(validate(pr.params, Backend::kCpu).ok());
}

TEST(ValidationKVCacheValid, DeviceIndexArraysAreNotRead) {
  // cache_seqlens, cache_batch_idx, cache_leftpad and block_table are device memory on the GPU
  // path: validation must not read them. Unmapped addresses would crash this test if it did.
  KVCacheConfig kc = gpu_cfg(base_cfg());
  kc.batch_idx = true;
  kc.leftpad = true;
  KVCacheProblem pr = make_kvcache_problem(kc, fresh_seed());
  const int* bogus = reinterpret_cast<const int*>(uintptr_t(64));
  pr.params.cache_seqlens = bogus;
  pr.params.cache_batch_idx = bogus + 64;
  pr.params.cache_leftpad = bogus + 128;
  const Status s = validate(pr.params, Backend::kCuda);
  EXPECT_TRUE(s.ok()) << s.to_string();
}

// ========================================================================= q and options ==

TEST(ValidationKVCache, CuSeqlensForbidden) {
  expect_kv_rejected(base_cfg(), "cu_seqlens_q", [](KVCacheProblem& pr) {
    pr.params.cu_seqlens_q = pr.cache_seqlens.data();
  });
}

TEST(ValidationKVCache, SequsedKForbidden) {
  expect_kv_rejected(base_cfg(), "seqused_k", [](KVCacheProblem& pr) {
    pr.params.seqused_k = pr.cache_seqlens.data();
  });
}

TEST(ValidationKVCache, DropoutNotAllowed) {
  expect_kv_rejected(base_cfg(), "p_dropout",
                     [](KVCacheProblem& pr) { pr.params.p_dropout = 0.1f; });
}

TEST(ValidationKVCache, ProbabilitiesNotAllowed) {
  Buffer probs = Buffer::make(DType::kFloat32, 4096);
  expect_kv_rejected(base_cfg(), "p_ptr",
                     [&probs](KVCacheProblem& pr) { pr.params.p_ptr = probs.data(); });
}

TEST(ValidationKVCache, SharedRulesApply) {
  expect_kv_rejected(base_cfg(), "window_size_left",
                     [](KVCacheProblem& pr) { pr.params.window_size_left = -3; });
  expect_kv_rejected(base_cfg(), "h", [](KVCacheProblem& pr) { pr.params.h = 3; });
}

TEST(ValidationKVCache, GpuRejectsFp32) {
  KVCacheProblem pr = make_kvcache_problem(base_cfg(), fresh_seed());
  EXPECT_TRUE(Rejected(validate(pr.params, Backend::kCuda), "dtype"));
}

TEST(ValidationKVCache, NullCache) {
  expect_kv_rejected(base_cfg(), "k_ptr", [](KVCacheProblem& pr) { pr.params.k_ptr = nullptr; });
}

// ========================================================================== cache geometry ==

TEST(ValidationKVCache, BCacheBelowBatch) {
  expect_kv_rejected(base_cfg(), "b_cache",
                     [](KVCacheProblem& pr) { pr.params.b_cache = pr.params.b - 1; });
}

TEST(ValidationKVCache, PagedBCacheMismatch) {
  expect_kv_rejected(paged_cfg(), "b_cache",
                     [](KVCacheProblem& pr) { pr.params.b_cache = pr.params.b + 1; });
}

TEST(ValidationKVCache, PagedCapacityBelowSeqlenK) {
  expect_kv_rejected(paged_cfg(), "seqlen_k",
                     [](KVCacheProblem& pr) { pr.params.seqlen_k += 1; });
}

TEST(ValidationKVCache, PagedBlockTableEntryOutOfRange) {
  KVCacheConfig kc = paged_cfg();
  kc.cache_seqlens = {10, 0, 30};  // sequence 0 uses pages 0..1 (13 keys)
  expect_kv_rejected(kc, "block_table", [](KVCacheProblem& pr) {
    pr.block_table[1] = pr.params.num_blocks;
  });
}

TEST(ValidationKVCache, CacheKAliasesVWhenAppending) {
  expect_kv_rejected(base_cfg(), "k_ptr",
                     [](KVCacheProblem& pr) { pr.params.v_ptr = pr.params.k_ptr; });
}

TEST(ValidationKVCache, OutputAliasesCache) {
  KVCacheConfig kc = base_cfg();
  kc.seqlen_new = 0;
  expect_kv_rejected(kc, "o_ptr", [](KVCacheProblem& pr) { pr.params.o_ptr = pr.k_cache.data(); });
}

// ====================================================================== cache lengths ==

TEST(ValidationKVCache, NegativeScalarCacheSeqlen) {
  expect_kv_rejected(base_cfg(), "cache_seqlen", [](KVCacheProblem& pr) {
    pr.params.cache_seqlens = nullptr;
    pr.params.cache_seqlen = -1;
  });
}

TEST(ValidationKVCache, ScalarCacheSeqlenOverCapacity) {
  // A scalar needs no device read: the GPU path checks it too.
  expect_kv_rejected(base_cfg(), "cache_seqlen", [](KVCacheProblem& pr) {
    pr.params.cache_seqlens = nullptr;
    pr.params.cache_seqlen = 38;  // 38 + 3 > 40
  });
  expect_gpu_rejected(gpu_cfg(base_cfg()), "cache_seqlen", [](KVCacheProblem& pr) {
    pr.params.cache_seqlens = nullptr;
    pr.params.cache_seqlen = 38;
  });
}

TEST(ValidationKVCache, NegativeCacheSeqlens) {
  expect_kv_rejected(base_cfg(), "cache_seqlens",
                     [](KVCacheProblem& pr) { pr.cache_seqlens[2] = -1; });
}

TEST(ValidationKVCache, CacheSeqlensOverCapacity) {
  expect_kv_rejected(base_cfg(), "cache_seqlens",
                     [](KVCacheProblem& pr) { pr.cache_seqlens[1] = 38; });
}

// A paged cache holds max_blocks_per_seq * page_block_size keys per sequence (here 5 x 8 = 40).
// Lengths past that raise naming the block table, the sequence and the capacity, as flash_attn
// does (its issue 2709), whether the cache itself or the appended keys overflow it.
TEST(ValidationKVCache, PagedLengthBeyondBlockTable) {
  KVCacheConfig kc = paged_cfg();
  kc.cache_seqlens = {4, 30, 9};
  for (int len : {38, 40, 1 << 20}) {  // 38 + 3 new, 40 (full) + 3 new, far beyond
    SCOPED_TRACE(len);
    const Status s = expect_kv_rejected(kc, "block_table",
                                        [len](KVCacheProblem& pr) { pr.cache_seqlens[1] = len; });
    EXPECT_TRUE(contains(s, "sequence 1 needs cache_seqlens[1] + seqlen_knew")) << s.message();
    EXPECT_TRUE(contains(s, "more than the paged capacity of 40")) << s.message();
    EXPECT_TRUE(contains(s, "max_blocks_per_seq 5 x page_block_size 8")) << s.message();
  }
  // Exactly full after the append is valid.
  KVCacheConfig full = kc;
  full.cache_seqlens = {4, 37, 9};
  KVCacheProblem pr = make_kvcache_problem(full, fresh_seed());
  EXPECT_TRUE(validate(pr.params, Backend::kCpu).ok());
}

TEST(ValidationKVCache, PagedScalarLengthBeyondBlockTable) {
  // One length for every sequence is a host value: the GPU path rejects it before any launch.
  auto brk = [](KVCacheProblem& pr) {
    pr.params.cache_seqlens = nullptr;
    pr.params.cache_seqlen = 38;  // 38 + 3 > 40
  };
  const Status s = expect_kv_rejected(paged_cfg(), "block_table", brk);
  EXPECT_TRUE(contains(s, "every sequence needs cache_seqlen + seqlen_knew = 38 + 3 = 41 keys"))
      << s.message();
  expect_gpu_rejected(gpu_cfg(paged_cfg()), "block_table", brk);
}

// ============================================================================= new keys ==

TEST(ValidationKVCache, KnewWithoutVnew) {
  expect_kv_rejected(base_cfg(), "vnew_ptr",
                     [](KVCacheProblem& pr) { pr.params.vnew_ptr = nullptr; });
}

TEST(ValidationKVCache, VnewWithoutKnew) {
  expect_kv_rejected(base_cfg(), "knew_ptr",
                     [](KVCacheProblem& pr) { pr.params.knew_ptr = nullptr; });
}

TEST(ValidationKVCache, SeqlenKnewWithoutPointers) {
  expect_kv_rejected(base_cfg(), "knew_ptr", [](KVCacheProblem& pr) {
    pr.params.knew_ptr = nullptr;
    pr.params.vnew_ptr = nullptr;
  });
}

TEST(ValidationKVCache, NegativeSeqlenKnew) {
  expect_kv_rejected(base_cfg(), "seqlen_knew",
                     [](KVCacheProblem& pr) { pr.params.seqlen_knew = -1; });
}

TEST(ValidationKVCache, KnewNegativeStride) {
  expect_kv_rejected(base_cfg(), "knew_row_stride",
                     [](KVCacheProblem& pr) { pr.params.knew_row_stride = -16; });
}

TEST(ValidationKVCache, KnewAliasesCache) {
  // The cache is written while knew is read: they must not share memory.
  expect_kv_rejected(base_cfg(), "k_ptr",
                     [](KVCacheProblem& pr) { pr.params.knew_ptr = pr.k_cache.data(); });
}

TEST(ValidationKVCache, GpuKnewStrideAlignment) {
  expect_gpu_rejected(gpu_cfg(base_cfg()), "knew_head_stride",
                      [](KVCacheProblem& pr) { pr.params.knew_head_stride += 4; });
}

// ============================================================================== rotary ==

TEST(ValidationKVCache, RotaryCosWithoutSin) {
  expect_kv_rejected(rotary_cfg(), "rotary_sin",
                     [](KVCacheProblem& pr) { pr.params.rotary_sin = nullptr; });
}

TEST(ValidationKVCache, RotarySinWithoutCos) {
  expect_kv_rejected(rotary_cfg(), "rotary_cos",
                     [](KVCacheProblem& pr) { pr.params.rotary_cos = nullptr; });
}

TEST(ValidationKVCache, RotaryNeedsNewKeys) {
  expect_kv_rejected(rotary_cfg(), "rotary_cos", [](KVCacheProblem& pr) {
    pr.params.knew_ptr = pr.params.vnew_ptr = nullptr;
    pr.params.seqlen_knew = 0;
  });
}

TEST(ValidationKVCache, RotaryDimInvalid) {
  for (int dim : {0, 7, 18, -2})  // d = 16
    expect_kv_rejected(rotary_cfg(), "rotary_dim",
                       [dim](KVCacheProblem& pr) { pr.params.rotary_dim = dim; });
}

TEST(ValidationKVCache, SeqlenRoZero) {
  expect_kv_rejected(rotary_cfg(), "seqlen_ro",
                     [](KVCacheProblem& pr) { pr.params.seqlen_ro = 0; });
}

TEST(ValidationKVCache, SeqlenRoTooShortForNewKeys) {
  KVCacheConfig kc = rotary_cfg();
  kc.cache_seqlens = {37, 2, 11};  // new keys of sequence 0 at positions 37..39
  expect_kv_rejected(kc, "seqlen_ro", [](KVCacheProblem& pr) { pr.params.seqlen_ro = 39; });
}

TEST(ValidationKVCache, SeqlenRoTooShortForCausalQueries) {
  // Causal queries rotate at cache_seqlens + i: 5 queries after 2 new keys reach position
  // cache_seqlens + 4, beyond the table; non-causal queries all sit at cache_seqlens.
  KVCacheConfig kc = rotary_cfg();
  kc.attn.seqlen_q = 5;
  kc.seqlen_new = 2;
  kc.cache_seqlens = {38, 0, 3};
  // A table of the cache's length (the generator's holds seqlen_q more rows).
  KVCacheProblem pr = make_kvcache_problem(kc, fresh_seed());
  pr.params.seqlen_ro = kc.seqlen_cache;
  EXPECT_TRUE(validate(pr.params, Backend::kCpu).ok());
  kc.attn.causal = true;
  KVCacheProblem causal = make_kvcache_problem(kc, fresh_seed());
  causal.params.seqlen_ro = kc.seqlen_cache;
  const Status s = flashattn::mha_fwd_kvcache(causal.params);
  EXPECT_TRUE(Rejected(s, "seqlen_ro"));
  EXPECT_TRUE(all_nan(causal.o));
}

// ========================================================= batch index and left padding ==

KVCacheConfig batch_idx_cfg() {
  KVCacheConfig kc = base_cfg();
  kc.b_cache = 5;
  kc.batch_idx = true;
  return kc;
}

TEST(ValidationKVCache, CacheBatchIdxOutOfRange) {
  expect_kv_rejected(batch_idx_cfg(), "cache_batch_idx",
                     [](KVCacheProblem& pr) { pr.cache_batch_idx[1] = 5; });
  expect_kv_rejected(batch_idx_cfg(), "cache_batch_idx",
                     [](KVCacheProblem& pr) { pr.cache_batch_idx[0] = -1; });
}

TEST(ValidationKVCache, CacheBatchIdxDuplicateWhenAppending) {
  expect_kv_rejected(batch_idx_cfg(), "cache_batch_idx",
                     [](KVCacheProblem& pr) { pr.cache_batch_idx[2] = pr.cache_batch_idx[0]; });
}

TEST(ValidationKVCache, CacheBatchIdxWithPaging) {
  expect_kv_rejected(paged_cfg(), "cache_batch_idx", [](KVCacheProblem& pr) {
    pr.cache_batch_idx = {0, 1, 2};
    pr.params.cache_batch_idx = pr.cache_batch_idx.data();
  });
}

TEST(ValidationKVCache, LeftpadWithPaging) {
  expect_kv_rejected(paged_cfg(), "cache_leftpad", [](KVCacheProblem& pr) {
    pr.cache_leftpad = {0, 0, 0};
    pr.params.cache_leftpad = pr.cache_leftpad.data();
  });
}

TEST(ValidationKVCache, LeftpadOutOfRange) {
  KVCacheConfig kc = base_cfg();
  kc.leftpad = true;
  kc.cache_seqlens = {10, 4, 0};
  expect_kv_rejected(kc, "cache_leftpad", [](KVCacheProblem& pr) { pr.cache_leftpad[1] = 5; });
  expect_kv_rejected(kc, "cache_leftpad", [](KVCacheProblem& pr) { pr.cache_leftpad[0] = -1; });
}

// ========================================================= device verdicts ==

// The GPU path reports a violation its device-side check found through kvcache_index_error; the
// verdict it builds (common/kvcache_index.h) must give host validation's message word for word.
TEST(ValidationKVCache, DeviceVerdictsGiveTheHostMessages) {
  struct Case {
    KVCacheConfig kc;
    std::function<void(KVCacheProblem&)> brk;
  };
  KVCacheConfig lp = base_cfg();
  lp.leftpad = true;
  lp.cache_seqlens = {10, 4, 0};
  KVCacheConfig table = paged_cfg();
  table.cache_seqlens = {10, 20, 30};
  const std::vector<Case> cases = {
      {base_cfg(), [](KVCacheProblem& pr) { pr.cache_seqlens[2] = -1; }},
      {base_cfg(), [](KVCacheProblem& pr) { pr.cache_seqlens[1] = 38; }},
      {paged_cfg(), [](KVCacheProblem& pr) { pr.cache_seqlens[1] = 38; }},
      {rotary_cfg(), [](KVCacheProblem& pr) { pr.params.seqlen_ro = pr.cache_seqlens[0] + 2; }},
      {lp, [](KVCacheProblem& pr) { pr.cache_leftpad[1] = 5; }},
      {batch_idx_cfg(), [](KVCacheProblem& pr) { pr.cache_batch_idx[1] = 5; }},
      {table, [](KVCacheProblem& pr) {
         pr.block_table[pr.params.block_table_batch_stride + 3] = -2;
         pr.block_table[pr.params.block_table_batch_stride + 1] = pr.params.num_blocks;
       }},
  };
  for (const Case& c : cases) {
    KVCacheProblem pr = make_kvcache_problem(c.kc, fresh_seed());
    c.brk(pr);
    const KVCacheParams p = detail::resolve(pr.params);
    const Status host = detail::validate_kvcache(p, Backend::kCpu);
    ASSERT_EQ(host.code(), StatusCode::kInvalidArgument) << host.to_string();
    // What the check kernel computes for the first bad sequence: the scalar rules, then the
    // lowest bad block-table column.
    const flashattn::KVIndexLimits lim = detail::kvcache_index_limits(p);
    flashattn::KVIndexViolation v;
    for (int i = 0; i < p.b && v.rule == flashattn::kKVIndexOk; ++i) {
      v = flashattn::check_kv_scalars(lim, i, p.cache_seqlens[i], p.cache_leftpad,
                                      p.cache_batch_idx);
      if (v.rule != flashattn::kKVIndexOk || p.block_table == nullptr) continue;
      const int64_t used =
          flashattn::kv_pages_used(int64_t(v.cache_len) + lim.seqlen_knew, p.page_block_size);
      for (int64_t j = 0; j < used && v.rule == flashattn::kKVIndexOk; ++j) {
        const int page = p.block_table[i * p.block_table_batch_stride + j];
        if (page < 0 || page >= p.num_blocks) {
          v.rule = flashattn::kKVBlockTableRange;
          v.value = page;
          v.column = int(j);
        }
      }
    }
    const Status device = detail::kvcache_index_error(p, v);
    EXPECT_EQ(device.code(), host.code());
    EXPECT_EQ(device.message(), host.message());
  }
}

}  // namespace
