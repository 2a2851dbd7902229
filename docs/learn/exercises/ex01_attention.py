#!/usr/bin/env python3
"""Exercise 1 (docs/learn/01-attention.md): attention, GQA and the bottom-right causal mask.

Plain Python (no numpy: it runs on every machine that runs the checks). Fill in nothing: read
the functions, predict what each assert says, then change a number and watch which one fails.
"""
import math
import random

random.seed(1)


def visible(i, j, s_q, s_k, causal=False, left=-1, right=-1):
    """The rule of src/common/mask.h (VisibilityMask): bottom-right aligned."""
    if causal:
        right = 0
    off = s_k - s_q
    lo = 0 if left < 0 else i + off - left
    hi = s_k - 1 if right < 0 else i + off + right
    return 0 <= j < s_k and lo <= j <= hi


def attention(q, k, v, scale, **mask):
    """One head: q [s_q][d], k/v [s_k][d]. Returns (o, lse); an empty row gives 0 and +inf."""
    s_q, s_k = len(q), len(k)
    o, lse = [], []
    for i in range(s_q):
        keys = [j for j in range(s_k) if visible(i, j, s_q, s_k, **mask)]
        if not keys:
            o.append([0.0] * len(v[0]))
            lse.append(math.inf)
            continue
        s = {j: scale * sum(a * b for a, b in zip(q[i], k[j])) for j in keys}
        m = max(s.values())
        l = sum(math.exp(x - m) for x in s.values())
        o.append([sum(math.exp(s[j] - m) / l * v[j][x] for j in keys) for x in range(len(v[0]))])
        lse.append(m + math.log(l))
    return o, lse


def rand(rows, cols):
    return [[random.gauss(0, 1) for _ in range(cols)] for _ in range(rows)]


def close(a, b, tol=1e-12):
    return all(abs(x - y) <= tol for ra, rb in zip(a, b) for x, y in zip(ra, rb))


d = 4
scale = 1 / math.sqrt(d)

# 1. Causal with s_q = s_k is the lower triangle: row i sees keys 0..i.
for i in range(5):
    assert [j for j in range(5) if visible(i, j, 5, 5, causal=True)] == list(range(i + 1))

# 2. Bottom-right alignment. s_q < s_k (a new chunk after a cache): the LAST query row sees
#    every key, the first sees s_k - s_q + 1 of them.
s_q, s_k = 3, 7
assert all(visible(s_q - 1, j, s_q, s_k, causal=True) for j in range(s_k))
assert sum(visible(0, j, s_q, s_k, causal=True) for j in range(s_k)) == s_k - s_q + 1

# 3. s_q > s_k: the first s_q - s_k rows see no key at all. They output zeros and LSE = +inf
#    (docs/semantics.md), not NaN.
q, k, v = rand(6, d), rand(2, d), rand(2, d)
o, lse = attention(q, k, v, scale, causal=True)
assert lse[:4] == [math.inf] * 4 and all(x == 0.0 for row in o[:4] for x in row)
assert all(math.isfinite(x) for x in lse[4:])

# 4. A sliding window (left, 0) is causal with at most left + 1 keys per row.
for i in range(9):
    n = sum(visible(i, j, 9, 9, left=2, right=0) for j in range(9))
    assert n == min(i + 1, 3)

# 5. GQA: h = 6 query heads share h_k = 2 kv heads; query head i reads kv head i // (h // h_k).
#    That is MHA with each kv head repeated h / h_k times.
h, h_k, s = 6, 2, 5
Q = [rand(s, d) for _ in range(h)]
K = [rand(s, d) for _ in range(h_k)]
V = [rand(s, d) for _ in range(h_k)]
gqa = [attention(Q[i], K[i // (h // h_k)], V[i // (h // h_k)], scale, causal=True)[0]
       for i in range(h)]
K_rep = [K[i // (h // h_k)] for i in range(h)]
V_rep = [V[i // (h // h_k)] for i in range(h)]
mha = [attention(Q[i], K_rep[i], V_rep[i], scale, causal=True)[0] for i in range(h)]
assert all(close(a, b) for a, b in zip(gqa, mha))
# MQA is h_k = 1: every query head reads kv head 0.
assert all(i // (h // 1) == 0 for i in range(h))

# 6. Softmax rows sum to 1: with v = the identity the output row IS the probability row.
s_k = 4
eye = [[1.0 if x == y else 0.0 for x in range(s_k)] for y in range(s_k)]
o, _ = attention(rand(3, d), rand(s_k, d), eye, scale)
assert all(abs(sum(row) - 1.0) < 1e-12 for row in o)

print("ex01: attention, masks and GQA behave as the page says")
