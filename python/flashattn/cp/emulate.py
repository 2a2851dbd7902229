"""Every rank of a context-parallel group in one process, with no torch.distributed.

The functions take the shards of all P ranks (lists, rank r at index r) and run each rank's
schedule, the same code the distributed functions run, in lockstep, moving the K/V blocks and
all-to-all chunks between the ranks' buffers directly (_comm.run_emulated). A distributed run
on the same shards gives bitwise the same results (the tests check it), so the emulator is the
way to sweep shapes and variants, or to time one rank's steps on one GPU.

    outs, lses = emulate.ring_forward(qs, ks, vs, causal=True, layout="zigzag")
    dqs, dks, dvs = emulate.ring_backward(douts, qs, ks, vs, outs, lses, causal=True,
                                          layout="zigzag")
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from flashattn.cp import _ring, _ulysses
from flashattn.cp._comm import run_emulated
from flashattn.cp._layout import check_layout

Tensor = torch.Tensor


def _scale(softmax_scale: Optional[float], q: Tensor) -> float:
    return q.shape[-1] ** (-0.5) if softmax_scale is None else float(softmax_scale)


def ring_forward(qs: Sequence[Tensor], ks: Sequence[Tensor], vs: Sequence[Tensor], *,
                 softmax_scale: Optional[float] = None, causal: bool = False,
                 softcap: float = 0.0, layout: str = "contiguous"):
    """Ring forward of all ranks. Returns (outs, lses), lists over the ranks."""
    check_layout(layout)
    world = len(qs)
    scale = _scale(softmax_scale, qs[0])
    res = run_emulated([
        _ring.ring_forward(qs[r], ks[r], vs[r], rank=r, world=world, layout=layout,
                           causal=causal, softmax_scale=scale, softcap=softcap)
        for r in range(world)])
    return [o for o, _ in res], [l for _, l in res]


def ring_backward(douts: Sequence[Tensor], qs: Sequence[Tensor], ks: Sequence[Tensor],
                  vs: Sequence[Tensor], outs: Sequence[Tensor], lses: Sequence[Tensor], *,
                  softmax_scale: Optional[float] = None, causal: bool = False,
                  softcap: float = 0.0, layout: str = "contiguous",
                  deterministic: bool = False):
    """Ring backward of all ranks, from ring_forward's outs and lses. Returns (dqs, dks, dvs)."""
    check_layout(layout)
    world = len(qs)
    scale = _scale(softmax_scale, qs[0])
    res = run_emulated([
        _ring.ring_backward(douts[r].contiguous(), qs[r], ks[r], vs[r], outs[r], lses[r],
                            rank=r, world=world, layout=layout, causal=causal,
                            softmax_scale=scale, softcap=softcap, deterministic=deterministic)
        for r in range(world)])
    return [g[0] for g in res], [g[1] for g in res], [g[2] for g in res]


def ulysses_forward(qs: Sequence[Tensor], ks: Sequence[Tensor], vs: Sequence[Tensor], *,
                    softmax_scale: Optional[float] = None, causal: bool = False,
                    softcap: float = 0.0):
    """Ulysses forward of all ranks. Returns (outs, lses, saved); `saved` feeds
    ulysses_backward."""
    world = len(qs)
    scale = _scale(softmax_scale, qs[0])
    res = run_emulated([
        _ulysses.ulysses_forward(qs[r], ks[r], vs[r], world=world, causal=causal,
                                 softmax_scale=scale, softcap=softcap, need_lse=True)
        for r in range(world)])
    return [x[0] for x in res], [x[1] for x in res], [x[2] for x in res]


def ulysses_backward(douts: Sequence[Tensor], saved: List, h_k: int, *,
                     softmax_scale: Optional[float] = None, causal: bool = False,
                     softcap: float = 0.0, deterministic: bool = False):
    """Ulysses backward of all ranks from ulysses_forward's `saved`; h_k: K/V heads of the
    inputs. Returns (dqs, dks, dvs)."""
    world = len(douts)
    scale = _scale(softmax_scale, douts[0])
    res = run_emulated([
        _ulysses.ulysses_backward(douts[r].contiguous(), saved[r], world=world, h_k=h_k,
                                  causal=causal, softmax_scale=scale, softcap=softcap,
                                  deterministic=deterministic)
        for r in range(world)])
    return [g[0] for g in res], [g[1] for g in res], [g[2] for g in res]
