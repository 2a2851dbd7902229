#!/usr/bin/env python3
"""Exercise 7 (docs/learn/07-features.md): split-KV, paged KV, score mods, rotary and dropout.

Each block below re-derives one feature's rule as the page states it and checks the property
the implementation relies on. Plain Python.
"""
import math
import random

random.seed(7)


def softmax_out(scores, values):
    """Returns (o, lse) of one row over the given scores (all visible)."""
    if not scores:
        return [0.0] * len(values[0]) if values else [], -math.inf
    m = max(scores)
    w = [math.exp(s - m) for s in scores]
    l = sum(w)
    d = len(values[0])
    return [sum(wj * v[x] for wj, v in zip(w, values)) / l for x in range(d)], m + math.log(l)


# ---- Split-KV: the kernel's chunking and the exact LSE merge --------------------------------
# kernel_fwd_sm80.cuh: split s takes per_split = ceil(blocks / num_splits) key blocks starting
# at n_block_min + s * per_split; trailing splits may be empty (LSE_s = -inf).
def split_ranges(n_block_min, n_block_max, num_splits):
    per = (n_block_max - n_block_min + num_splits - 1) // num_splits
    out = []
    for s in range(num_splits):
        lo = n_block_min + s * per
        out.append((lo, min(n_block_max, lo + per)))
    return out


assert split_ranges(0, 8, 3) == [(0, 3), (3, 6), (6, 8)]
assert split_ranges(0, 4, 3)[2] == (4, 4)          # 4 blocks, 3 splits: the last is empty

block_n, d = 4, 3
scores = [random.uniform(-4, 4) for _ in range(8 * block_n)]
values = [[random.uniform(-1, 1) for _ in range(d)] for _ in scores]
for num_splits in (1, 2, 3, 5, 8, 11):
    parts = []
    for lo, hi in split_ranges(0, 8, num_splits):
        js = range(lo * block_n, max(lo, hi) * block_n)
        parts.append(softmax_out([scores[j] for j in js], [values[j] for j in js]))
    # combine.cu / lse_merge.h: lse = log sum_s exp(lse_s), o = sum_s exp(lse_s - lse) o_s;
    # empty splits (-inf) weigh exactly 0.
    finite = [lse for _, lse in parts if lse != -math.inf]
    mx = max(finite)
    lse = mx + math.log(sum(math.exp(x - mx) for x in finite))
    o = [sum(math.exp(ls - lse) * os[x] for os, ls in parts if ls != -math.inf) for x in range(d)]
    o_ref, lse_ref = softmax_out(scores, values)
    assert abs(lse - lse_ref) < 1e-12 and max(abs(a - b) for a, b in zip(o, o_ref)) < 1e-12

