#!/usr/bin/env python3
"""Exercise 9 (docs/learn/09-hopper.md): the arithmetic behind the Hopper design.

1. Register reallocation (setmaxnreg): the producer / consumer budgets fit the 64K registers.
2. Ping-pong: a toy timeline of two consumer warpgroups sharing the tensor cores.
3. FP8 (e4m3) probabilities: why P is scaled by 2^8 before it is rounded to 8 bits.
4. flashattn's Hopper tile policy (src/sm90/tile_size_sm90.h), read from the source: every entry
   fits the shared memory and the register file, a consumer's live accumulators fit its
   setmaxnreg budget, and the staged O of every consumer fits in the V buffers.
5. The tile boundary of src/sm90/: a happens-before model of the producer, the consumer
   warpgroups, the K / V pipelines and the named barriers of src/sm90/barriers_sm90.cuh across a
   few tiles. It finds no hazard, and removing (or moving) each barrier makes the hazard the page
   names appear.
6. Tile scheduling (src/sm90/tile_scheduler_sm90.h, kernel_fwd_sm90.cuh): the counter and the
   handoff checked in the source; per-CTA work of a static snake, plain striding, the first free
   CTA and the kernel's counter for causal tiles in longest-first order; and the producer ->
   consumers handoff of each tile index over random interleavings, against the variants that
   fail (no tile_empty, named barriers in place of the mbarriers) or serialize (one slot).
"""
import heapq
import math
import random
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
# Entries read as {block_m, block_n, stages, mma_registers, load_registers, pingpong}, one per
# head-dim kernel (64, 96, 128, 192, 256: the bound of each `if`, the last entry serving 256).
ROOT = Path(__file__).resolve().parents[3]
src = (ROOT / "src/sm90/tile_size_sm90.h").read_text()
body = src[src.index("constexpr FwdTileSm90 tile_size_fwd_sm90"):]
body = body[:body.index("\n}\n")]
entries = re.findall(r"(?:if \(head_dim <= (\d+)\) )?return \{(\d+), (\d+), (\d+), (\d+), (\d+), "
                     r"(true|false)\};", body)
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
    # O is staged in the V buffers (SmemLayoutOWg in smem_v): 64 rows per consumer warpgroup.
    assert consumers * 64 * d <= stages * bn * d, d

print(f"ex09 1-4: budgets fit; tensor cores busy {alone:.0%} alone vs {pp:.0%} ping-pong; "
      f"e4m3 zeros {lost_plain} -> {lost_shifted} with the 2^8 offset; "
      f"{len(entries)} Hopper tiles fit smem and registers")


# ---- 5. The tile boundary: why each named barrier of src/sm90/barriers_sm90.cuh is there -----
# A happens-before model of one CTA of the d = 128 kernel (2 consumer warpgroups, 128 x 128 tiles,
# 2 K / V stages) over a few tiles. Actors: "P", the producer warp (thread 0 issues, the whole warp
# joins the named barriers), and each consumer warpgroup w split in two, "C<w>.t0" (its thread 0,
# which issues the TMA store of O) and "C<w>.rest" (its other 127 threads). Shared memory is split
# into cells the same way: q0, q1 (each warpgroup's 64 rows of Q), k0, k1 (the K stages), and
# v<stage><half>.<part> (a V stage's rows 0-63 / 64-127, by the threads that stage O there: the O
# of warpgroup w is rows 64 w .. 64 w + 63 of smem_v, so here the two O tiles fill V stage 0).
# An access is an interval: a TMA copy from its issue to its completion (which arrives on an
# mbarrier), a wgmma from its issue to the wgmma.wait_group that covers it, a register <-> smem
# copy a point. Two accesses to a cell, one a write, must be ordered by happens-before (program
# order, mbarrier arrive -> wait, named-barrier arrive / sync -> sync). Not modelled: the proxy
# fences (the page explains them), and kTurn: ping-pong only orders the issue of GEMMs, is off at
# d = 192 and 256, and memory safety must not rest on it, so the model has no turn barriers.
TMA = "tma"
CONSUMERS = [f"C{w}.{part}" for w in range(2) for part in ("t0", "rest")]
PARTICIPANTS = {"kQueryEmpty": CONSUMERS + ["P"], "kOEmpty": CONSUMERS + ["P"],
                "kEpilogue": CONSUMERS, "kWarpGroup0": CONSUMERS[:2], "kWarpGroup1": CONSUMERS[2:]}
