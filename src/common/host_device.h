// FA_HD marks the small math shared by the GPU kernels, the CPU backend and the CPU reference:
// one definition of each rule, compiled for both sides.
#pragma once

#if defined(__CUDACC__)
#define FA_HD __host__ __device__ __forceinline__
#else
#define FA_HD inline
#endif

#include <cstdint>
#include <cstring>

namespace flashattn {

template <typename To, typename From>
FA_HD To bit_cast_hd(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast_hd: sizes differ");
  To to;
  memcpy(&to, &from, sizeof(To));
  return to;
}

}  // namespace flashattn
