// The AVX-512 BF16 table with its bf16 block product on AMX tiles (kernels_amx_gemm.h), for
// Xeons from Sapphire Rapids on: there `vdpbf16ps` gives no more multiply-adds per cycle than
// the fp32 FMA, while one `tdpbf16ps` does a 16 x 16 x 32 product. Compiled with the AVX-512
// BF16 flags plus -mamx-tile -mamx-bf16; used only when amx_bf16_runs() says so. ODR hygiene as
// in kernels_avx512.cpp.
//
// Not run on the development machine (Zen 4 has no AMX): the loops are the ones the tests run
// on the emulated tile unit of kernels_avx512_bf16.cpp; what only this file has is the mapping
// of that unit onto the instructions (HardwareTiles) and the detection below.
#include <cstdint>

#include "cpu/kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__AVX512BF16__) && defined(__FMA__) && \
    defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__x86_64__)
#define FA_HAVE_AMX 1
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "cpu/kernels_amx_gemm.h"
#endif

namespace flashattn::cpu {

#if defined(FA_HAVE_AMX)

namespace {

// The tile unit of kernels_amx_gemm.h on the instructions. GCC's tile intrinsics paste their
// tile number into the assembly text, so each number is spelled out.
struct HardwareTiles {
  static void configure() {
    // Palette 1; every tile 16 rows of 64 bytes (colsb: 16-bit fields from byte 16, rows: bytes
    // from 48).
    alignas(64) uint8_t cfg[64] = {};
    cfg[0] = 1;
    for (int t = 0; t < 8; ++t) {
      cfg[16 + 2 * t] = 64;
      cfg[48 + t] = 16;
    }
    _tile_loadconfig(cfg);
  }
  static void release() { _tile_release(); }
#define FA_TILE_CASE(N, STMT) \
  if constexpr (T == N) {     \
    STMT;                     \
  }
#define FA_EACH_TILE(M)                                                                     \
  FA_TILE_CASE(0, M(0)) FA_TILE_CASE(1, M(1)) FA_TILE_CASE(2, M(2)) FA_TILE_CASE(3, M(3)) \
  FA_TILE_CASE(4, M(4)) FA_TILE_CASE(5, M(5)) FA_TILE_CASE(6, M(6)) FA_TILE_CASE(7, M(7))
  template <int T>
  static void load(const void* p, int64_t stride) {
#define FA_LOAD(N) _tile_loadd(N, p, stride)
    FA_EACH_TILE(FA_LOAD)
#undef FA_LOAD
  }
  template <int T>
  static void store(void* p, int64_t stride) {
#define FA_STORE(N) _tile_stored(N, p, stride)
    FA_EACH_TILE(FA_STORE)
#undef FA_STORE
  }
  template <int T>
  static void zero() {
#define FA_ZERO(N) _tile_zero(N)
    FA_EACH_TILE(FA_ZERO)
#undef FA_ZERO
  }
#undef FA_EACH_TILE
#undef FA_TILE_CASE
  // The four products of the 2 x 2 block (kernels_amx_gemm.h: C tiles 0..3, A 4, 5, B 6, 7).
  template <int C, int A, int B>
  static void dp() {
    static_assert((C == 0 && A == 4 && B == 6) || (C == 1 && A == 4 && B == 7) ||
                      (C == 2 && A == 5 && B == 6) || (C == 3 && A == 5 && B == 7),
                  "tile triple not spelled out");
    if constexpr (C == 0) _tile_dpbf16ps(0, 4, 6);
    if constexpr (C == 1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (C == 2) _tile_dpbf16ps(2, 5, 6);
    if constexpr (C == 3) _tile_dpbf16ps(3, 5, 7);
  }
};

void gemm_bf16(int m, int n, int kw, const uint32_t* a, int64_t a_rs, int64_t a_cs,
               const uint32_t* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  amx::gemm_bf16<HardwareTiles>(m, n, kw, a, a_rs, a_cs, b, ldb, c, ldc, accumulate);
}

}  // namespace

bool amx_bf16_runs() {
  // CPUID.(EAX=7, ECX=0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE; the OS enables the tile state in
  // XCR0 (bits 17 XTILECFG and 18 XTILEDATA; CPUID.1:ECX bit 27 OSXSAVE makes xgetbv legal).
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!(d & (1u << 22)) || !(d & (1u << 24))) return false;
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) return false;
#if defined(__linux__)
  // Linux hands out the tile data state per process on request (ARCH_REQ_XCOMP_PERM = 0x1023,
  // XFEATURE_XTILEDATA = 18); a tile instruction without it is killed with SIGILL.
  static const bool granted = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return granted;
#else
  return false;
#endif
}

const Kernels* amx_bf16_kernels() {
  const Kernels* base = avx512_bf16_kernels();
  if (base == nullptr) return nullptr;
  static const Kernels table = [base] {
    Kernels t = *base;
    t.name = "amx-bf16";
    t.gemm_bf16 = gemm_bf16;
    return t;
  }();
  return &table;
}

#else

bool amx_bf16_runs() { return false; }
const Kernels* amx_bf16_kernels() { return nullptr; }

#endif

}  // namespace flashattn::cpu
