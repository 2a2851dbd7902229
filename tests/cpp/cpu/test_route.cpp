// Host-side pieces of the GPU kernel paths, tested without a GPU: the Hopper path's coverage
// tables (forward and backward) and the path override (api/route.h), the Hopper tile policies, and
// the persistent tile scheduler's tile -> (query block, head, sequence) map
// (sm90/tile_scheduler_sm90.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <tuple>

#include "api/route.h"
#include "flashattn/flashattn.h"
#include "sm90/tile_scheduler_sm90.h"
#include "sm90/tile_size_bwd_sm90.h"
#include "sm90/tile_size_sm90.h"

namespace flashattn {
namespace {

class ScopedGpuPath {
 public:
  explicit ScopedGpuPath(GpuPath p) : saved_(gpu_path()) { set_gpu_path(p); }
  ~ScopedGpuPath() { set_gpu_path(saved_); }

 private:
  GpuPath saved_;
};

FwdParams plain() {
  FwdParams p;
  p.dtype = DType::kBFloat16;
  p.b = 2;
  p.seqlen_q = p.seqlen_k = 100;
  p.h = p.h_k = 4;
  p.d = 128;
  return p;
}

route::FwdRequest hopper() {
  route::FwdRequest r;
  r.device_runs_sm90 = true;
  r.sm90_compiled = true;
  return r;
}

TEST(Route, HopperCoversThePlainForwardItsScoreModsAndDropout) {
  FwdParams p = plain();
  EXPECT_EQ(route::fwd_sm90_uncovered(p, hopper()), "");
  p.is_causal = true;
  p.window_size_left = 10;
  p.softcap = 5.f;
  static const float slopes[4] = {0.1f, 0.2f, 0.3f, 0.4f};
  p.alibi_slopes = slopes;
  static const int cu[3] = {0, 50, 100};
  p.cu_seqlens_q = cu;
  p.cu_seqlens_k = cu;
  EXPECT_EQ(route::fwd_sm90_uncovered(p, hopper()), "");
  // Dropout (with ALiBi, without softcap: flash_attn's rule) runs on the Hopper path too.
  p.softcap = 0.f;
  p.p_dropout = 0.1f;
  EXPECT_EQ(route::fwd_sm90_uncovered(p, hopper()), "");
}

TEST(Route, EachUncoveredFeatureNamesItself) {
  const FwdParams p = plain();
  route::FwdRequest r = hopper();
  r.device_runs_sm90 = false;
  EXPECT_NE(route::fwd_sm90_uncovered(p, r).find("device"), std::string::npos);
  r = hopper();
  r.sm90_compiled = false;
  EXPECT_NE(route::fwd_sm90_uncovered(p, r).find("compiled"), std::string::npos);
  FwdParams q = p;
  // Dropout kernels exist where the tile has registers for the Philox state (FwdTileSm90).
  q.p_dropout = 0.1f;
  for (int d : {64, 40, 160, 192, 256}) {
    q.d = d;
    EXPECT_EQ(route::fwd_sm90_uncovered(q, hopper()), "dropout at this head dim") << d;
  }
  for (int d : {72, 96, 104, 128}) {
    q.d = d;
    EXPECT_EQ(route::fwd_sm90_uncovered(q, hopper()), "") << d;
  }
  q = p;
  static const int table[2] = {0, 1};
  q.block_table = table;
  EXPECT_EQ(route::fwd_sm90_uncovered(q, hopper()), "paged KV");
  r = hopper();
  r.num_splits = 2;
  EXPECT_EQ(route::fwd_sm90_uncovered(p, r), "split-KV");
  r = hopper();
  r.kv_cache_hooks = true;
  EXPECT_EQ(route::fwd_sm90_uncovered(p, r), "KV-cache path");
  r = hopper();
  r.split_family = true;
  EXPECT_EQ(route::fwd_sm90_uncovered(p, r), "KV-cache path");
  q = p;
  q.dtype = DType::kFloat32;
  EXPECT_EQ(route::fwd_sm90_uncovered(q, hopper()), "dtype");
}

// Attention sinks are an epilogue step on both paths: the Hopper forward takes them, and a request
// that is otherwise uncovered (here paged KV) still runs on the SM80 path.
TEST(Route, SinksRunOnTheHopperPathWhereCovered) {
  FwdParams p = plain();
  static const float sinks[4] = {0.5f, -1.f, 2.f, 0.f};
  p.sinks = sinks;
  EXPECT_EQ(route::fwd_sm90_uncovered(p, hopper()), "");
  {
    ScopedGpuPath a(GpuPath::kAuto);
    EXPECT_EQ(route::choose_fwd_path(p, hopper()), GpuPath::kSm90);
  }
  {
    ScopedGpuPath sm80(GpuPath::kSm80);
    EXPECT_EQ(route::choose_fwd_path(p, hopper()), GpuPath::kSm80);
  }
  static int block_table[1] = {0};
  p.block_table = block_table;
  ScopedGpuPath a(GpuPath::kAuto);
  EXPECT_EQ(route::choose_fwd_path(p, hopper()), GpuPath::kSm80);
}

TEST(Route, OverrideForcesTheSm80PathAndAutoPicksHopperWhereCovered) {
  const FwdParams p = plain();
  {
    ScopedGpuPath sm80(GpuPath::kSm80);
    EXPECT_EQ(route::choose_fwd_path(p, hopper()), GpuPath::kSm80);
  }
  {
    ScopedGpuPath a(GpuPath::kAuto);
    EXPECT_EQ(route::choose_fwd_path(p, hopper()), GpuPath::kSm90);
    FwdParams d = p;
    static const int table[2] = {0, 1};
    d.block_table = table;
    EXPECT_EQ(route::choose_fwd_path(d, hopper()), GpuPath::kSm80);
    route::FwdRequest ampere = hopper();
    ampere.device_runs_sm90 = false;
    EXPECT_EQ(route::choose_fwd_path(p, ampere), GpuPath::kSm80);
  }
  {
    ScopedGpuPath sm90(GpuPath::kSm90);
    EXPECT_EQ(route::choose_fwd_path(p, hopper()), GpuPath::kSm90);
  }
  EXPECT_STREQ(gpu_path_name(GpuPath::kSm80), "sm80");
  EXPECT_STREQ(gpu_path_name(GpuPath::kSm90), "sm90");
  EXPECT_STREQ(gpu_path_name(GpuPath::kAuto), "auto");
}

TEST(Route, LastPathIsPerThreadAndRecorded) {
  route::record_gpu_path(GpuPath::kSm90);
  EXPECT_EQ(last_gpu_path(), GpuPath::kSm90);
  route::record_gpu_path(GpuPath::kSm80);
  EXPECT_EQ(last_gpu_path(), GpuPath::kSm80);
}

BwdParams plain_bwd() {
  BwdParams p;
  static_cast<FwdParams&>(p) = plain();
  p.softmax_scale = 0.088f;
  return p;
}

route::BwdRequest hopper_bwd() {
  route::BwdRequest r;
  r.device_runs_sm90 = true;
  r.sm90_compiled = true;
  return r;
}

TEST(RouteBwd, HopperCoversDenseMasksAndGqa) {
  BwdParams p = plain_bwd();
  EXPECT_EQ(route::bwd_sm90_uncovered(p, hopper_bwd()), "");
  p.is_causal = true;
  p.window_size_left = 10;
  p.h_k = 1;
  EXPECT_EQ(route::bwd_sm90_uncovered(p, hopper_bwd()), "");
}

TEST(RouteBwd, EachUncoveredFeatureNamesItself) {
  const BwdParams p = plain_bwd();
  route::BwdRequest r = hopper_bwd();
  r.device_runs_sm90 = false;
  EXPECT_NE(route::bwd_sm90_uncovered(p, r).find("device"), std::string::npos);
  r = hopper_bwd();
  r.sm90_compiled = false;
  EXPECT_NE(route::bwd_sm90_uncovered(p, r).find("compiled"), std::string::npos);
  BwdParams q = p;
  q.dtype = DType::kFloat32;
  EXPECT_EQ(route::bwd_sm90_uncovered(q, hopper_bwd()), "dtype");
  q = p;
  static const int cu[3] = {0, 50, 100};
  q.cu_seqlens_q = cu;
  q.cu_seqlens_k = cu;
  EXPECT_EQ(route::bwd_sm90_uncovered(q, hopper_bwd()), "varlen");
  q = p;
  static const int used[2] = {50, 60};
  q.seqused_k = used;
  EXPECT_EQ(route::bwd_sm90_uncovered(q, hopper_bwd()), "seqused_k");
  q = p;
  q.p_dropout = 0.1f;
  EXPECT_EQ(route::bwd_sm90_uncovered(q, hopper_bwd()), "dropout");
  q = p;
  q.softcap = 5.f;
  EXPECT_EQ(route::bwd_sm90_uncovered(q, hopper_bwd()), "softcap");
  q = p;
  static const float slopes[4] = {0.1f, 0.2f, 0.3f, 0.4f};
  q.alibi_slopes = slopes;
  EXPECT_EQ(route::bwd_sm90_uncovered(q, hopper_bwd()), "ALiBi");
  q = p;
  q.deterministic = true;
  EXPECT_EQ(route::bwd_sm90_uncovered(q, hopper_bwd()), "deterministic");
  q = p;
  q.softmax_scale = -0.5f;
  EXPECT_EQ(route::bwd_sm90_uncovered(q, hopper_bwd()), "softmax_scale <= 0");
}

// The backward with attention sinks (and their gradient, dsinks) runs on the Hopper path where the
// rest of the request is covered (the shared dsinks kernel follows either path's preprocess), and
// on the SM80 path with a feature the Hopper backward lacks (here ALiBi) or when forced.
TEST(RouteBwd, SinksRunOnTheHopperPathWhereCovered) {
  static const float sinks[4] = {0.5f, -1.f, 2.f, 0.f};
  static float dsinks[4];
  BwdParams p = plain_bwd();
  p.sinks = sinks;
  BwdParams pd = p;
  pd.dsinks = dsinks;
  {
    ScopedGpuPath a(GpuPath::kAuto);
    EXPECT_EQ(route::choose_bwd_path(p, hopper_bwd()), GpuPath::kSm90);
    EXPECT_EQ(route::choose_bwd_path(pd, hopper_bwd()), GpuPath::kSm90);
    static const float slopes[4] = {0.1f, 0.2f, 0.3f, 0.4f};
    pd.alibi_slopes = slopes;
    EXPECT_EQ(route::choose_bwd_path(pd, hopper_bwd()), GpuPath::kSm80);
  }
  ScopedGpuPath sm80(GpuPath::kSm80);
  EXPECT_EQ(route::choose_bwd_path(p, hopper_bwd()), GpuPath::kSm80);
}

TEST(RouteBwd, OverrideForcesTheSm80PathAndAutoPicksHopperWhereCovered) {
  const BwdParams p = plain_bwd();
  {
    ScopedGpuPath sm80(GpuPath::kSm80);
    EXPECT_EQ(route::choose_bwd_path(p, hopper_bwd()), GpuPath::kSm80);
  }
  {
    ScopedGpuPath a(GpuPath::kAuto);
    EXPECT_EQ(route::choose_bwd_path(p, hopper_bwd()), GpuPath::kSm90);
    BwdParams d = p;
    d.deterministic = true;
    EXPECT_EQ(route::choose_bwd_path(d, hopper_bwd()), GpuPath::kSm80);
    route::BwdRequest ampere = hopper_bwd();
    ampere.device_runs_sm90 = false;
    EXPECT_EQ(route::choose_bwd_path(p, ampere), GpuPath::kSm80);
  }
  {
    ScopedGpuPath sm90(GpuPath::kSm90);
    EXPECT_EQ(route::choose_bwd_path(p, hopper_bwd()), GpuPath::kSm90);
  }
}

TEST(TileSizeBwdSm90, HeadDimsRoundUpToAKernelAndFitTheBudgets) {
  EXPECT_EQ(sm90::round_head_dim_bwd_sm90(8), 64);
  EXPECT_EQ(sm90::round_head_dim_bwd_sm90(64), 64);
  EXPECT_EQ(sm90::round_head_dim_bwd_sm90(72), 128);
  EXPECT_EQ(sm90::round_head_dim_bwd_sm90(128), 128);
  EXPECT_EQ(sm90::round_head_dim_bwd_sm90(136), 0);
  for (int d : {64, 128}) {
    const sm90::BwdTileSm90 t = sm90::tile_size_bwd_sm90(d);
    EXPECT_EQ(t.block_m % 64, 0) << d;
    EXPECT_EQ(t.block_n, 64 * t.mma_warpgroups()) << d;
    EXPECT_LE(sm90::bwd_smem_bytes_sm90(t, d) + 1024, 227 * 1024) << d;
    EXPECT_LE(t.load_registers * 128 + t.mma_registers * 128 * t.mma_warpgroups(), 65536) << d;
  }
}

TEST(TileSizeSm90, HeadDimsRoundUpToAKernel) {
  EXPECT_EQ(sm90::round_head_dim_sm90(8), 64);
  EXPECT_EQ(sm90::round_head_dim_sm90(64), 64);
  EXPECT_EQ(sm90::round_head_dim_sm90(72), 96);
  EXPECT_EQ(sm90::round_head_dim_sm90(128), 128);
  EXPECT_EQ(sm90::round_head_dim_sm90(136), 192);
  EXPECT_EQ(sm90::round_head_dim_sm90(256), 256);
  for (int d : {64, 96, 128, 192, 256}) {
    const sm90::FwdTileSm90 t = sm90::tile_size_fwd_sm90(d);
    EXPECT_EQ(t.block_m % 64, 0) << d;
    EXPECT_EQ(t.block_n % 16, 0) << d;
    EXPECT_LE(sm90::fwd_smem_bytes_sm90(t, d) + 1024, 227 * 1024) << d;
    EXPECT_LE(t.load_registers * 128 + t.mma_registers * 128 * t.mma_warpgroups(), 65536) << d;
  }
}

// Every tile index maps to a distinct (query block, head, sequence), covering all of them.
void expect_bijection(const sm90::TileSchedulerSm90& s) {
  std::set<std::tuple<int, int, int>> seen;
  for (int t = 0; t < s.num_tiles; ++t) {
    const sm90::TileCoordSm90 c = s.coord(t);
    ASSERT_GE(c.m_block, 0);
    ASSERT_LT(c.m_block, s.num_m_blocks);
    ASSERT_GE(c.bidh, 0);
    ASSERT_LT(c.bidh, s.h);
    ASSERT_GE(c.bidb, 0);
    ASSERT_LT(c.bidb, s.b);
    seen.insert({c.m_block, c.bidh, c.bidb});
  }
  EXPECT_EQ(int(seen.size()), s.num_tiles);
}

TEST(TileSchedulerSm90, UnmaskedOrderWalksQueryBlocksFastest) {
  const auto s = sm90::TileSchedulerSm90::make(7, 5, 3, false, 1 << 20, 32 << 20);
  EXPECT_EQ(s.num_tiles, 7 * 5 * 3);
  EXPECT_EQ(s.heads_per_section, 0);
  expect_bijection(s);
  for (int t = 0; t + 1 < s.num_tiles; ++t) {
    const auto a = s.coord(t), b = s.coord(t + 1);
    if (a.m_block + 1 < s.num_m_blocks) {
      EXPECT_EQ(b.m_block, a.m_block + 1);
      EXPECT_EQ(b.bidh, a.bidh);
      EXPECT_EQ(b.bidb, a.bidb);
    }
  }
}

TEST(TileSchedulerSm90, CausalOrderIsLongestFirstInsideL2Sections) {
  struct C { int m, h, b; int64_t kv, l2; };
  for (C c : {C{9, 16, 2, 4 << 20, 32 << 20}, C{5, 7, 3, 10 << 20, 32 << 20},
              C{3, 1, 1, 1 << 20, 32 << 20}, C{4, 6, 1, 100 << 20, 32 << 20},
              C{8, 3, 5, 1, 32 << 20}}) {
    const auto s = sm90::TileSchedulerSm90::make(c.m, c.h, c.b, true, c.kv, c.l2);
    ASSERT_GE(s.heads_per_section, 1);
    ASSERT_LE(s.heads_per_section, c.h * c.b);
    EXPECT_EQ(s.heads_per_section,
              std::min<int64_t>(c.h * c.b, std::max<int64_t>(1, c.l2 / c.kv)));
    expect_bijection(s);
    // Inside a section, query blocks never get longer (m_block never rises), and a section's
    // tiles are contiguous in the tile order.
    for (int t = 0; t + 1 < s.num_tiles; ++t) {
      const auto a = s.coord(t), b = s.coord(t + 1);
      const int sec_a = (a.bidb * c.h + a.bidh) / s.heads_per_section;
      const int sec_b = (b.bidb * c.h + b.bidh) / s.heads_per_section;
      EXPECT_LE(sec_a, sec_b);
      if (sec_a == sec_b) EXPECT_LE(b.m_block, a.m_block);
    }
  }
}

}  // namespace
}  // namespace flashattn
