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
6. The persistent tile order (src/sm90/tile_scheduler_sm90.h, tile_of): per-CTA work of the snake
   against plain striding and a dynamic scheduler, for causal tiles in longest-first order.
"""
import heapq
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


# ---- 6. The persistent tile order: the snake of TileSchedulerSm90::tile_of -------------------
# Causal, d = 128 (128 x 128 tiles, equal query and key lengths): query block m costs m + 1 key
# blocks. The model mirrors src/sm90/tile_scheduler_sm90.h (checked below against the source) and
# src/sm90/launch_fwd_sm90.cuh (heads_per_section from kL2BytesForKV = 32 MB, 132 SMs). A static
# persistent schedule takes as long as its busiest CTA: the sum of its tiles' key blocks.

sched = (ROOT / "src/sm90/tile_scheduler_sm90.h").read_text()
assert "return k * grid + ((k & 1) ? grid - 1 - cta : cta);" in sched   # tile_of
assert "c.m_block = num_m_blocks - 1 - in_section / heads;" in sched    # coord, masked order
assert "kL2BytesForKV = 32ll << 20;" in (ROOT / "src/sm90/launch_fwd_sm90.cuh").read_text()
SMS = 132


def tile_of(cta, grid, k):
    return k * grid + (grid - 1 - cta if k & 1 else cta)


def strided(cta, grid, k):                 # the order before the snake
    return k * grid + cta


def m_block(tile, num_m, total_heads, per_section):   # TileSchedulerSm90::coord
    section, in_section = divmod(tile, per_section * num_m)
    heads = min(total_heads - section * per_section, per_section)
    return num_m - 1 - in_section // heads


def busiest(seqlen, total_heads, order=None):
    """Key blocks of the busiest CTA (order None: a dynamic scheduler handing the next tile to
    the first free CTA), the ideal (total / grid), and heads per section."""
    num_m = seqlen // 128
    per_section = max(1, min(total_heads, (32 << 20) // (2 * seqlen * 128 * 2)))
    tiles = num_m * total_heads
    cost = [m_block(t, num_m, total_heads, per_section) + 1 for t in range(tiles)]
    grid = min(tiles, SMS)
    if order is None:
        free = [(0, c) for c in range(grid)]
        for c_t in cost:
            load, c = heapq.heappop(free)
            heapq.heappush(free, (load + c_t, c))
        return max(l for l, _ in free), sum(cost) / grid, per_section
    load = [0] * grid
    for c in range(grid):
        k = 0
        while order(c, grid, k) < tiles:
            load[c] += cost[order(c, grid, k)]
            k += 1
    return max(load), sum(cost) / grid, per_section


for tiles in (1, 7, 132, 133, 264, 1000):  # every tile runs once (test_route.cpp checks the same)
    for grid in (1, 5, 132):
        if grid <= tiles:
            runs = sorted(t for c in range(grid) for t in (tile_of(c, grid, k) for k in range(tiles))
                          if t < tiles)
            assert runs == list(range(tiles))

# One L2 section (2048 keys, 32 heads): the cost falls monotonically over the run, and the snake
# cancels the spread of every wave against the next.
ORDERS = (("snake", tile_of), ("strided", strided), ("dynamic", None))
one = {o: busiest(2048, 32, f) for o, f in ORDERS}
assert one["snake"][2] == 32                             # all 32 heads in one section
assert (one["snake"][0], one["strided"][0], one["dynamic"][0]) == (34, 40, 34)
assert round(one["snake"][1]) == 33
# Several sections (8192 keys, 64 heads, 8 heads per section of 512 tiles, about 3.9 waves): the
# cost jumps back to the longest at every section start, and the snake gives the tiles on both
# sides of a wave boundary to the same CTAs: CTA 0 gets the first tile of a section both at an
# even wave's start and at an odd wave's end, section after section.
many = {o: busiest(8192, 64, f) for o, f in ORDERS}
assert many["snake"][2] == 8
assert (many["snake"][0], many["strided"][0], many["dynamic"][0]) == (1247, 1040, 1009)
assert round(many["snake"][1]) == 1008
print(f"ex09 6: busiest CTA in key blocks (snake / strided / dynamic / ideal): "
      f"2048 keys x 32 heads {one['snake'][0]} / {one['strided'][0]} / {one['dynamic'][0]} / "
      f"{one['snake'][1]:.0f}; 8192 keys x 64 heads {many['snake'][0]} / {many['strided'][0]} / "
      f"{many['dynamic'][0]} / {many['snake'][1]:.0f}")
