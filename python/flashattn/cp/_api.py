"""The public context-parallel functions: argument checks, autograd, and the dispatch to the
ring (_ring.py) or Ulysses (_ulysses.py) schedules run over torch.distributed (_comm.py)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist

from flashattn.cp import _ring, _ulysses
from flashattn.cp._comm import group_rank_and_size, run_distributed
from flashattn.cp._layout import check_layout
from flashattn.flash_attn_interface import (
    _check_softmax_scale,
    _maybe_contiguous,
    _needs_padding,
    _pad_head_dim,
    flash_attn_func,
)

Tensor = torch.Tensor


def check_supported(fn: str, dropout_p: float, window_size: Sequence[int],
                    alibi_slopes: Optional[Tensor]) -> None:
    """Features context parallelism does not have yet raise NotImplementedError."""
    if dropout_p != 0.0:
        raise NotImplementedError(
            f"flashattn.cp.{fn}: dropout_p = {dropout_p} is not supported yet (each step would "
            "need the Philox offsets of its global rows and columns); use dropout_p = 0.0")
    if tuple(window_size) != (-1, -1):
        raise NotImplementedError(
            f"flashattn.cp.{fn}: window_size = {tuple(window_size)} is not supported yet (a "
            "sliding window needs global positions in the mask); use (-1, -1)")
    if alibi_slopes is not None:
        raise NotImplementedError(
            f"flashattn.cp.{fn}: alibi_slopes are not supported yet (ALiBi distances need "
            "global positions); use None")


def check_shapes(fn: str, q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"flashattn.cp.{fn}: q, k, v must be (batch, seqlen, nheads, headdim) "
                         f"shards, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")


class _RingAttnFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, softmax_scale, causal, softcap, deterministic, layout, group):
        rank, world = group_rank_and_size(group)
        out, lse = run_distributed(
            _ring.ring_forward(q, k, v, rank=rank, world=world, layout=layout, causal=causal,
                               softmax_scale=softmax_scale, softcap=softcap), group)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = dict(rank=rank, world=world, layout=layout, causal=causal,
                        softmax_scale=softmax_scale, softcap=softcap, deterministic=deterministic)
        ctx.group = group
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _unused):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = run_distributed(
            _ring.ring_backward(dout.contiguous(), q, k, v, out, lse, **ctx.args), ctx.group)
        return dq, dk, dv, None, None, None, None, None, None


class _UlyssesAttnFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, softmax_scale, causal, softcap, deterministic, need_lse, group):
        _, world = group_rank_and_size(group)
        out, lse, saved = run_distributed(
            _ulysses.ulysses_forward(q, k, v, world=world, causal=causal,
                                     softmax_scale=softmax_scale, softcap=softcap,
                                     need_lse=need_lse), group)
        ctx.save_for_backward(*saved)
        ctx.args = dict(world=world, h_k=k.shape[2], causal=causal,
                        softmax_scale=softmax_scale, softcap=softcap, deterministic=deterministic)
        ctx.group = group
        if lse is None:
            lse = q.new_empty((0,), dtype=torch.float32)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _unused):
        dq, dk, dv = run_distributed(
            _ulysses.ulysses_backward(dout.contiguous(), ctx.saved_tensors, **ctx.args),
            ctx.group)
        return dq, dk, dv, None, None, None, None, None, None


def _single_rank(q, k, v, softmax_scale, causal, softcap, deterministic, return_attn_probs):
    """A group of one rank: plain attention."""
    res = flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal, softcap=softcap,
                          deterministic=deterministic, return_attn_probs=return_attn_probs)
    return (res[0], res[1], None) if return_attn_probs else res


def ring_attn(fn: str, q: Tensor, k: Tensor, v: Tensor, dropout_p: float,
              softmax_scale: Optional[float], causal: bool, window_size: Sequence[int],
              softcap: float, alibi_slopes: Optional[Tensor], deterministic: bool,
              return_attn_probs: bool, group: Optional[dist.ProcessGroup], layout: str):
    check_layout(layout)
    check_supported(fn, dropout_p, window_size, alibi_slopes)
    check_shapes(fn, q, k, v)
    seqlen, seqlen_k = q.shape[1], k.shape[1]
    if causal and seqlen_k != seqlen:
        raise ValueError(f"flashattn.cp.{fn}: causal attention needs the local shards of q and "
                         f"k to have one length, got {seqlen} and {seqlen_k}")
    if layout == "zigzag" and causal and seqlen % 2 != 0:
        raise ValueError(f"flashattn.cp.{fn}: the local sequence length {seqlen} is odd; the "
                         "zigzag layout holds two equal chunks per rank (the global length "
                         "must be a multiple of 2 * world_size)")
    _, world = group_rank_and_size(group)
    if world == 1:
        return _single_rank(q, k, v, softmax_scale, causal, softcap, deterministic,
                            return_attn_probs)
    head_dim = q.shape[-1]
    softmax_scale = _check_softmax_scale(softmax_scale, head_dim)
    q, k, v = (_maybe_contiguous(x) for x in (q, k, v))
    padded = _needs_padding(q)
    if padded:
        q, k, v = (_pad_head_dim(x) for x in (q, k, v))
    out, lse = _RingAttnFunc.apply(q, k, v, softmax_scale, bool(causal), float(softcap),
                                   bool(deterministic), layout, group)
    if padded:
        out = out[..., :head_dim]
    return (out, lse, None) if return_attn_probs else out


def ulysses_attn(q: Tensor, k: Tensor, v: Tensor, dropout_p: float,
                 softmax_scale: Optional[float], causal: bool, window_size: Sequence[int],
                 softcap: float, alibi_slopes: Optional[Tensor], deterministic: bool,
                 return_attn_probs: bool, group: Optional[dist.ProcessGroup]):
    fn = "ulysses_flash_attn_func"
    check_supported(fn, dropout_p, window_size, alibi_slopes)
    check_shapes(fn, q, k, v)
    _, world = group_rank_and_size(group)
    h, h_k = q.shape[2], k.shape[2]
    if h % world != 0:
        raise ValueError(f"flashattn.cp.{fn}: nheads = {h} is not a multiple of the group size "
                         f"{world} (Ulysses gives each rank nheads / world_size query heads)")
    if h_k < 1 or h % h_k != 0:
        raise ValueError(f"flashattn.cp.{fn}: nheads = {h} is not a multiple of nheads_k = "
                         f"{h_k} (GQA needs nheads % nheads_k == 0)")
    if k.shape[1] != q.shape[1]:
        raise ValueError(f"flashattn.cp.{fn}: the local shards of q and k must have one length, "
                         f"got {q.shape[1]} and {k.shape[1]}")
    if world == 1:
        return _single_rank(q, k, v, softmax_scale, causal, softcap, deterministic,
                            return_attn_probs)
    head_dim = q.shape[-1]
    softmax_scale = _check_softmax_scale(softmax_scale, head_dim)
    q, k, v = (_maybe_contiguous(x) for x in (q, k, v))
    padded = _needs_padding(q)
    if padded:
        q, k, v = (_pad_head_dim(x) for x in (q, k, v))
    out, lse = _UlyssesAttnFunc.apply(q, k, v, softmax_scale, bool(causal), float(softcap),
                                      bool(deterministic), bool(return_attn_probs), group)
    if padded:
        out = out[..., :head_dim]
    return (out, lse, None) if return_attn_probs else out
