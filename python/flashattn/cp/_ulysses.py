"""Ulysses (DeepSpeed-Ulysses): trade the sequence split for a head split with all-to-alls.

Rank r holds tokens [r s, (r + 1) s) of every head (the contiguous layout). One all-to-all
gives it the whole sequence for heads [r h/P, (r + 1) h/P) (and the matching K/V heads), it runs
ordinary attention there, and a second all-to-all returns the output to the sequence split.
The attention itself is one unsplit kernel call, so no merge is needed; the price is that the
all-to-alls cannot overlap with compute and that h and the K/V heads must split over P ranks.

K/V heads: with h_k % P == 0 each rank receives h_k / P of them (GQA sends only the K/V heads).
Otherwise (MQA, or GQA with fewer K/V heads than ranks) each K/V head is repeated f times,
f = lcm(h_k, P) / h_k, so that every rank gets whole groups; the query head -> K/V head map is
unchanged (repeat_interleave keeps head i / (h / h_k)), and the backward sums the f copies'
gradients in fp32.
"""
from __future__ import annotations

import math

import torch

from flashattn import _ops  # noqa: F401  (loads the extension)
from flashattn.cp._comm import AllToAll

Tensor = torch.Tensor


def kv_repeat(h: int, h_k: int, world: int) -> int:
    """How many times each K/V head is sent so that the heads split evenly over the ranks."""
    return math.lcm(h_k, world) // h_k


def _to_heads(x: Tensor, world: int) -> Tensor:
    """(b, s, H, d) -> (P, b, s, H/P, d) contiguous: chunk j is what rank j receives."""
    b, s, heads, d = x.shape
    return x.reshape(b, s, world, heads // world, d).permute(2, 0, 1, 3, 4).contiguous()


def _from_ranks(x: Tensor) -> Tensor:
    """(P, b, s, H', d) received per source rank -> (b, P s, H', d): the whole sequence."""
    world, b, s, heads, d = x.shape
    return x.permute(1, 0, 2, 3, 4).reshape(b, world * s, heads, d)


def _to_tokens(x: Tensor, world: int) -> Tensor:
    """(b, P s, H', d) -> (P, b, s, H', d) contiguous: chunk j holds rank j's tokens."""
    b, total, heads, d = x.shape
    return x.reshape(b, world, total // world, heads, d).permute(1, 0, 2, 3, 4).contiguous()


def _from_heads(x: Tensor) -> Tensor:
    """(P, b, s, H', d) received per source rank (heads of rank j) -> (b, s, P H', d)."""
    world, b, s, heads, d = x.shape
    return x.permute(1, 2, 0, 3, 4).reshape(b, s, world * heads, d)


def ulysses_forward(q: Tensor, k: Tensor, v: Tensor, *, world: int, causal: bool,
                    softmax_scale: float, softcap: float, need_lse: bool):
    """One rank's forward schedule.

    Returns (out (b, s, h, d), lse (b, h, s) or None, saved) where `saved` is what the backward
    needs in the head split: (q, k, v, out, lse) of this rank's heads over the whole sequence.
    """
    h, h_k = q.shape[2], k.shape[2]
    rep = kv_repeat(h, h_k, world)
    if rep > 1:
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
    hq, hkv = h // world, k.shape[2] // world
    # q, k and v in one message: (P, b, s, hq + 2 hkv, d).
    send = torch.cat((_to_heads(q, world), _to_heads(k, world), _to_heads(v, world)), dim=3)
    recv = torch.empty_like(send)
    yield AllToAll(recv, send)
    full = _from_ranks(recv)
    qh, kh, vh = full.split((hq, hkv, hkv), dim=2)
    # The op's `deterministic` only configures the backward registered on it, which
    # ulysses_backward does not use (it calls bwd / bwd_into itself).
    out_h, lse_h, _, _ = torch.ops.flashattn.fwd(qh, kh, vh, None, 0.0, softmax_scale, causal,
                                                 -1, -1, softcap, False, False)
    send = _to_tokens(out_h, world)
    recv = torch.empty_like(send)
    yield AllToAll(recv, send)
    out = _from_heads(recv)
    lse = None
    if need_lse:
        # (b, hq, P s) -> (P, b, hq, s) per destination; back as (b, P hq, s).
        b = lse_h.shape[0]
        send = lse_h.reshape(b, hq, world, -1).permute(2, 0, 1, 3).contiguous()
        recv = torch.empty_like(send)
        yield AllToAll(recv, send)
        lse = recv.permute(1, 0, 2, 3).reshape(b, world * hq, -1)
    return out, lse, (qh, kh, vh, out_h, lse_h)


def ulysses_backward(dout: Tensor, saved, *, world: int, h_k: int, causal: bool,
                     softmax_scale: float, softcap: float, deterministic: bool):
    """One rank's backward schedule. Returns (dq, dk, dv) in the sequence split."""
    qh, kh, vh, out_h, lse_h = saved
    hq, hkv = qh.shape[2], kh.shape[2]
    rep = kv_repeat(hq * world, h_k, world)
    send = _to_heads(dout, world)
    recv = torch.empty_like(send)
    yield AllToAll(recv, send)
    dout_h = _from_ranks(recv)
    rng = torch.zeros(2, dtype=torch.int64)
    if rep == 1:
        dq_h, dk_h, dv_h, _ = torch.ops.flashattn.bwd(dout_h, qh, kh, vh, out_h, lse_h, None,
                                                      0.0, softmax_scale, causal, -1, -1, softcap,
                                                      deterministic, rng)
    else:
        # The copies of a K/V head get their gradients summed after the return trip: keep them
        # in fp32 until then, so the sum is rounded once, as in a single kernel call.
        dq_h = torch.empty(qh.shape, dtype=torch.float32, device=qh.device)
        dk_h = torch.empty(kh.shape, dtype=torch.float32, device=qh.device)
        dv_h = torch.empty(vh.shape, dtype=torch.float32, device=qh.device)
        torch.ops.flashattn.bwd_into(dout_h, qh, kh, vh, out_h, lse_h, dq_h, dk_h, dv_h, False,
                                     None, 0.0, softmax_scale, causal, -1, -1, softcap,
                                     deterministic, rng)
    send = torch.cat((_to_tokens(dq_h, world), _to_tokens(dk_h, world),
                      _to_tokens(dv_h, world)), dim=3)
    recv = torch.empty_like(send)
    yield AllToAll(recv, send)
    dq_p, dk_p, dv_p = recv.split((hq, hkv, hkv), dim=3)
    dq, dk, dv = _from_heads(dq_p), _from_heads(dk_p), _from_heads(dv_p)
    if rep > 1:
        b, s, _, d = dk.shape
        dk = dk.reshape(b, s, h_k, rep, d).sum(dim=3)
        dv = dv.reshape(b, s, h_k, rep, d).sum(dim=3)
    dtype = qh.dtype
    return dq.to(dtype), dk.to(dtype), dv.to(dtype)
