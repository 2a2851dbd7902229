#!/usr/bin/env python3
"""Exercise 8 (docs/learn/08-backward.md): the backward from the softmax Jacobian.

Checks, on a tiny causal problem with softcap, that the formulas the kernels use
    dV = P^T dO,  dP = dO V^T,  D_i = rowsum(dO * O) = sum_j P_ij dP_ij,
    dS = P * (dP - D) * (1 - tanh^2),  dQ = scale dS K,  dK = scale dS^T Q
are the gradients of L = sum(dO * O), against central finite differences. Then shows why
atomics make the dQ sum non-deterministic in fp32, and that a fixed order fixes it.
"""
import math
import random
import struct

random.seed(8)
s_q, s_k, d = 3, 5, 2
scale, cap = 0.7, 2.0
off = s_k - s_q


def vis(i, j):
    return j <= i + off          # causal, bottom-right aligned


def rnd(r, c):
    return [[random.gauss(0, 1) for _ in range(c)] for _ in range(r)]


Q, K, V, dO = rnd(s_q, d), rnd(s_k, d), rnd(s_k, d), rnd(s_q, d)


def forward(Q, K, V):
    """Returns O, P and the raw scaled scores x = scale q.k (before the softcap)."""
    P = [[0.0] * s_k for _ in range(s_q)]
    X = [[0.0] * s_k for _ in range(s_q)]
    for i in range(s_q):
        s = {}
        for j in range(s_k):
            if vis(i, j):
                X[i][j] = scale * sum(a * b for a, b in zip(Q[i], K[j]))
                s[j] = cap * math.tanh(X[i][j] / cap)
        m = max(s.values())
        l = sum(math.exp(x - m) for x in s.values())
        for j in s:
            P[i][j] = math.exp(s[j] - m) / l
    O = [[sum(P[i][j] * V[j][x] for j in range(s_k)) for x in range(d)] for i in range(s_q)]
    return O, P, X


def loss(Q, K, V):
    O, _, _ = forward(Q, K, V)
    return sum(O[i][x] * dO[i][x] for i in range(s_q) for x in range(d))


O, P, X = forward(Q, K, V)
dV = [[sum(P[i][j] * dO[i][x] for i in range(s_q)) for x in range(d)] for j in range(s_k)]
dP = [[sum(dO[i][x] * V[j][x] for x in range(d)) for j in range(s_k)] for i in range(s_q)]
D = [sum(dO[i][x] * O[i][x] for x in range(d)) for i in range(s_q)]
# D_i computed without touching the keys equals sum_j P_ij dP_ij (why the preprocess can do it).
assert all(abs(D[i] - sum(P[i][j] * dP[i][j] for j in range(s_k))) < 1e-12 for i in range(s_q))
dS = [[P[i][j] * (dP[i][j] - D[i]) * (1 - math.tanh(X[i][j] / cap) ** 2) if vis(i, j) else 0.0
       for j in range(s_k)] for i in range(s_q)]
dQ = [[scale * sum(dS[i][j] * K[j][x] for j in range(s_k)) for x in range(d)] for i in range(s_q)]
dK = [[scale * sum(dS[i][j] * Q[i][x] for i in range(s_q)) for x in range(d)] for j in range(s_k)]


def numeric(which, r, c, eps=1e-6):
    def bump(delta):
        M = {"Q": Q, "K": K, "V": V}
        mats = {n: [row[:] for row in m] for n, m in M.items()}
        mats[which][r][c] += delta
        return loss(mats["Q"], mats["K"], mats["V"])
    return (bump(eps) - bump(-eps)) / (2 * eps)


for name, grad, rows in (("Q", dQ, s_q), ("K", dK, s_k), ("V", dV, s_k)):
    for r in range(rows):
        for c in range(d):
            assert abs(numeric(name, r, c) - grad[r][c]) < 1e-6, (name, r, c)

# Recomputing P from the saved LSE alone (the backward has no running max):
for i in range(s_q):
    s = {j: cap * math.tanh(X[i][j] / cap) for j in range(s_k) if vis(i, j)}
    lse = math.log(sum(math.exp(x) for x in s.values()))
    assert all(abs(math.exp(s[j] - lse) - P[i][j]) < 1e-12 for j in s)


# ---- Determinism: fp32 addition is not associative ----------------------------------------
def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def sum_f32(parts):
    acc = 0.0
    for p in parts:
        acc = f32(acc + p)
    return acc


# dQ of one query block = sum over key blocks of dS K: with atomics the CTAs' partials land in
# whatever order the hardware runs them. Some orders round differently:
partials = [f32(x) for x in (1.0e8, 3.0, -1.0e8, 2.5, 0.75)]
results = {sum_f32([partials[i] for i in order]) for order in
           ([0, 1, 2, 3, 4], [1, 3, 4, 0, 2], [0, 2, 1, 3, 4], [4, 3, 1, 0, 2])}
assert len(results) > 1, results     # same partials, different bits
# Deterministic mode adds in key-block order (dq_semaphore): one order, the same bits each run.
assert len({sum_f32(partials) for _ in range(3)}) == 1

print("ex08: dQ, dK, dV match finite differences; fp32 sums depend on their order")