V_CELLS = [[f"v{s}{h}.{p}" for h in "ab" for p in ("t0", "rest")] for s in range(2)]
O_CELLS = [[f"v0{'ab'[w]}.{p}" for p in ("t0", "rest")] for w in range(2)]


class Model:
    def __init__(self):
        self.n = 0
        self.succ = []
        self.last = {}
        self.signals = {}      # name -> [(actor, node)]
        self.waits = []        # (node, name, actors that must arrive)
        self.gen = {}          # (actor, barrier) -> generation of its next arrive / sync
        self.accesses = []

    def node(self, actor=None):
        self.succ.append([])
        n, self.n = self.n, self.n + 1
        if actor is not None:
            if actor in self.last:
                self.succ[self.last[actor]].append(n)
            self.last[actor] = n
        return n

    def signal(self, actor, name, node=None):
        self.signals.setdefault(name, []).append((actor, self.node(actor) if node is None else node))

    def wait(self, actor, name, by):
        self.waits.append((self.node(actor), name, by))

    def bar_name(self, actor, bar):
        g = self.gen.get((actor, bar), 0)
        self.gen[actor, bar] = g + 1
        return f"{bar}#{g}"

    def arrive(self, actor, bar):         # bar.arrive
        self.signal(actor, self.bar_name(actor, bar))

    def sync(self, actor, bar):           # bar.sync: arrive, then wait for every participant
        name = self.bar_name(actor, bar)
        self.signal(actor, name)
        self.wait(actor, name, PARTICIPANTS[bar])

    def access(self, actor, what, kind, cells, content, label):
        a = {"what": what, "kind": kind, "cells": set(cells), "content": content,
             "label": label, "begin": self.node(actor)}
        a["end"] = a["begin"]
        self.accesses.append(a)
        return a

    def end(self, actor, a):              # wgmma.wait_group: the access is over
        a["end"] = self.node(actor)

    def tma(self, actor, what, kind, cells, content, label, done):
        a = self.access(actor, what, kind, cells, content, label)
        a["end"] = self.node()            # completion, asynchronous to the issuing thread
        self.succ[a["begin"]].append(a["end"])
        self.signal(TMA, done, node=a["end"])
        return a


