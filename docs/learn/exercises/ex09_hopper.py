#!/usr/bin/env python3
"""Exercise 9 (docs/learn/09-hopper.md): the arithmetic behind the Hopper design.

1. Register reallocation (setmaxnreg): the producer / consumer budgets fit the 64K registers.
2. Ping-pong: a toy timeline of two consumer warpgroups sharing the tensor cores.
3. FP8 (e4m3) probabilities: why P is scaled by 2^8 before it is rounded to 8 bits.
4. flashattn's Hopper tile policy (src/sm90/tile_size_sm90.h), read from the source: every entry
   fits the shared memory and the register file, and a consumer's live accumulators fit its
   setmaxnreg budget.
"""
import math
import re
from pathlib import Path

# ---- 1. Registers per SM: 65536 32-bit registers, one CTA of 1 producer + N consumer WGs ----
REGS = 64 * 1024
WG = 128   # threads per warpgroup (4 warps)
for consumers, producer_regs, consumer_regs in [(1, 56, 256), (2, 24, 240), (3, 32, 160)]:
    used = producer_regs * WG + consumers * consumer_regs * WG
    assert used <= REGS, (consumers, used)
# Without reallocation all 3 x 128 threads of the 2-consumer CTA would get the same share:
assert REGS // (3 * WG) == 170   # 170 per thread (setmaxnreg counts in multiples of 8: 168)
# ... far below what a consumer holding O (64 rows x 128 cols fp32 over 128 threads = 64), S
# (64 x 128 / 128 = 64) and P needs.


# ---- 2. Ping-pong: tensor-core utilization in a toy schedule --------------------------------
def simulate(n_wg, gemm, softmax, iters, pingpong):
    """Each warpgroup loops: GEMMs (needs the tensor cores, one WG at a time), then softmax
    (other units). With ping-pong the WGs take the tensor cores in a fixed alternating order
    (named barriers); without it a WG idles while its own softmax runs, and one WG alone can
    never overlap the two. Returns the fraction of time the tensor cores are busy."""
    tc_free = 0.0
    ready = [0.0] * n_wg          # when each WG can issue its next GEMMs
    busy = 0.0
    order = [w for _ in range(iters) for w in range(n_wg)] if pingpong else None
    if not pingpong:              # no coordination: only one WG exists in this variant
        assert n_wg == 1
        order = [0] * iters
    for w in order:
        start = max(ready[w], tc_free)
        tc_free = start + gemm
        busy += gemm
        ready[w] = tc_free + softmax   # softmax runs on the SFU / FMA units, off the tensor cores
    return busy / tc_free


G, S = 1.0, 0.8   # softmax nearly as long as the GEMMs: typical at d = 128 (exp2 is slow)
alone = simulate(1, G, S, 50, pingpong=False)
pp = simulate(2, G, S, 50, pingpong=True)
assert abs(alone - G / (G + S)) < 0.01        # ~56 %: the MMA units wait for every softmax
assert pp > 0.98                              # ~100 % as long as S <= G
assert simulate(2, G, 1.5, 50, pingpong=True) < 0.85   # softmax longer than GEMMs: it shows again


# ---- 3. FP8 e4m3 and the P offset -----------------------------------------------------------
def to_e4m3(x):
    """Round a non-negative float to the nearest e4m3 value (bias 7, 3 mantissa bits, max 448,
    subnormals down to 2^-9), ties to even."""
    if x == 0:
        return 0.0
    x = min(x, 448.0)
    e = max(math.floor(math.log2(x)), -6)      # below 2^-6: subnormal spacing 2^-9
    step = 2.0 ** (e - 3)
    q = x / step
    r = math.floor(q + 0.5)
    if q + 0.5 == r and r % 2 == 1:
        r -= 1
    return min(r * step, 448.0)


assert to_e4m3(448.0) == 448.0 and to_e4m3(1.0) == 1.0 and to_e4m3(2.0 ** -9) == 2.0 ** -9
assert to_e4m3(2.0 ** -11) == 0.0              # underflows

# One softmax row with a wide range of scores (a sharp attention head): p = exp(s - max) lies
# in (0, 1], so most of e4m3's range (up to 448) is wasted and small p underflow to 0.
scores = [0.0] + [-0.5 * k for k in range(1, 40)]
p = [math.exp(s) for s in scores]
plain = [to_e4m3(x) for x in p]
shifted = [to_e4m3(x * 2 ** 8) / 2 ** 8 for x in p]   # FA3: max offset 8, P in [0, 256]
lost_plain = sum(1 for x in plain if x == 0)
lost_shifted = sum(1 for x in shifted if x == 0)
assert lost_shifted < lost_plain                       # fewer probabilities flushed to zero
# The probability mass that vanished (it no longer reaches O or the row sum):
mass_plain = sum(x for x, y in zip(p, plain) if y == 0)
mass_shifted = sum(x for x, y in zip(p, shifted) if y == 0)
assert mass_shifted < mass_plain / 100
assert max(x * 2 ** 8 for x in p) <= 448               # the shifted maximum still fits e4m3


# ---- 4. The tile policy of src/sm90/tile_size_sm90.h ------------------------------------------
# Entries read as {block_m, block_n, stages, mma_registers, load_registers, pingpong, dropout},
# one per head-dim kernel (64, 96, 128, 192, 256: the bound of each `if`, the last entry serving
# 256); the dropout flag is not used here.
ROOT = Path(__file__).resolve().parents[3]
src = (ROOT / "src/sm90/tile_size_sm90.h").read_text()
body = src[src.index("constexpr FwdTileSm90 tile_size_fwd_sm90"):]
body = body[:body.index("\n}\n")]
entries = re.findall(r"(?:if \(head_dim <= (\d+)\) )?return \{(\d+), (\d+), (\d+), (\d+), (\d+), "
                     r"(true|false), (?:true|false)\};", body)
assert [int(e[0] or 256) for e in entries] == [64, 96, 128, 192, 256], entries
SMEM = 227 * 1024   # per CTA on H100 / H200
for bound, bm, bn, stages, mma_regs, load_regs, pingpong in entries:
    d, bm, bn, stages, mma_regs, load_regs = map(int, (bound or 256, bm, bn, stages, mma_regs,
                                                       load_regs))
    consumers = bm // 64                       # one warpgroup per 64 query rows (the wgmma M)
    smem = 2 * (bm * d + 2 * stages * bn * d)  # Q + K and V stages, 2-byte elements
    assert smem + 1024 <= SMEM, (d, smem)      # + the pipelines' barriers
    assert load_regs * WG + consumers * mma_regs * WG <= REGS, d
    # A consumer thread's share of its warpgroup's 64 rows, at the overlap of softmax(n) with
    # P V(n + 1): O (64 x d fp32), S (64 x block_n fp32) and P (S in 16 bits, half the registers).
    o, s = 64 * d // WG, 64 * bn // WG
    assert o + s + s // 2 <= mma_regs, (d, o, s)
    assert bn % 16 == 0 and d % 16 == 0        # wgmma K steps of 16
    assert (pingpong == "true") == (d <= 128)  # off where P V alone outlasts a softmax

print(f"ex09: budgets fit; tensor cores busy {alone:.0%} alone vs {pp:.0%} ping-pong; "
      f"e4m3 zeros {lost_plain} -> {lost_shifted} with the 2^8 offset; "
      f"{len(entries)} Hopper tiles fit smem and registers")
