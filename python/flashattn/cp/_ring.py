"""Ring attention (pass-KV): each rank keeps its queries and the K/V blocks travel round the ring.

Rank r of P holds the queries, keys and values of its share of the sequence. At step i it
attends its queries to the K/V block of rank src = (r - i) mod P while that block is passed on
to rank r + 1 and the next one arrives from rank r - 1 (two ping-pong buffers, so the transfer
of block i + 1 overlaps the attention over block i). The P partial results merge by their LSE
(_merge.py).

What a step computes depends on the layout (which tokens a rank holds) and, for causal
attention, on where block src lies relative to rank r's queries. flashattn's causal mask is
bottom-right aligned, and every step's query and key sets are each in increasing global order,
so each step is one kernel call with causal on or off:

  contiguous (rank r holds chunk r of P equal chunks):
      src == r: causal            src < r: full            src > r: skipped (all keys later)
  zigzag (rank r holds chunks r and 2P-1-r of 2P; its queries q = [q0 | q1], keys [k0 | k1]):
      src == r: causal
      src < r:  all queries x k0 (chunk src precedes both of rank r's chunks; k1 follows both)
      src > r:  q1 x all keys     (both of src's chunks precede chunk 2P-1-r; neither precedes r)
  not causal (either layout): every step full.

Zigzag gives every rank the same work per step (half a block pair, or the causal diagonal),
where the contiguous causal ring leaves rank 0 idle for P-1 steps.

Backward: the K/V blocks go round again, each with its gradient: dK/dV of block src accumulate
in fp32 on the ranks it visits and arrive back at src after P hops. dQ accumulates locally in
fp32 (the kernel adds into it: BwdParams::dqkv_accumulate). Each step's kernel call takes the
merged (global) output and LSE, so its P = exp(S - LSE) is the global softmax restricted to the
block, and the per-block gradients sum to the exact ones.
"""
from __future__ import annotations

import torch

from flashattn import _ops  # noqa: F401  (loads the extension)
from flashattn.cp._comm import RingShift, Wait
from flashattn.cp._merge import empty_partial, finalize_lse, merge_

Tensor = torch.Tensor

_ALL = slice(None)


def ring_step(layout: str, causal: bool, rank: int, src: int, seqlen: int):
    """What rank `rank` computes against the K/V block of rank `src`.

    Returns None (nothing: every key is in the future) or (q_rows, k_rows, causal): the local
    query rows and key rows (slices) and whether the call is causal.
    """
    if not causal:
        return _ALL, _ALL, False
    if src == rank:
        return _ALL, _ALL, True
    if layout == "contiguous":
        return (_ALL, _ALL, False) if src < rank else None
    half = seqlen // 2
    if src < rank:
        return _ALL, slice(0, half), False
    return slice(half, None), _ALL, False


def ring_forward(q: Tensor, k: Tensor, v: Tensor, *, rank: int, world: int, layout: str,
                 causal: bool, softmax_scale: float, softcap: float):
    """One rank's forward schedule. Returns (out in q's dtype, lse (b, h, s) fp32)."""
    b, seqlen, h, _ = q.shape
    # K and V travel together: one message per step, in two ping-pong buffers.
    kv = [torch.stack((k, v)), None]
    kv[1] = torch.empty_like(kv[0])
    out, lse = empty_partial(q, (b, h, seqlen))
    for i in range(world):
        cur = kv[i % 2]
        if i + 1 < world:
            handle = yield RingShift(cur, kv[(i + 1) % 2], 0)
        step = ring_step(layout, causal, rank, (rank - i) % world, seqlen)
        if step is not None:
            qs, ks, step_causal = step
            # The op's `deterministic` only configures the backward registered on it, which
            # ring_backward does not use (it calls bwd_into per step).
            o_i, lse_i, _, _ = torch.ops.flashattn.fwd(
                q[:, qs], cur[0][:, ks], cur[1][:, ks], None, 0.0, softmax_scale, step_causal,
                -1, -1, softcap, False, False)
            merge_(out[:, qs], lse[:, :, qs], o_i, lse_i)
        if i + 1 < world:
            yield Wait(handle)
    return out.to(q.dtype), finalize_lse(lse)


def ring_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, *,
                  rank: int, world: int, layout: str, causal: bool, softmax_scale: float,
                  softcap: float, deterministic: bool):
    """One rank's backward schedule. Returns (dq, dk, dv) in the inputs' dtypes."""
    seqlen = q.shape[1]
    kv = [torch.stack((k, v)), None]
    kv[1] = torch.empty_like(kv[0])
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    # dK/dV of the block being visited, in fp32: [0] starts as this rank's own block (zeros),
    # later ones arrive from the previous rank; `step_dkv` holds one step's contribution while the
    # partial sum is still in flight.
    dkv = [torch.zeros(kv[0].shape, dtype=torch.float32, device=q.device), None]
    dkv[1] = torch.empty_like(dkv[0])
    step_dkv = torch.empty_like(dkv[0])
    # Dropout is not supported, so the Philox state the op takes is never read.
    rng = torch.zeros(2, dtype=torch.int64)
    # The kernel reads the LSE rows of a step's queries as one contiguous block.
    lse_rows = {}

    def lse_of(qs):
        key = (qs.start, qs.stop)
        if key not in lse_rows:
            lse_rows[key] = lse[:, :, qs].contiguous()
        return lse_rows[key]

    dkv_handle = None
    for i in range(world):
        cur = kv[i % 2]
        if i + 1 < world:
            kv_handle = yield RingShift(cur, kv[(i + 1) % 2], 0)
        step = ring_step(layout, causal, rank, (rank - i) % world, seqlen)
        if step is not None:
            qs, ks, step_causal = step
            # The kernel adds into dq (the sum over steps) and into dK/dV: on step 0 this rank's
            # own zeroed block, later a zeroed step buffer that is added to the partial sum
            # from the previous rank once that has arrived (its transfer overlaps this call).
            target = dkv[0] if i == 0 else step_dkv
            if i > 0:
                target[:, :, ks].zero_()
            torch.ops.flashattn.bwd_into(
                dout[:, qs], q[:, qs], cur[0][:, ks], cur[1][:, ks], out[:, qs], lse_of(qs),
                dq[:, qs], target[0][:, ks], target[1][:, ks], True, None, 0.0, softmax_scale,
                step_causal, -1, -1, softcap, deterministic, rng)
        if i > 0:
            yield Wait(dkv_handle)
            if step is not None:
                dkv[i % 2][:, :, ks] += step_dkv[:, :, ks]
        dkv_handle = yield RingShift(dkv[i % 2], dkv[(i + 1) % 2], 1)
        if i + 1 < world:
            yield Wait(kv_handle)
    yield Wait(dkv_handle)
    home = dkv[world % 2]
    return dq.to(q.dtype), home[0].to(k.dtype), home[1].to(v.dtype)