def build(tiles, o_by_tma, drop=()):
    """tiles: key blocks per tile. drop: barriers left out (or "tma_store_wait"), "start
    arrives" (the consumers' arrive on kQueryEmpty and kOEmpty before the first tile), or
    "early kQueryEmpty" (consumers arrive before their last S GEMM is waited for)."""
    m = Model()
    skip = lambda bar: bar in drop or (bar.startswith("kWarpGroup") and "kWarpGroup" in drop)
    arrive = lambda a, bar: None if skip(bar) else m.arrive(a, bar)
    sync = lambda a, bar: None if skip(bar) else m.sync(a, bar)
    stage = lambda i: (i % 2, i // 2)     # K[n] and V[n] share the pipeline index i

    i0 = 0                                # MainloopFwdSm90::load, thread 0 and its warp
    for t, nb in enumerate(tiles):
        def load(kind, j):
            s, u = stage(i0 + j)
            if u:
                m.wait("P", f"{kind}empty{s}#{u - 1}", CONSUMERS)   # producer_acquire
            cells = [f"k{s}"] if kind == "K" else V_CELLS[s]
            m.tma("P", f"{kind} load", "w", cells, f"{kind}{t}.{j}", f"{kind} load t{t}.{j}",
                  f"{kind}full{s}#{u}")
        load("K", 0)
        sync("P", "kQueryEmpty")
        m.tma("P", "Q load", "w", ["q0", "q1"], f"Q{t}", f"Q load t{t}", f"Qfull#{t}")
        for j in range(nb - 1):
            load("K", j + 1)
            if j == 0:
                sync("P", "kOEmpty")
            load("V", j)
        if nb == 1:
            sync("P", "kOEmpty")
        load("V", nb - 1)
        i0 += nb

    # FlashAttnFwdSm90's consumer branch: MainloopFwdSm90::mma, then EpilogueFwdSm90::store.
    for w in range(2):
        for part in ("t0", "rest"):
            a = f"C{w}.{part}"
            if "start arrives" not in drop:
                arrive(a, "kQueryEmpty")   # the first Q may load
                arrive(a, "kOEmpty")       # and the first V
            i0 = 0
            for t, nb in enumerate(tiles):
                m.wait(a, f"Qfull#{t}", [TMA])
                lab = f"t{t} wg{w}.{part}"

                def s_gemm(j):
                    s, u = stage(i0 + j)
                    m.wait(a, f"Kfull{s}#{u}", [TMA])
                    x = m.access(a, "S GEMM", "r", [f"q{w}"], f"Q{t}", f"S GEMM {lab}")
                    y = m.access(a, "S GEMM", "r", [f"k{s}"], f"K{t}.{j}", f"S GEMM {lab}")
                    if "early kQueryEmpty" in drop and j == nb - 1:
                        arrive(a, "kQueryEmpty")
                    return x, y

                def s_done(xy, j):
                    for acc in xy:
                        m.end(a, acc)
                    m.signal(a, f"Kempty{stage(i0 + j)[0]}#{stage(i0 + j)[1]}")

                def pv(j):
                    s, u = stage(i0 + j)
                    m.wait(a, f"Vfull{s}#{u}", [TMA])
                    return m.access(a, "P V", "r", V_CELLS[s], f"V{t}.{j}", f"P V {lab}.{j}")

                def pv_done(acc, j):
                    m.end(a, acc)
                    m.signal(a, f"Vempty{stage(i0 + j)[0]}#{stage(i0 + j)[1]}")

                xy = s_gemm(0)
                s_done(xy, 0)
                for j in range(1, nb):
                    xy = s_gemm(j)
                    o = pv(j - 1)
                    s_done(xy, j)          # warpgroup_wait<1>
                    pv_done(o, j - 1)      # warpgroup_wait<0>
                if "early kQueryEmpty" not in drop:
                    arrive(a, "kQueryEmpty")
                o = pv(nb - 1)
                pv_done(o, nb - 1)
                # Epilogue.
                sync(a, "kEpilogue")
                m.access(a, "O stmatrix", "w", [f"v0{'ab'[w]}.{part}"], f"O{t}.{w}", f"O stmatrix {lab}")
                sync(a, f"kWarpGroup{w}")
                if o_by_tma:
                    if part == "t0":
                        m.tma(a, "O TMA store", "r", O_CELLS[w], f"O{t}.{w}", f"O TMA store t{t} wg{w}",
                              f"Ostore{t}.{w}")
                        if "tma_store_wait" not in drop:
                            m.wait(a, f"Ostore{t}.{w}", [TMA])
                else:
                    m.access(a, "O vector loads", "r", O_CELLS[w], f"O{t}.{w}", f"O vector loads {lab}")
                arrive(a, "kOEmpty")
                i0 += nb
    return m


def check(m):
    """Returns (deadlocks, hazards as {what, what} sets, details)."""
    deadlocks = []
    for node, name, by in m.waits:
        if not set(by) <= {actor for actor, _ in m.signals.get(name, [])}:
            deadlocks.append(name)
        for _, s in m.signals.get(name, []):
            if s != node:
                m.succ[s].append(node)
    indeg = [0] * m.n
    for s in m.succ:
        for d in s:
            indeg[d] += 1
    order = [x for x in range(m.n) if indeg[x] == 0]
    for x in order:
        for d in m.succ[x]:
            indeg[d] -= 1
            if indeg[d] == 0:
                order.append(d)
    if len(order) != m.n:
        deadlocks.append("cycle")
        return deadlocks, set(), []
    reach = [0] * m.n
    for x in reversed(order):
        r = 1 << x
        for d in m.succ[x]:
            r |= reach[d]
        reach[x] = r
    hb = lambda x, y: (reach[x] >> y) & 1
    kinds, details = set(), []
    acc = m.accesses
    for i, a in enumerate(acc):
        for b in acc[i + 1:]:
            if "w" not in (a["kind"], b["kind"]) or not a["cells"] & b["cells"]:
                continue
            if not (hb(a["end"], b["begin"]) or hb(b["end"], a["begin"])):
                kinds.add(frozenset((a["what"], b["what"])))
                details.append(f"{a['label']} / {b['label']}")
    if not details:                       # every read sees the write it expects
        for r in acc:
            for c in r["cells"] if r["kind"] == "r" else ():
                before = [w for w in acc
                          if w["kind"] == "w" and c in w["cells"] and hb(w["end"], r["begin"])]
                latest = [w for w in before
                          if not any(hb(w["end"], v["begin"]) for v in before if v is not w)]
                if [w["content"] for w in latest] != [r["content"]]:
                    details.append(f"{r['label']} reads {[w['content'] for w in latest]} in {c}")
    return deadlocks, kinds, details


TILES = [3, 2, 1, 2]   # key blocks per tile: the last V of tiles 0 and 1 lands in stage 0
for tma_store in (True, False):
    dl, kinds, details = check(build(TILES, tma_store))
    assert dl == [] and kinds == set() and details == [], (tma_store, dl, details[:5])

def hazards(drop, tma_store=True):
    dl, kinds, details = check(build(TILES, tma_store, drop))
    assert dl == [], (drop, dl)
    return kinds

pair = lambda a, b: frozenset((a, b))
# No kQueryEmpty: the next tile's Q lands under a warpgroup's last S GEMM (WAR on smem_q).
assert pair("Q load", "S GEMM") in hazards({"kQueryEmpty"})
# Arriving before the last S GEMM is waited for (before the loop's last wait_group<1>): the same.
assert pair("Q load", "S GEMM") in hazards({"early kQueryEmpty"})
# No kOEmpty: the next tile's V overwrites the staged O before it is stored (either store path).
assert pair("V load", "O TMA store") in hazards({"kOEmpty"})
assert pair("V load", "O vector loads") in hazards({"kOEmpty"}, tma_store=False)
# No tma_store_wait<0> before arriving on kOEmpty: the same, against the TMA engine's read.
assert pair("V load", "O TMA store") in hazards({"tma_store_wait"})
# No kEpilogue: one warpgroup stages its O over the V block another's last P V still reads.
assert pair("O stmatrix", "P V") in hazards({"kEpilogue"})
# No kWarpGroup: thread 0's TMA store (or a thread's row loads) reads O other threads have not
# written yet.
assert pair("O stmatrix", "O TMA store") in hazards({"kWarpGroup"})
assert pair("O stmatrix", "O vector loads") in hazards({"kWarpGroup"}, tma_store=False)
# Without the arrivals at start, the producer's first waits pair with the consumers' arrivals
# of the first tile, which need its Q: a deadlock (a cycle in the model).
assert check(build(TILES, True, {"start arrives"}))[0] == ["cycle"]
print("ex09 5: the tile boundary is hazard free; kQueryEmpty (and its place), kOEmpty, "
      "tma_store_wait, kEpilogue and kWarpGroup are each needed")


# ---- 6. Tile scheduling: CTAs take tiles from a counter ------------------------------------
# src/sm90/: CTA c runs tile c first, then the producer warp takes each next tile from a
# per-launch counter right after issuing a tile's Q, and hands the index to the consumer
# warpgroups through a double-buffered shared-memory slot guarded by mbarriers. First the source,
# then (a) why a counter: a cost model of the causal tile order, and (b) why the handoff is built
# the way it is: a model of the producer and the consumers over random interleavings.

kernel_src = (ROOT / "src/sm90/kernel_fwd_sm90.cuh").read_text()
mainloop_src = (ROOT / "src/sm90/mainloop_fwd_sm90.cuh").read_text()
launch_src = (ROOT / "src/sm90/launch_fwd_sm90.cuh").read_text()
sched = (ROOT / "src/sm90/tile_scheduler_sm90.h").read_text()
for s in ["if (leader) v = atomicAdd(args.tile_counter, 1);",               # the take
          "next = __shfl_sync(0xffffffffu, v, 0) + int(gridDim.x);",        # tile = G + counter
          "storage.pipelines.tile_empty[slot].wait(((k >> 1) & 1) ^ 1);",   # producer: slot free
          "storage.pipelines.tile_slot[slot] = next;",
          "storage.pipelines.tile_full[slot].arrive();",
          "storage.pipelines.tile_full[slot].wait((k >> 1) & 1);",          # consumers: slot full
          "tile = storage.pipelines.tile_slot[slot];",
          "storage.pipelines.tile_empty[slot].arrive();",
          "storage.pipelines.tile_full[i].init(1);",                        # the producer's thread 0
          "storage.pipelines.tile_empty[i].init(Traits::kMmaThreads);"]:   # every consumer thread
    assert s in kernel_src, s
assert kernel_src.count("const int slot = k & 1;") == 2               # slot k % 2, both roles
assert kernel_src.count("int tile = blockIdx.x;") == 2                # CTA c starts with tile c
assert "int tile_slot[2];" in mainloop_src
# MainloopFwdSm90::load: the take (after_q) comes after Q is issued, before the V loads.
i_q = mainloop_src.index("TMA::CacheHintSm90::EVICT_FIRST")
i_take = mainloop_src.index("after_q();")
i_v = mainloop_src.index("named_barrier_sync(kOEmpty")
assert i_q < i_take < i_v
assert "cudaMemsetAsync(args.tile_counter, 0, sizeof(int), stream)" in launch_src
assert "tile_of" not in sched and "tile_of" not in kernel_src     # no static assignment left
assert "c.m_block = num_m_blocks - 1 - in_section / heads;" in sched    # coord, masked order
assert "kL2BytesForKV = 32ll << 20;" in launch_src

# (a) Causal, d = 128 (128 x 128 tiles, equal query and key lengths): query block m costs m + 1
# key blocks, a tile's time. heads_per_section as launch_fwd_sm90 computes it (kL2BytesForKV =
# 32 MB), 132 SMs. A schedule takes as long as its busiest CTA.
SMS = 132


def snake(cta, grid, k):                   # the static assignment of an earlier version
    return k * grid + (grid - 1 - cta if k & 1 else cta)


def strided(cta, grid, k):
    return k * grid + cta


def m_block(tile, num_m, total_heads, per_section):   # TileSchedulerSm90::coord
    section, in_section = divmod(tile, per_section * num_m)
    heads = min(total_heads - section * per_section, per_section)
    return num_m - 1 - in_section // heads


def busiest(seqlen, total_heads, order):
    """Key blocks of the busiest CTA, the ideal (total / grid), and heads per section. order: a
    static assignment (cta, grid, k) -> tile, "free" (the next tile to the CTA that finishes a
    tile first) or "counter" (the kernel: CTA c starts with tile c and takes the next tile from
    the counter when it starts a tile)."""
    num_m = seqlen // 128
    per_section = max(1, min(total_heads, (32 << 20) // (2 * seqlen * 128 * 2)))
    tiles = num_m * total_heads
    cost = [m_block(t, num_m, total_heads, per_section) + 1 for t in range(tiles)]
    grid = min(tiles, SMS)
    if order == "free":
        free = [(0, c) for c in range(grid)]
        for c_t in cost:
            load, c = heapq.heappop(free)
            heapq.heappush(free, (load + c_t, c))
        return max(l for l, _ in free), sum(cost) / grid, per_section
    if order == "counter":
        counter, runs, end = 0, [], [0] * grid
        starts = [(0, c, c) for c in range(grid)]        # (start time, CTA, tile)
        while starts:
            t, c, tile = heapq.heappop(starts)
            runs.append(tile)
            end[c] = t + cost[tile]
            nxt = grid + counter                         # atomicAdd(tile_counter, 1) + G
            counter += 1
            if nxt < tiles:
                heapq.heappush(starts, (end[c], c, nxt))
        assert sorted(runs) == list(range(tiles))         # every tile runs exactly once
        assert counter == tiles                           # each CTA took one index past the end
        return max(end), sum(cost) / grid, per_section
    load = [0] * grid
    for c in range(grid):
        k = 0
        while order(c, grid, k) < tiles:
            load[c] += cost[order(c, grid, k)]
            k += 1
    return max(load), sum(cost) / grid, per_section


ORDERS = (("snake", snake), ("strided", strided), ("free", "free"), ("counter", "counter"))
CASES = {(2048, 32): (32, 34, 40, 34, 34, 33),       # heads per section, busiest CTA per order,
         (8192, 64): (8, 1247, 1040, 1009, 1017, 1008),   # ideal
         (16384, 16): (4, 1303, 1160, 1003, 1011, 1001)}
model = {}
for (seqlen, heads), want in CASES.items():
    r = {name: busiest(seqlen, heads, o) for name, o in ORDERS}
    got = (r["snake"][2],) + tuple(r[name][0] for name, _ in ORDERS) + (round(r["snake"][1]),)
    assert got == want, (seqlen, heads, got)
    model[seqlen, heads] = got
# One section (2048 keys): the cost falls over the whole run and the snake matches list
# scheduling. Several sections: the cost jumps back to the longest at each section start, and the
# snake gives the tiles on both sides of a wave boundary to the same CTAs (CTA 0 ends every odd
# wave and starts every even one), section after section: worse than striding. List scheduling
# stays within a tile of the ideal; taking the next tile a tile early (the counter) costs little.
for (seqlen, heads), (_, sn, st, fr, co, ideal) in model.items():
    assert fr - ideal <= seqlen // 128 and co - ideal <= 2 * (seqlen // 128)
    assert co <= st and co <= sn
assert model[8192, 64][1] > model[8192, 64][2] and model[16384, 16][1] > 1.25 * model[16384, 16][5]


# (b) The handoff. One CTA of the d = 128 kernel (grid 1, so the counter hands it every tile
# after tile 0): the producer ("P", its thread 0 and warp as one actor) and two consumer
# warpgroups ("C0", "C1", one actor each), with the barriers that couple them across tiles:
# kQueryEmpty and kOEmpty (named), Q's transaction barrier and, standing for the V pipeline, one
# "last V landed" mbarrier per tile (the consumers' epilogue needs the tile's last V, which loads
# after kOEmpty). A tile without keys loads nothing: the producer only takes the next index, the
# consumers store zeros. A random scheduler runs one enabled actor at a time.
class MBar:                      # mbarrier: pending arrivals and a phase bit
    def __init__(self, count):
        self.count, self.pending, self.parity = count, count, 0

    def arrive(self):
        self.pending -= 1
        if self.pending == 0:
            self.parity ^= 1
            self.pending = self.count

    def done(self, parity):      # try_wait.parity: the phase of this parity has completed
        return self.parity != parity


class NBar:                      # named barrier: one count of arrivals, no phase
    def __init__(self, count):
        self.count, self.arrived, self.gen = count, 0, 0

    def arrive(self):            # bar.arrive; bar.sync is arrive, then wait for the completion
        g = self.gen
        self.arrived += 1
        if self.arrived == self.count:
            self.gen += 1
            self.arrived = 0
        return g

    def done(self, g):
        return self.gen > g


HANDOFFS = ("kernel", "no tile_empty", "one named barrier", "named barriers, one slot")


def handoff(variant, keys, rng):
    """Returns (outcome, producer's largest lead in indices, producer blocked on the slot)."""
    T = len(keys)
    st = {"slot": [None, None], "writes": 0, "reads": [0, 0], "lead": 0, "blocked": 0}
    b = {"QE": NBar(3), "OE": NBar(3), "Q": MBar(1), "V": MBar(1), "F": NBar(3), "E": NBar(3),
         "full": [MBar(1), MBar(1)], "empty": [MBar(2), MBar(2)]}
    mbar = variant in ("kernel", "no tile_empty")

    def put(k, s, nxt):
        st["slot"][s] = (k, nxt)
        st["writes"] += 1
        st["lead"] = max(st["lead"], st["writes"] - min(st["reads"]))

    def take_next(k):            # FlashAttnFwdSm90's take_next, on P
        nxt = k + 1              # grid 1: atomicAdd(tile_counter, 1) + 1 is the next tile
        yield None
        if mbar:
            s = k & 1
            if variant == "kernel":
                wait = (b["empty"][s], ((k >> 1) & 1) ^ 1)
                st["blocked"] += not wait[0].done(wait[1])
                yield wait
            put(k, s, nxt)
            yield None
            b["full"][s].arrive()
        else:                    # E / F used like kQueryEmpty: sync before writing, arrive after
            s = k & 1 if variant == "one named barrier" else 0
            if variant != "one named barrier" or k >= 2:  # two slots: the first two are free
                g = b["E"].arrive()
                st["blocked"] += not b["E"].done(g)
                yield (b["E"], g)
            put(k, s, nxt)
            yield None
            b["F"].arrive()
        return nxt

    def producer():
        tile, k = 0, 0
        while tile < T:
            if keys[tile]:
                g = b["QE"].arrive()
                yield (b["QE"], g)                         # wait kQueryEmpty
                b["Q"].arrive()                            # Q
                nxt = yield from take_next(k)              # after_q
                g = b["OE"].arrive()
                yield (b["OE"], g)                         # wait kOEmpty
                b["V"].arrive()                            # the tile's V
            else:
                nxt = yield from take_next(k)
            tile, k = nxt, k + 1

    def consumer(w):
        b["QE"].arrive()                                   # the first Q may load
        b["OE"].arrive()                                   # and the first V
        if variant == "named barriers, one slot":
            b["E"].arrive()                                # and the first index be written
        yield None
        tile, k, q_phase, v_phase, seen = 0, 0, 0, 0, []
        while tile < T:
            seen.append(tile)
            if keys[tile]:
                yield (b["Q"], q_phase)
                q_phase ^= 1
                b["QE"].arrive()                           # last S GEMM done
                yield None
                yield (b["V"], v_phase)
                v_phase ^= 1
                b["OE"].arrive()                           # O stored
                yield None
            if mbar:
                s = k & 1
                yield (b["full"][s], (k >> 1) & 1)
            else:
                s = k & 1 if variant == "one named barrier" else 0
                g = b["F"].arrive()
                yield (b["F"], g)
            got = st["slot"][s]
            st["reads"][w] += 1
            if got is None or got[0] != k:                 # a stale or overwritten slot
                return None
            tile = got[1]
            if mbar:
                b["empty"][s].arrive()
            else:
                b["E"].arrive()
            k += 1
            yield None
        return seen

    actors = {"P": producer(), "C0": consumer(0), "C1": consumer(1)}
    waiting = dict.fromkeys(actors)
    seen = {}
    while actors:
        ready = [a for a in actors if waiting[a] is None or waiting[a][0].done(waiting[a][1])]
        if not ready:
            return "deadlock", st["lead"], st["blocked"]
        a = rng.choice(ready)
        try:
            waiting[a] = next(actors[a])
        except StopIteration as stop:
            seen[a] = stop.value
            del actors[a]
    ok = seen["C0"] == seen["C1"] == list(range(T))
    return ("ok" if ok else "wrong tiles"), st["lead"], st["blocked"]


rng = random.Random(9)
outcomes = {}
for variant in HANDOFFS:
    for keyed in ("all keyed", "some keyless"):
        res = [handoff(variant, [True] * 8 if keyed == "all keyed" else
                       [rng.random() < 0.5 for _ in range(8)], rng) for _ in range(300)]
        outcomes[variant, keyed] = ({o for o, _, _ in res}, max(l for _, l, _ in res),
                                    sum(bl > 0 for _, _, bl in res))
# The kernel: every warpgroup runs every tile, in every interleaving; the producer is at times two
# indices ahead of the consumers (both slots in use). With keyed tiles only, kQueryEmpty keeps it
# there and the wait on tile_empty never blocks; across tiles without keys it does.
assert outcomes["kernel", "all keyed"] == ({"ok"}, 2, 0)
assert outcomes["kernel", "some keyless"][:2] == ({"ok"}, 2)
assert outcomes["kernel", "some keyless"][2] > 0
# Without tile_empty: fine while kQueryEmpty bounds the producer, wrong once keyless tiles let it
# run on and overwrite a slot not read yet.
assert outcomes["no tile_empty", "all keyed"][0] == {"ok"}
assert "wrong tiles" in outcomes["no tile_empty", "some keyless"][0]
assert outcomes["no tile_empty", "some keyless"][1] > 2
# One named barrier per direction (two slots): the producer's arrival for the next index counts
# toward the completion meant for the previous one, and the CTA deadlocks (in all but the few
# interleavings where the producer happens not to run ahead).
assert "deadlock" in outcomes["one named barrier", "all keyed"][0]
assert "deadlock" in outcomes["one named barrier", "some keyless"][0]
# Named barriers kept alternating (one slot, the consumers arrive once at start): correct, but the
# producer never gets ahead by more than one index.
assert outcomes["named barriers, one slot", "all keyed"][:2] == ({"ok"}, 1)
assert outcomes["named barriers, one slot", "some keyless"][:2] == ({"ok"}, 1)

print("ex09 6: busiest CTA in key blocks (snake / strided / first free / counter / ideal): " +
      "; ".join(f"{s} keys x {h} heads {' / '.join(map(str, v[1:]))}" for (s, h), v in model.items()) +
      "; handoff: kernel always right, 2 indices ahead at most; " +
      ", ".join(f"{v} {'/'.join(sorted(outcomes[v, 'some keyless'][0]))}" for v in HANDOFFS[1:]))
