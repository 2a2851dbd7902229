// The FlashAttention-2 main loop of one CTA (kBlockM query rows of one head), SM80 path.
//
// Key blocks are walked from the last visible one down to the first, so the only partial block
// (the seqlen_k residue, n = n_max - 1) and the causal diagonal come first and every later K/V
// load is a full tile. Two schedules ("||" = in flight at the same time):
//
// kStages = 2 (K and V double-buffered, one barrier per block):
//   prologue:  cp.async Q, K[n_max - 1], V[n_max - 1]
//   for n = n_max - 1 down to n_min:
//     wait K[n], V[n]; barrier         (landed; every warp is done with block n + 1's stage)
//     cp.async K[n - 1], V[n - 1]    || S = Q K[n]^T; score mods / mask; softmax; O += P V[n]
//
// kStages = 1 (FlashAttention-2's schedule, one K and one V buffer, two barriers per block):
//   prologue:  cp.async Q, K[n_max - 1]
//   for n = n_max - 1 down to n_min:
//     wait K[n]; barrier               (K[n] landed; every warp done with the last P V)
//     cp.async V[n]                  || S = Q K[n]^T; score mods / mask
//     wait V[n]; barrier               (V[n] landed; every warp done reading sK)
//     cp.async K[n - 1]              || softmax; O += P V[n]
//
// Row pairs (Traits::kWarpsN == 2, kStages = 1; kernel_traits_sm80.cuh): two warps share each
// query row, each with half of the block's keys in S. Each writes its row maxima to smem before
// the second barrier and reads its partner's after it; P goes to smem, the pair meets at a
// named barrier, and each warp reads P of all keys of its rows as the A operand of its half of
// O += P V. At the end the pair adds up its row sums the same way.
//
// Tiles that hold invisible (row, key) pairs (causal diagonal, window edges, the residue) run
// the per-element mask; the fully visible ones run in their own loop without any mask code.
//
// Compile-time features (FwdFeaturesSm80), each off in the plain kernels so their code is not
// there at all:
//  - kPaged: every K/V row address comes from the block table (copy_kv_paged below);
//  - kDropout: after the online softmax of a tile, P is zeroed where the shared Philox stream
//    drops (common/dropout_tile.cuh), right before the P V gemm; the row sums stay un-dropped, so the
//    LSE is the un-dropped one and 1 / (1 - p) is folded into the final 1 / l.
//  - kSplit: warps whose query rows are all past seqlen_q skip their gemms and softmax (see
//    warp_active in run()); split-KV itself only narrows [n_block_min, n_block_max)
//    (kernel_fwd_sm80.cuh).
#pragma once

#include <cute/tensor.hpp>

#include <type_traits>

#include "common/mask.h"
#include "common/philox.h"
#include "common/seqlen.h"
#include "common/dropout_tile.cuh"
#include "sm80/fwd_args_sm80.h"
#include "common/score_mod_tile.cuh"
#include "common/online_softmax.cuh"
#include "sm80/utils_sm80.cuh"

namespace flashattn::sm80 {

using namespace cute;

// Where a CTA sits: query block, query head, sequence; which K/V batch row it reads (the
// KV-cache hook kv_batch_idx, else bidb) and which split of the key blocks it runs.
struct BlockCoordSm80 {
  int m_block = 0;
  int bidh = 0;
  int bidb = 0;
  int bidb_kv = 0;
  int split = 0;
};

// The compile-time feature set of one forward kernel. kSplit marks the split-capable kernels:
// they take a runtime num_splits (1 = write o directly) and the runtime KV-cache hooks
// (kv_batch_idx, k_leftpad); the plain kernels (all flags but softcap/ALiBi off) have neither.
template <bool kSoftcap_, bool kAlibi_, bool kPaged_ = false, bool kSplit_ = false,
          bool kDropout_ = false>
struct FwdFeaturesSm80 {
  static constexpr bool kSoftcap = kSoftcap_;
  static constexpr bool kAlibi = kAlibi_;
  static constexpr bool kPaged = kPaged_;
  static constexpr bool kSplit = kSplit_;
  static constexpr bool kDropout = kDropout_;
  static_assert(!(kDropout && kSoftcap), "dropout is not combined with softcap (flash_attn's rule)");
};

// t / page and t % page for 0 <= t < 2^31 by a multiply-high and a shift instead of an integer
// division per key row (Granlund-Montgomery): with L = ceil(log2(page)), page_mul =
// ceil(2^(31 + L) / page) < 2^32 and t / page = (t * page_mul) >> (32 + page_shift), page_shift =
// L - 1. Exact for every such t: page_mul * page exceeds 2^(31 + L) by less than page, so
// t * page_mul / 2^(31 + L) exceeds t / page by less than t / 2^(31 + L) < 1 / page, too little
// to reach the next integer. Page 1 has page_mul = 0 (t / 1 = t).
__forceinline__ __device__ void page_divmod(FwdArgsSm80 const& args, int t, int* page, int* row) {
  const int q = args.page_mul == 0 ? t : int(__umulhi(uint32_t(t), args.page_mul) >> args.page_shift);
  *page = q;
  *row = t - q * args.page_div;
}

template <class Traits, class Features>
struct MainloopFwdSm80 {
  static constexpr bool kHasSoftcap = Features::kSoftcap;
  static constexpr bool kHasAlibi = Features::kAlibi;
  static constexpr bool kPaged = Features::kPaged;
  static constexpr bool kDropout = Features::kDropout;
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kStages = Traits::kStages;
  using TiledMma = typename Traits::TiledMma;
  using ScoreMod = ScoreModTile<kHasSoftcap, kHasAlibi>;
  static constexpr int kNRows = 2 * kBlockM / (16 * Traits::kWarpsM);  // query rows per thread

