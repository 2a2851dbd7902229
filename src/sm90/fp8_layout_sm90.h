// The key order the Hopper FP8 forward uses to feed P to the 8-bit P V wgmma without moving values
// between lanes (docs/fp8.md, "P layout"). Pure constexpr: the kernel (convert_p_fp8,
// mainloop_fwd_sm90.cuh), the V^T scratch (transpose_v_fp8.cuh) and a CPU test that checks both
// against CuTe's wgmma fragment layouts (tests/cpp/cpu/test_fp8_layout.cpp) read it.
//
// Per thread (t = lane % 4, r its row and r + 8) the fp32 S accumulator holds, for each 8-key
// block j, keys 8j + 2t and 8j + 2t + 1 of both rows: values 4j .. 4j + 3 in the order
// (r, 8j + 2t), (r, 8j + 2t + 1), (r + 8, 8j + 2t), (r + 8, 8j + 2t + 1). The e4m3 A fragment of a
// 32-key slice holds 16 bytes: k 4t .. 4t + 3 of row r, the same of row r + 8, then k 16 + 4t ..
// of both. Byte v of the slice's A fragment takes the slice's accumulator value
// kFp8PackOrder[v], so k slot 4t + e holds key fp8_key_of_slot(4t + e) = 8 (e / 2) + 2t + e % 2
// (plus 16 in the second half), and the V^T scratch stores each 32-key group in that order.
#pragma once

#include "common/host_device.h"

namespace flashattn::sm90 {

// Accumulator value (0..15 within a 32-key slice) that A-fragment byte v (0..15) takes.
FA_HD constexpr int fp8_pack_order(int v) {
  // bytes 0..3: row r, blocks 0 and 1; 4..7: row r + 8, blocks 0 and 1; 8..15: blocks 2 and 3.
  return 8 * (v / 8) + 2 * ((v / 4) % 2) + 4 * ((v / 2) % 2) + v % 2;
}

// The key (0..31, within its group of 32) stored at k slot `slot` (0..31) of the V^T scratch.
FA_HD constexpr int fp8_key_of_slot(int slot) {
  return 16 * (slot / 16) + 8 * ((slot % 4) / 2) + 2 * ((slot % 16) / 4) + slot % 2;
}

static_assert(fp8_pack_order(0) == 0 && fp8_pack_order(1) == 1 && fp8_pack_order(2) == 4 &&
              fp8_pack_order(3) == 5 && fp8_pack_order(4) == 2 && fp8_pack_order(7) == 7 &&
              fp8_pack_order(8) == 8 && fp8_pack_order(10) == 12 && fp8_pack_order(12) == 10 &&
              fp8_pack_order(15) == 15);
static_assert(fp8_key_of_slot(0) == 0 && fp8_key_of_slot(2) == 8 && fp8_key_of_slot(4) == 2 &&
              fp8_key_of_slot(15) == 15 && fp8_key_of_slot(16) == 16 && fp8_key_of_slot(18) == 24);

}  // namespace flashattn::sm90
