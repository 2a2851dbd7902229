#!/usr/bin/env python3
"""Exercise 2 (docs/learn/02-online-softmax.md): the online softmax, step by step.

Reproduces the worked example of the page (the numbers there are asserted here), then checks
the identities the GPU kernel relies on: exp2 with the scale folded in, the -inf baseline
(Check_inf), the skipped rescale, and the LSE merge of two halves.
"""
import math
import random

LOG2E = 1.0 / math.log(2.0)

# ---- The worked example: one query row, 6 keys, blocks of 2 keys, d = 1 -------------------
s = [2.0, 1.0, 0.5, 3.0, -1.0, 2.5]   # scores, already scaled
v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]    # one value per key (d = 1)
expected = [  # after block t: (m_t, alpha = exp(m_{t-1} - m_t), l_t, O_t), from the page
    (2.0, 0.0, 1.367879, 1.735759),
    (3.0, 0.367879, 1.585300, 4.884805),
    (3.0, 1.0, 2.210146, 8.615567),
]

m, l, o = -math.inf, 0.0, 0.0
for t in range(3):
    blk = range(2 * t, 2 * t + 2)
    m_new = max(m, max(s[j] for j in blk))
    alpha = 0.0 if m == -math.inf else math.exp(m - m_new)   # rescale of what came before
    p = [math.exp(s[j] - m_new) for j in blk]
    l = alpha * l + sum(p)
    o = alpha * o + sum(pj * v[j] for pj, j in zip(p, blk))
    m = m_new
    em, ea, el, eo = expected[t]
    assert m == em and abs(alpha - ea) < 1e-6 and abs(l - el) < 1e-6 and abs(o - eo) < 1e-6, (t, m, alpha, l, o)

out, lse = o / l, m + math.log(l)
z = sum(math.exp(x) for x in s)
assert abs(out - sum(math.exp(x) * y for x, y in zip(s, v)) / z) < 1e-12   # exact, not approximate
assert abs(lse - math.log(z)) < 1e-12
assert abs(out - 3.898189) < 1e-6 and abs(lse - 3.793059) < 1e-6            # the page's values

# ---- exp2 with the scale folded in (common/online_softmax.cuh) -----------------------------
# Kernel scores stay raw (t = q.k); p = exp(scale * (t - m_t)) is computed as
# exp2(t * unit_log2 - m_t * unit_log2) with unit_log2 = scale * log2(e): one FFMA + one EX2.
scale = 1 / math.sqrt(64)
unit_log2 = scale * LOG2E
for t_raw, m_t in [(3.7, 5.1), (-2.0, 0.5), (12.25, 12.25)]:
    assert abs(math.exp(scale * (t_raw - m_t)) - 2.0 ** (t_raw * unit_log2 - m_t * unit_log2)) < 1e-14
# The max can be taken over raw t because scale > 0 keeps the order (a negative scale without
# softcap is refused on the GPU for exactly this reason).

# ---- Check_inf: a row whose every key so far is masked ------------------------------------
neg = -math.inf
m_row = max([neg, neg])                   # all masked: the running max is -inf
assert math.isnan(neg - m_row)           # -inf - (-inf) = NaN: exp of it would poison O
baseline = 0.0 if m_row == neg else m_row  # the kernel's rule: use 0 as the reference
assert math.exp(neg - baseline) == 0.0     # masked scores become exact zeros, no NaN

# ---- Skipping the rescale ------------------------------------------------------------------
# If the block's max does not beat the running max, alpha = exp(0) = 1 exactly: the kernel may
# skip the O *= alpha multiply (rescale_o_if). Block 3 above is such a block.
assert expected[2][1] == 1.0

# ---- Two halves merge by their LSEs (split-KV, lse_merge.h) --------------------------------
random.seed(2)
scores = [random.uniform(-5, 5) for _ in range(10)]
vals = [random.uniform(-1, 1) for _ in range(10)]


def part(js):
    m_ = max(scores[j] for j in js)
    l_ = sum(math.exp(scores[j] - m_) for j in js)
    return sum(math.exp(scores[j] - m_) * vals[j] for j in js) / l_, m_ + math.log(l_)


o1, lse1 = part(range(0, 4))
o2, lse2 = part(range(4, 10))
lse12 = max(lse1, lse2) + math.log(math.exp(lse1 - max(lse1, lse2)) + math.exp(lse2 - max(lse1, lse2)))
o12 = math.exp(lse1 - lse12) * o1 + math.exp(lse2 - lse12) * o2
o_all, lse_all = part(range(10))
assert abs(o12 - o_all) < 1e-12 and abs(lse12 - lse_all) < 1e-12

print(f"ex02: online softmax reproduces the worked example: O = {out:.6f}, LSE = {lse:.6f}")