  // Row pairs (Traits::kWarpsN == 2): two warps share each query row, so a row's max and sum
  // span both and P goes through shared memory (kernel_traits_sm80.cuh).
  static constexpr bool kRowPairs = Traits::kWarpsN == 2;
  static_assert(!(kRowPairs && Features::kSplit),
                "split kernels skip idle warps' gemms, which the pairs' extra barrier forbids");

  // Row pairs only: P of the current key block, and per (warp of the pair, row, quad lane) a
  // float for the max / sum exchange.
  struct RowPairStorage {
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutP>, 128> smem_p;
    float row_stat[2 * kBlockM * 4];
  };
  struct NoRowPairStorage {};
  // Paged only: the block-table entry (page) of every key row of a block, two blocks deep
  // (fetch_pages).
  struct PagedStorage {
    int page_of_row[2][kBlockN];
  };
  struct NoPagedStorage {};
  // (An empty base takes no bytes.)
  struct SharedStorage : std::conditional_t<kRowPairs, RowPairStorage, NoRowPairStorage>,
                         std::conditional_t<kPaged, PagedStorage, NoPagedStorage> {
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutQ>, 128> smem_q;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutK>, 128> smem_k;
    cute::array_aligned<Element, cute::cosize_v<typename Traits::SmemLayoutV>, 128> smem_v;
  };

  // Paged K or V block (keys n0 .. n0 + kBlockN - 1 of the sequence) gmem -> smem with cp.async.
  // Each thread copies whole 16-byte vectors of a few rows; a row's address is
  //   base + block_table[t / page] * page_stride + (t % page) * row_stride,   t = n0 + row,
  // per row when a page is smaller than (or not aligned to) the key block, and per tile when
  // every key block lies inside one page (args.page_holds_tiles: page % kBlockN == 0), since then
  // the rows of the tile are consecutive rows of one page. The block-table entries come from
  // shared memory, where fetch_pages put them a while before (page_of_row[row]; with
  // page_holds_tiles only [0]). Rows >= max_rows (kCheckRows) and columns off in pred_k are
  // zero-filled without reading memory.
  template <bool kCheckRows, class TiledCopy, class VecLayout, class TensorD, class TensorC,
            class TensorP>
  __forceinline__ __device__ void copy_kv_paged(FwdArgsSm80 const& args, TiledCopy const& tiled_copy,
                                                VecLayout const& vec_layout, const Element* base,
                                                int64_t page_stride, int64_t row_stride,
                                                const int* page_of_row, int n0, TensorD&& dst,
                                                TensorC const& coord, TensorP const& pred_k,
                                                int max_rows) const {
    constexpr int kRows = decltype(size<1>(dst))::value;
    // Opaque to the compiler, so that the per-row offsets row * row_stride are recomputed here
    // (a few integer ops per row, off the MMA stream) instead of hoisted out of the main loop,
    // where kRows of them held 2 kRows registers (ptxas then spilled them on sm_80).
    asm volatile("" : "+l"(row_stride));
    int64_t tile_offset = 0;
    if (args.page_holds_tiles) {
      int page, row_in_page;
      page_divmod(args, n0, &page, &row_in_page);
      tile_offset = int64_t(page_of_row[0]) * page_stride + int64_t(row_in_page) * row_stride;
    }
    CUTE_UNROLL
    for (int m = 0; m < kRows; ++m) {
      const int row = get<0>(coord(0, m, 0));
      const bool row_ok = !kCheckRows || row < max_rows;
      const Element* row_ptr = base;
      if (args.page_holds_tiles) {
        row_ptr = base + tile_offset + int64_t(row) * row_stride;
      } else if (row_ok) {
        int page, row_in_page;
        page_divmod(args, n0 + row, &page, &row_in_page);
        row_ptr = base + int64_t(page_of_row[row]) * page_stride +
                  int64_t(row_in_page) * row_stride;
      }
      CUTE_UNROLL
      for (int k = 0; k < size<2>(dst); ++k) {
        Tensor src = make_tensor(make_gmem_ptr(row_ptr + get<1>(coord(0, m, k))), vec_layout);
        copy(tiled_copy.with(row_ok && pred_k(k)), src, dst(_, m, k));
      }
    }
  }