# ---- Paged KV: block_table[b][t / page] and row t % page address the same keys -----------
page, n_keys, num_blocks = 3, 17, 12
keys = [[random.random() for _ in range(d)] for _ in range(n_keys)]
pool = [[None] * page for _ in range(num_blocks)]        # [num_blocks, page_size, d]
table = random.sample(range(num_blocks), (n_keys + page - 1) // page)
for t, k in enumerate(keys):
    pool[table[t // page]][t % page] = k                 # PagedKV::offset in src/common/paged_kv.h
assert all(pool[table[t // page]][t % page] == keys[t] for t in range(n_keys))


# The kernel divides by the page size with a multiply-high and a shift (page_divmod in
# mainloop_fwd_sm80.cuh): L = ceil(log2(page)), mul = ceil(2^(31 + L) / page), shift = L - 1.
def fast_div(t, page_size):
    if page_size == 1:
        return t
    L = (page_size - 1).bit_length()
    mul = (2 ** (31 + L) + page_size - 1) // page_size
    return ((t * mul) >> 32) >> (L - 1)


for page_size in (1, 2, 3, 5, 16, 100, 256, 1000):
    for t in list(range(2000)) + [2 ** 31 - 1, 2 ** 31 - 2, 123456789]:
        assert fast_div(t, page_size) == t // page_size, (page_size, t)

# ---- Score modifiers in "t units" (online_softmax.cuh, score_mod_tile.cuh) ---------------
# Reference order (score_mod.h): s = scale q.k; s = cap tanh(s / cap); s -= slope |i + off - j|.
# The kernel keeps t with s = t * unit: unit = cap, t = tanh(q.k * (scale / cap)), and ALiBi is
# added in t units as alibi_coef = -slope / unit. Same s, one multiply by unit folded into exp2.
scale, cap, slope, off = 0.125, 30.0, 0.0625, 5
for qk, i, j in [(40.0, 3, 1), (-12.5, 0, 7), (250.0, 9, 9)]:
    s_ref = cap * math.tanh(scale * qk / cap) - slope * abs(i + off - j)
    unit = cap
    t = math.tanh(qk * (scale / cap)) + (-slope / unit) * abs(i + off - j)
    assert abs(t * unit - s_ref) < 1e-12
# The softcap's chain rule, used by the backward (ScoreMod::dscore): ds / d(scale q.k) = 1 - tanh^2.
x, eps = 7.0, 1e-6
num = (cap * math.tanh((x + eps) / cap) - cap * math.tanh((x - eps) / cap)) / (2 * eps)
assert abs(num - (1 - math.tanh(x / cap) ** 2)) < 1e-8


# ---- Rotary: a rotation per pair, and scores depend on relative positions only ------------
def rotate(v, pos, interleaved, theta=10000.0):
    half = len(v) // 2
    out = list(v)
    for k in range(half):
        ang = pos * theta ** (-2 * k / len(v))
        c, s = math.cos(ang), math.sin(ang)
        a, b = (2 * k, 2 * k + 1) if interleaved else (k, k + half)   # GPT-J / GPT-NeoX pairs
        out[a], out[b] = v[a] * c - v[b] * s, v[a] * s + v[b] * c
    return out


q = [random.gauss(0, 1) for _ in range(8)]
k = [random.gauss(0, 1) for _ in range(8)]
for inter in (True, False):
    def dot(p_q, p_k):
        return sum(a * b for a, b in zip(rotate(q, p_q, inter), rotate(k, p_k, inter)))
    assert abs(dot(10, 3) - dot(107, 100)) < 1e-9            # only p_q - p_k matters
    assert abs(sum(x * x for x in rotate(q, 5, inter)) - sum(x * x for x in q)) < 1e-12


# ---- Dropout: Philox-4x32-10 and the documented counter layout (src/common/philox.h) ------
M32 = 0xFFFFFFFF


def philox4x32_10(ctr, key):
    c, (k0, k1) = list(ctr), key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & M32, (p0 >> 32) ^ c[3] ^ k1, p0 & M32]
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c


# Random123's known answer (tests/cpp/cpu/test_common.cpp checks the C++ the same way).
assert philox4x32_10([0, 0, 0, 0], (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def keep(seed, offset, bh, i, j, p):
    """Keep (query row i, key j) of (batch, head) bh = bidb * h + bidh? (DropoutRng::keep)"""
    c23 = offset + bh
    words = philox4x32_10([j // 4, i, c23 & M32, c23 >> 32], (seed & M32, seed >> 32))
    threshold = min(M32, int((1.0 - p) * 2 ** 32))
    return words[j % 4] < threshold


seed, offset, p = 0x1234_5678_9ABC, 0, 0.2
mask = [[keep(seed, offset, 3, i, j, p) for j in range(64)] for i in range(64)]
kept = sum(map(sum, mask)) / 64 ** 2
assert abs(kept - (1 - p)) < 6 * math.sqrt(p * (1 - p) / 64 ** 2)   # within 6 sigma
# The same (seed, offset, position) always gives the same bit: the backward regenerates the
# forward's mask instead of storing it, and the CPU reference can check the GPU's.
assert mask[10][17] == keep(seed, offset, 3, 10, 17, p)
# Kept probabilities are scaled by 1 / (1 - p), so the expected output is unchanged.
assert abs(kept / (1 - p) - 1) < 0.05

print("ex07: split-KV merge, paged addressing, score mods, rotary and dropout check out")