  // The block-table entries copy_kv_paged needs for key block n0: page_of_row[r] =
  // block_table[(n0 + r) / page] for rows r < max_rows (kCheckRows; entries past a sequence's
  // last page need not be valid and are not read), or only [0] when pages hold whole tiles.
  // 4-byte cp.asyncs into shared memory, one per row, spread over the CTA; the caller commits
  // them and makes them visible (a wait and a barrier) before the copies that read them. One
  // fetch serves both the K and the V copy of the block, and the main loop issues it a whole
  // S = Q K^T ahead of the first copy that uses it: a cp.async cannot be issued before its row
  // address, so a lookup at copy time put the block-table latency in front of every K and V tile
  // (decode page 16: 0.89-0.95x -> 0.92-0.98x of contiguous). Shared memory rather than
  // registers: held in registers from the fetch to the V copy of the next block (across the
  // gemms), the entries pushed the d = 128 / 256 paged kernels into spilling (52-120 bytes on
  // sm_80).
  template <bool kCheckRows>
  __forceinline__ __device__ void fetch_pages(FwdArgsSm80 const& args, const int* block_table,
                                              int n0, int max_rows, int* page_of_row) const {
    auto fetch = [&](int r, int t) {
      int page, row_in_page;
      page_divmod(args, t, &page, &row_in_page);
      const int* src = block_table + page;
      const uint32_t dst = uint32_t(__cvta_generic_to_shared(page_of_row + r));
      asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src) : "memory");
    };
    if (args.page_holds_tiles) {
      if (threadIdx.x == 0) fetch(0, n0);
      return;
    }
    constexpr int kPasses = (kBlockN + Traits::kNThreads - 1) / Traits::kNThreads;
    CUTE_UNROLL
    for (int i = 0; i < kPasses; ++i) {
      const int r = int(threadIdx.x) + i * Traits::kNThreads;
      if ((kBlockN % Traits::kNThreads == 0 || r < kBlockN) && (!kCheckRows || r < max_rows))
        fetch(r, n0 + r);
    }
  }

  // Score mods and the mask of one S tile (rows from m0, keys from n0). ALiBi needs every
  // element's (row, key) in the unmasked loop as well, where the per-thread base of tScS is one
  // more register live across the whole loop: with it the d = 128 policy's ALiBi kernels spilled
  // a row maximum there on sm_90a (8 bytes, one local store and load per key block). Tiles with
  // Traits::kFreshScoreCoords derive the unmasked tiles' coordinates afresh from threadIdx.x
  // (fresh_thread_idx) every block instead. Elsewhere that is no better: the masked tiles spilled
  // 24 bytes that way, and the d = 64 dropout and d = 256 paged split ALiBi kernels 4 bytes.
  template <bool kMasked, class TensorS, class TensorC>
  __forceinline__ __device__ void score_mods(ScoreMod const& score_mod, TensorS& acc_s,
                                             TensorC const& tScS, int m0, int n0,
                                             VisibilityMask const& mask) const {
    if constexpr (kHasAlibi && !kMasked && Traits::kFreshScoreCoords) {
      Tensor tScS_fresh = TiledMma{}.get_thread_slice(fresh_thread_idx()).partition_C(
          make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
      score_mod.template apply<false>(acc_s, tScS_fresh, m0, n0, mask);
    } else {
      score_mod.template apply<kMasked>(acc_s, tScS, m0, n0, mask);
    }
  }

  // Runs the key blocks [n_block_min, n_block_max) into acc_o and the softmax state.
  template <class TensorO, class Softmax>
  __forceinline__ __device__ void run(FwdArgsSm80 const& args, SharedStorage& storage,
                                      SeqlenInfo const& seq, BlockCoordSm80 const& blk,
                                      VisibilityMask const& mask, int n_block_min,
                                      int n_block_max, TensorO& acc_o, Softmax& softmax) const {
    const FwdParams& p = args.p;
    const int tid = threadIdx.x;
    const bool varlen = p.cu_seqlens_q != nullptr;
    const int bidh_kv = blk.bidh / args.h_h_k_ratio;
    const int m0 = blk.m_block * kBlockM;

    // Global memory: this CTA's Q tile, and this (sequence, kv head)'s K and V as key blocks.
    const Element* q_base = static_cast<const Element*>(p.q_ptr) +
        seq.q_offset(p.q_batch_stride, p.q_row_stride, p.q_head_stride, blk.bidb, m0, blk.bidh,
                     varlen);
    const Element* k_base = static_cast<const Element*>(p.k_ptr) +
        seq.k_offset(p.k_batch_stride, p.k_row_stride, p.k_head_stride, blk.bidb_kv, 0, bidh_kv,
                     varlen);
    const Element* v_base = static_cast<const Element*>(p.v_ptr) +
        seq.k_offset(p.v_batch_stride, p.v_row_stride, p.v_head_stride, blk.bidb_kv, 0, bidh_kv,
                     varlen);
    Tensor gQ = make_tensor(make_gmem_ptr(q_base), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                            make_stride(p.q_row_stride, _1{}));            // (kBlockM, kHeadDim)
    Tensor mK = make_tensor(make_gmem_ptr(k_base), make_shape(n_block_max * kBlockN, Int<kHeadDim>{}),
                            make_stride(p.k_row_stride, _1{}));
    Tensor mV = make_tensor(make_gmem_ptr(v_base), make_shape(n_block_max * kBlockN, Int<kHeadDim>{}),
                            make_stride(p.v_row_stride, _1{}));
    Tensor gK = local_tile(mK, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, 0));  // (kBlockN, kHeadDim, n)
    Tensor gV = local_tile(mV, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, 0));  // (kBlockN, kHeadDim, n)

    Tensor sQ = make_tensor(make_smem_ptr(storage.smem_q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(storage.smem_k.data()), typename Traits::SmemLayoutK{});  // (kBlockN, kHeadDim, stage)
    Tensor sV = make_tensor(make_smem_ptr(storage.smem_v.data()), typename Traits::SmemLayoutV{});
    Tensor sVt = make_tensor(make_smem_ptr(storage.smem_v.data()), typename Traits::SmemLayoutVt{});  // (kHeadDim, kBlockN, stage)

    // gmem -> smem copies, with coordinates for the row / head-dim predicates.
    typename Traits::GmemTiledCopyQKV gmem_tiled_copy;
    auto gmem_thr_copy = gmem_tiled_copy.get_thread_slice(tid);
    Tensor tQgQ = gmem_thr_copy.partition_S(gQ);  // (CPY, CPY_M, CPY_K)
    Tensor tQsQ = gmem_thr_copy.partition_D(sQ);
    Tensor tKgK = gmem_thr_copy.partition_S(gK);  // (CPY, CPY_N, CPY_K, n)
    Tensor tKsK = gmem_thr_copy.partition_D(sK);  // (CPY, CPY_N, CPY_K, stage)
    Tensor tVgV = gmem_thr_copy.partition_S(gV);
    Tensor tVsV = gmem_thr_copy.partition_D(sV);
    Tensor tQcQ = gmem_thr_copy.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    Tensor tKVcKV = gmem_thr_copy.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
    // Head-dim predicate: the column split is the same for Q and K/V tiles.
    Tensor tpD = make_tensor<bool>(make_shape(size<2>(tKsK)));
    CUTE_UNROLL
    for (int k = 0; k < size(tpD); ++k) tpD(k) = get<1>(tKVcKV(0, 0, k)) < p.d;

    // MMA operands and the ldmatrix copies that feed them.
    TiledMma tiled_mma;
    auto thr_mma = tiled_mma.get_thread_slice(tid);
    Tensor tSrQ = thr_mma.partition_fragment_A(sQ);               // (MMA, MMA_M, MMA_K)
    Tensor tSrK = thr_mma.partition_fragment_B(sK(_, _, 0));      // (MMA, MMA_N, MMA_K)
    Tensor tOrVt = thr_mma.partition_fragment_B(sVt(_, _, 0));    // (MMA, MMA_N=d, MMA_K=keys)

    auto smem_tiled_copy_q = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);
    auto smem_thr_copy_q = smem_tiled_copy_q.get_thread_slice(tid);
    Tensor tSsQ = smem_thr_copy_q.partition_S(sQ);
    auto smem_tiled_copy_k = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);
    auto smem_thr_copy_k = smem_tiled_copy_k.get_thread_slice(tid);
    Tensor tSsK = smem_thr_copy_k.partition_S(sK);  // (CPY, CPY_N, CPY_K, stage)
    auto smem_tiled_copy_v = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma);
    auto smem_thr_copy_v = smem_tiled_copy_v.get_thread_slice(tid);
    Tensor tOsVt = smem_thr_copy_v.partition_S(sVt);  // (CPY, CPY_N, CPY_K, stage)

    // (row, key) of every S accumulator element, for the score mods and the mask.
    Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));

    // Row pairs: the row statistics and P of a key block pass through shared memory. This warp
    // is half `pair_half` of its pair (its n8 columns are 16 j + 8 * pair_half); row_stat holds
    // the maxima at [half * kBlockM + row] and the sums at [(half * kBlockM + row) * 4 + lane % 4].
    Tensor tScS_rows = make_tensor(tScS.data(), acc_layout_rowcol(tScS.layout()));  // (rows, keys)
    [[maybe_unused]] const int pair_half = (get<1>(tScS(0)) / 8) % 2;
    auto pair_barrier = [&]() {
      const int row_group = get<0>(tScS(0)) / 16 % Traits::kWarpsM;  // m16 tiles 16 (g + kWarpsM i)
      asm volatile("bar.sync %0, 64;" ::"r"(1 + row_group) : "memory");
    };
    auto share_row_max = [&](float const (&m)[kNRows]) {
      if constexpr (kRowPairs) {
        if (tid % 4 == 0) {
          CUTE_UNROLL
          for (int mi = 0; mi < kNRows; ++mi)
            storage.row_stat[pair_half * kBlockM + get<0>(tScS_rows(mi, 0))] = m[mi];
        }
      }
    };
    auto add_partner_row_max = [&](float (&m)[kNRows]) {
      if constexpr (kRowPairs) {
        CUTE_UNROLL
        for (int mi = 0; mi < kNRows; ++mi)
          m[mi] = fmaxf(m[mi], storage.row_stat[(pair_half ^ 1) * kBlockM + get<0>(tScS_rows(mi, 0))]);
      }
    };

    ScoreMod score_mod;
    score_mod.offset = seq.seqlen_k - seq.seqlen_q;
    if constexpr (kHasSoftcap) score_mod.softcap_prescale = args.softcap_prescale;
    if constexpr (kHasAlibi) {
      const float slope = p.alibi_slopes[blk.bidb * p.alibi_slopes_batch_stride + blk.bidh];
      score_mod.alibi_coef = -slope / args.unit;
    }
    // Query rows past the sequence end are zero-filled and never stored; they are left out of
    // the "fully visible" test so that the last row block still takes the unmasked path.
    const int m_end = min(m0 + kBlockM, seq.seqlen_q);
    // Split-capable kernels serve decode, where a 128-row tile holds only the few query rows of
    // one GQA group (s_q * h / h_k): most warps would run their MMAs and softmax on zero-filled
    // rows that are never stored, which made long-KV decode compute-bound. A warp none of whose
    // rows is below m_end skips both gemms and the softmax (a warp-uniform vote, so no
    // divergence inside a warp) but still issues its share of every cp.async and reaches every
    // barrier. Its O stays 0 and its row sums 0, which finalize() maps to rows the epilogues
    // skip (row < rows_left). The vote picks one of two loops (below): the full one, or one
    // that only copies and meets the barriers. A branch around the gemms in every block instead
    // kept values live across both paths: the d = 256 split kernels spilled 40-88 bytes. The
    // plain kernels have only the full loop.
    bool warp_active = true;
    if constexpr (Features::kSplit) {
      bool has_row = false;
      CUTE_UNROLL
      for (int i = 0; i < size(tScS); ++i) has_row |= m0 + get<0>(tScS(i)) < m_end;
      warp_active = __any_sync(0xffffffffu, has_row);
    }

    // K and V block copies into a smem stage. Contiguous: the tiled partitions above. Paged:
    // every row's address from the block table (copy_kv_paged). kCheckRows zero-fills the rows
    // >= max_rows (only the seqlen_k residue block needs it).
    const Element* k_page_base = nullptr;
    const Element* v_page_base = nullptr;
    const int* block_table = nullptr;
    if constexpr (kPaged) {
      k_page_base = static_cast<const Element*>(p.k_ptr) + int64_t(bidh_kv) * p.k_head_stride;
      v_page_base = static_cast<const Element*>(p.v_ptr) + int64_t(bidh_kv) * p.v_head_stride;
      block_table = p.block_table + int64_t(blk.bidb) * p.block_table_batch_stride;
    }
    // Block-table entries of key block n in page_of_row[n % 2] (paged only): the fetch for block
    // n - 1 is issued while block n's copies may still read theirs, and a barrier separates the
    // last read of a slot (block n + 1's V copy) from its next fetch (block n - 1's).
    static_assert(!kPaged || kStages == 1, "paged K/V runs the single-buffered schedule");
    auto pages_of = [&](int n_block) -> int* {
      if constexpr (kPaged) return storage.page_of_row[n_block & 1];
      return nullptr;
    };
    auto fetch_pages_of = [&](int n_block, auto check_rows, int max_rows) {
      if constexpr (kPaged) {
        fetch_pages<decltype(check_rows)::value>(args, block_table, n_block * kBlockN, max_rows,
                                                 pages_of(n_block));
      }
    };
    // This thread's part of key block n_block of gK or gV (contiguous K/V): its partition tXgX,
    // made before the loop, or with Traits::kFreshKVAddr the same re-derived from a fresh read
    // of threadIdx.x, so that no per-thread pointer stays live across the loop.
    auto kv_block_src = [&](auto const& g, auto const& tXgX, int n_block) {
      if constexpr (Traits::kFreshKVAddr) {
        return gmem_tiled_copy.get_thread_slice(fresh_thread_idx()).partition_S(g)(_, _, _, n_block);
      } else {
        return tXgX(_, _, _, n_block);
      }
    };
    auto load_k = [&](int n_block, int stage, auto check_rows, int max_rows) {
      constexpr bool kCheck = decltype(check_rows)::value;
      if constexpr (kPaged) {
        copy_kv_paged<kCheck>(args, gmem_tiled_copy, tKgK(_, 0, 0, 0).layout(), k_page_base, p.k_batch_stride,
                              p.k_row_stride, pages_of(n_block), n_block * kBlockN,
                              tKsK(_, _, _, stage), tKVcKV, tpD, max_rows);
      } else {
        copy_zfill<kCheck>(gmem_tiled_copy, kv_block_src(gK, tKgK, n_block), tKsK(_, _, _, stage),
                           tKVcKV, tpD, max_rows);
      }
    };
    auto load_v = [&](int n_block, int stage, auto check_rows, int max_rows) {
      constexpr bool kCheck = decltype(check_rows)::value;
      if constexpr (kPaged) {
        copy_kv_paged<kCheck>(args, gmem_tiled_copy, tVgV(_, 0, 0, 0).layout(), v_page_base, p.v_batch_stride,
                              p.v_row_stride, pages_of(n_block), n_block * kBlockN,
                              tVsV(_, _, _, stage), tKVcKV, tpD, max_rows);
      } else {
        copy_zfill<kCheck>(gmem_tiled_copy, kv_block_src(gV, tVgV, n_block), tVsV(_, _, _, stage),
                           tKVcKV, tpD, max_rows);
      }
    };

    // Dropout: the Philox stream of (sequence, query head) bh = bidb * h + bidh.
    DropoutRng rng;
    uint64_t dropout_bh = 0;
    if constexpr (kDropout) {
      rng.seed = p.philox_seed;
      rng.offset = p.philox_offset;
      rng.threshold = args.dropout_threshold;
      dropout_bh = uint64_t(blk.bidb) * uint64_t(p.h) + uint64_t(blk.bidh);
    }

    // Prologue: Q and the last key block (V too when double-buffered), the only block that can
    // be partial: rows past seqlen_k are zero-filled, never left stale (0 * NaN from poisoned
    // memory must not reach P V).
    int n_block = n_block_max - 1;
    const int rows_last = seq.seqlen_k - n_block * kBlockN;
    constexpr int kLastStage = 0;  // stage of block n_max - 1 (stages are relative to it)
    if constexpr (kPaged) {
      // The last block's entries must land before its K copy can be issued; Q's copy meanwhile.
      fetch_pages_of(n_block, cute::true_type{}, rows_last);
      cp_async_fence();
      copy_zfill<true>(gmem_tiled_copy, tQgQ, tQsQ, tQcQ, tpD, seq.seqlen_q - m0);
      cp_async_fence();
      cp_async_wait<1>();
      __syncthreads();
    } else {
      copy_zfill<true>(gmem_tiled_copy, tQgQ, tQsQ, tQcQ, tpD, seq.seqlen_q - m0);
    }
    load_k(n_block, kLastStage, cute::true_type{}, rows_last);
    if constexpr (kStages == 2) load_v(n_block, kLastStage, cute::true_type{}, rows_last);
    cp_async_fence();
    if constexpr (Traits::kQInRegs) {
      cp_async_wait<0>();
      __syncthreads();
      copy(smem_tiled_copy_q, tSsQ, smem_thr_copy_q.retile_D(tSrQ));
    }

    // S = Q K^T of the key block in `stage`: Q from registers (Traits::kQInRegs, loaded once
    // after the prologue) or, like K, from shared memory k-slice by k-slice.
    auto gemm_qk = [&](auto& acc_s, int stage) {
      if constexpr (Traits::kQInRegs) {
        gemm_rs(acc_s, tSrQ, tSrK, tSsK(_, _, _, stage), tiled_mma, smem_tiled_copy_k,
                smem_thr_copy_k);
      } else {
        gemm_ss<Traits::kQKChunksAhead>(acc_s, tSrQ, tSrK, tSsQ, tSsK(_, _, _, stage), tiled_mma,
                                        smem_tiled_copy_q, smem_tiled_copy_k, smem_thr_copy_q,
                                        smem_thr_copy_k);
      }
    };

    // S -> P -> O += P V for one key block (keys from n0) whose K and V sit in `stage`. Row
    // pairs: m_tile holds this warp's tile_max, already shared (share_row_max) before a barrier.
    auto softmax_pv = [&](auto& acc_s, int stage, auto masked, int n0, float (&m_tile)[kNRows]) {
      // Every row of an unmasked tile sees kBlockN finite scores, so its max is finite.
      constexpr bool kCheckInf = decltype(masked)::value;
      bool rescale;
      if constexpr (kRowPairs) {
        add_partner_row_max(m_tile);
        rescale = softmax.template update_with_max<kCheckInf>(acc_s, m_tile);
      } else {
        rescale = softmax.template update<kCheckInf>(acc_s);
      }
      // Dropout after the row sums took the un-dropped P (the LSE is the un-dropped one).
      if constexpr (kDropout) gpu::apply_dropout(acc_s, tScS, m0, n0, rng, dropout_bh);
      Tensor rP = convert_fragment<Element>(acc_s);
      auto rescale_o = [&]() {
        if constexpr (Traits::kSkipRescale) {
          softmax.rescale_o_if(rescale, acc_o);
        } else {
          softmax.rescale_o(acc_o);
        }
      };
      if constexpr (kRowPairs) {
        // P -> smem (each warp its half of the keys) -> the A operand of all keys of its rows.
        Tensor sP = make_tensor(make_smem_ptr(storage.smem_p.data()), typename Traits::SmemLayoutP{});
        auto p_store = make_tiled_copy_C(typename Traits::SmemCopyAtomO{}, tiled_mma);
        auto p_store_thr = p_store.get_thread_slice(tid);
        copy(p_store, p_store_thr.retile_S(rP), p_store_thr.partition_D(sP));
        rescale_o();
        // P of both halves in smem: only the pair's 64 threads meet (named barrier 1 + row
        // group; 0 is __syncthreads'), so the pairs of a CTA need not wait for each other.
        pair_barrier();
        auto p_load = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);
        auto p_load_thr = p_load.get_thread_slice(tid);
        Tensor tOrP = thr_mma.partition_fragment_A(sP);  // (MMA, MMA_M, MMA_K = keys)
        copy(p_load, p_load_thr.partition_S(sP), p_load_thr.retile_D(tOrP));
        gemm_rs(acc_o, tOrP, tOrVt, tOsVt(_, _, _, stage), tiled_mma, smem_tiled_copy_v,
                smem_thr_copy_v);
      } else {
        // P (fp32 accumulator) -> 16-bit A operand of O += P V, without leaving registers.
        Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));
        rescale_o();
        gemm_rs(acc_o, tOrP, tOrVt, tOsVt(_, _, _, stage), tiled_mma, smem_tiled_copy_v,
                smem_thr_copy_v);
      }
    };

    // One key block. kMasked: the tile holds invisible (row, key) pairs; only then is the
    // per-element mask evaluated.
    // kActive = false: a split kernel's warp without valid rows (warp_active above): copies and
    // barriers only.
    auto step = [&](int n_block, auto masked, auto active) {
      constexpr bool kMasked = decltype(masked)::value;
      constexpr bool kActive = decltype(active)::value;
      const int n0 = n_block * kBlockN;
      // Block n_max - 1 is in stage 0, n_max - 2 in stage 1, ...
      [[maybe_unused]] const int stage = kStages == 2 ? (n_block_max - 1 - n_block) & 1 : 0;
      Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});  // (MMA, MMA_M, MMA_N)
      clear(acc_s);
      float m_tile[kNRows];  // row pairs: this warp's row maxima of the tile

      cp_async_wait<0>();
      if constexpr (kStages == 2) {
        // K[n], V[n] visible to every warp; every warp is done with block n + 1 (its Q K^T and
        // P V), so that stage may take block n - 1, which then has a whole block to land.
        __syncthreads();
        if (n_block > n_block_min) {
          load_k(n_block - 1, stage ^ 1, cute::false_type{}, kBlockN);
          load_v(n_block - 1, stage ^ 1, cute::false_type{}, kBlockN);
          cp_async_fence();
        }
        if constexpr (kActive) {
          gemm_qk(acc_s, stage);
          score_mods<kMasked>(score_mod, acc_s, tScS, m0, n0, mask);
          softmax_pv(acc_s, stage, masked, n0, m_tile);
        }
      } else {
        __syncthreads();  // K[n] visible to every warp; every warp done with the last P V (sV free)
        // A partial block (the seqlen_k residue) is always a masked one: col_end <= seqlen_k.
        load_v(n_block, 0, masked, kMasked ? seq.seqlen_k - n0 : kBlockN);
        cp_async_fence();
        // Block n - 1's pages, in flight during this block's S = Q K^T (n - 1 is never partial);
        // the wait and the barrier below make them visible to load_k.
        if (kPaged && n_block > n_block_min) {
          fetch_pages_of(n_block - 1, cute::false_type{}, kBlockN);
          cp_async_fence();
        }
        if constexpr (kActive) {
          gemm_qk(acc_s, 0);
          score_mods<kMasked>(score_mod, acc_s, tScS, m0, n0, mask);
          if constexpr (kRowPairs) {
            softmax.tile_max(acc_s, m_tile);
            share_row_max(m_tile);
          }
        }
        cp_async_wait<0>();
        // V[n] visible; every warp done reading sK, so K[n - 1] may overwrite it; row pairs:
        // both halves' row maxima visible.
        __syncthreads();
        if (n_block > n_block_min) {
          load_k(n_block - 1, 0, cute::false_type{}, kBlockN);
          cp_async_fence();
        }
        if constexpr (kActive) softmax_pv(acc_s, 0, masked, n0, m_tile);
      }
    };

    // Key blocks [n_full_min, n_full_max) are fully visible to every valid row: the top row m0
    // sees up to col_end(m0) and the bottom row m_end - 1 from col_begin(m_end - 1) (both limits
    // grow with the row). They run in their own loop, so the hot loop holds no mask code at all:
    // with one loop and a uniform branch per tile, ptxas if-converted the ~200 mask instructions
    // into predicated ones that were issued on every tile (measured d = 128, s = 16k: 307 ->
    // 349 TFLOP/s from this split alone) and kept the per-row mask values live across the loop.
    const int n_full_max = mask.col_end(m0) / kBlockN;
    const int n_full_min = max((mask.col_begin(m_end - 1) + kBlockN - 1) / kBlockN, n_block_min);
    if (!warp_active) {
      // Split kernels only: a warp without valid rows takes every block as a masked one (its
      // copies check rows, which is all the flag changes without the gemms).
      if constexpr (Features::kSplit) {
        CUTE_NO_UNROLL
        for (; n_block >= n_block_min; --n_block)
          step(n_block, cute::true_type{}, cute::false_type{});
      }
    } else {
      CUTE_NO_UNROLL
      while (n_block >= n_block_min) {
        if (n_block < n_full_max && n_block >= n_full_min) {
          CUTE_NO_UNROLL
          for (; n_block >= n_full_min; --n_block)
            step(n_block, cute::false_type{}, cute::true_type{});
        } else {
          step(n_block, cute::true_type{}, cute::true_type{});
          --n_block;
        }
      }
    }

    // Row pairs: each warp summed P over its own keys; add the partner's partial of the same
    // quad lane (a + b in one warp, b + a in the other: the same bits), so finalize()'s quad sum
    // gives the whole row. The last reads of the maxima were before the last P barrier.
    if constexpr (kRowPairs) {
      CUTE_UNROLL
      for (int mi = 0; mi < kNRows; ++mi)
        storage.row_stat[(pair_half * kBlockM + get<0>(tScS_rows(mi, 0))) * 4 + tid % 4] =
            softmax.row_sum[mi];
      __syncthreads();
      CUTE_UNROLL
      for (int mi = 0; mi < kNRows; ++mi)
        softmax.row_sum[mi] +=
            storage.row_stat[((pair_half ^ 1) * kBlockM + get<0>(tScS_rows(mi, 0))) * 4 + tid % 4];
    }
  }
};

}  // namespace flashattn::sm80
