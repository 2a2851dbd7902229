"""Context parallelism: one sequence split over the ranks of a torch.distributed group.

Every function takes and returns THIS rank's shard, (batch, seqlen / world_size, nheads,
headdim), in flash_attn's argument order, with the process group keyword-only:

    from flashattn.cp import zigzag_ring_flash_attn_func, shard_sequence, sequence_positions
    q, k, v = (shard_sequence(x, group) for x in (q_full, k_full, v_full))   # zigzag layout
    out = zigzag_ring_flash_attn_func(q, k, v, causal=True, group=group)

Variants (docs/context_parallel.md says which to use when):
- `ring_flash_attn_func`: K/V blocks travel round the ring while each rank attends to them;
  `layout="contiguous"` (rank r holds chunk r) or `"zigzag"`.
- `zigzag_ring_flash_attn_func`: the ring on the zigzag layout (rank r holds chunks r and
  2P-1-r of 2P), the one to use for causal attention: every rank does the same work per step.
- `ulysses_flash_attn_func`: all-to-all from the sequence split to a head split and back;
  contiguous layout; nheads must be a multiple of the group size.
- `*_kvpacked_func`, `*_qkvpacked_func`: the packed forms of the ring functions.

`return_attn_probs=True` returns (out, softmax_lse (batch, nheads, local seqlen), None). A group
of one rank runs plain `flash_attn_func`. Dropout, sliding windows and ALiBi raise
NotImplementedError. `flashattn.cp.emulate` runs every rank of a group in one process, without
torch.distributed (for tests, and to study a split on one device).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from flashattn.cp._api import ring_attn, ulysses_attn
from flashattn.cp._layout import join_shards, sequence_positions, shard_sequence, unshard_sequence

Tensor = torch.Tensor

__all__ = [
    "join_shards",
    "ring_flash_attn_func",
    "ring_flash_attn_kvpacked_func",
    "ring_flash_attn_qkvpacked_func",
    "sequence_positions",
    "shard_sequence",
    "ulysses_flash_attn_func",
    "unshard_sequence",
    "zigzag_ring_flash_attn_func",
    "zigzag_ring_flash_attn_kvpacked_func",
    "zigzag_ring_flash_attn_qkvpacked_func",
]


def ring_flash_attn_func(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0,
                         softmax_scale: Optional[float] = None, causal: bool = False,
                         window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                         alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                         return_attn_probs: bool = False, *, group=None,
                         layout: str = "contiguous"):
    """Ring attention over `group` on local shards q (b, s, h, d), k/v (b, s_k, h_k, d).

    layout: how the sequence was sharded, "contiguous" or "zigzag" (shard_sequence). Non-causal
    attention does not depend on it; causal attention does (zigzag balances the work).
    """
    return ring_attn("ring_flash_attn_func", q, k, v, dropout_p, softmax_scale, causal,
                     window_size, softcap, alibi_slopes, deterministic, return_attn_probs, group,
                     layout)


def zigzag_ring_flash_attn_func(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0,
                                softmax_scale: Optional[float] = None, causal: bool = False,
                                window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                                alibi_slopes: Optional[Tensor] = None,
                                deterministic: bool = False, return_attn_probs: bool = False, *,
                                group=None):
    """Ring attention on the zigzag layout (shard_sequence(x, group, layout="zigzag")): the
    variant for causal attention. The local sequence length must be even."""
    return ring_attn("zigzag_ring_flash_attn_func", q, k, v, dropout_p, softmax_scale, causal,
                     window_size, softcap, alibi_slopes, deterministic, return_attn_probs, group,
                     "zigzag")


def ring_flash_attn_kvpacked_func(q: Tensor, kv: Tensor, dropout_p: float = 0.0,
                                  softmax_scale: Optional[float] = None, causal: bool = False,
                                  window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                                  alibi_slopes: Optional[Tensor] = None,
                                  deterministic: bool = False, return_attn_probs: bool = False,
                                  *, group=None, layout: str = "contiguous"):
    """ring_flash_attn_func with kv (b, s_k, 2, h_k, d)."""
    k, v = kv.unbind(dim=2)
    return ring_attn("ring_flash_attn_kvpacked_func", q, k, v, dropout_p, softmax_scale, causal,
                     window_size, softcap, alibi_slopes, deterministic, return_attn_probs, group,
                     layout)


def ring_flash_attn_qkvpacked_func(qkv: Tensor, dropout_p: float = 0.0,
                                   softmax_scale: Optional[float] = None, causal: bool = False,
                                   window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                                   alibi_slopes: Optional[Tensor] = None,
                                   deterministic: bool = False, return_attn_probs: bool = False,
                                   *, group=None, layout: str = "contiguous"):
    """ring_flash_attn_func with qkv (b, s, 3, h, d)."""
    q, k, v = qkv.unbind(dim=2)
    return ring_attn("ring_flash_attn_qkvpacked_func", q, k, v, dropout_p, softmax_scale,
                     causal, window_size, softcap, alibi_slopes, deterministic,
                     return_attn_probs, group, layout)


def zigzag_ring_flash_attn_kvpacked_func(q: Tensor, kv: Tensor, dropout_p: float = 0.0,
                                         softmax_scale: Optional[float] = None,
                                         causal: bool = False,
                                         window_size: Tuple[int, int] = (-1, -1),
                                         softcap: float = 0.0,
                                         alibi_slopes: Optional[Tensor] = None,
                                         deterministic: bool = False,
                                         return_attn_probs: bool = False, *, group=None):
    """zigzag_ring_flash_attn_func with kv (b, s_k, 2, h_k, d)."""
    k, v = kv.unbind(dim=2)
    return ring_attn("zigzag_ring_flash_attn_kvpacked_func", q, k, v, dropout_p, softmax_scale,
                     causal, window_size, softcap, alibi_slopes, deterministic,
                     return_attn_probs, group, "zigzag")


def zigzag_ring_flash_attn_qkvpacked_func(qkv: Tensor, dropout_p: float = 0.0,
                                          softmax_scale: Optional[float] = None,
                                          causal: bool = False,
                                          window_size: Tuple[int, int] = (-1, -1),
                                          softcap: float = 0.0,
                                          alibi_slopes: Optional[Tensor] = None,
                                          deterministic: bool = False,
                                          return_attn_probs: bool = False, *, group=None):
    """zigzag_ring_flash_attn_func with qkv (b, s, 3, h, d)."""
    q, k, v = qkv.unbind(dim=2)
    return ring_attn("zigzag_ring_flash_attn_qkvpacked_func", q, k, v, dropout_p, softmax_scale,
                     causal, window_size, softcap, alibi_slopes, deterministic,
                     return_attn_probs, group, "zigzag")


def ulysses_flash_attn_func(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0,
                            softmax_scale: Optional[float] = None, causal: bool = False,
                            window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                            alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                            return_attn_probs: bool = False, *, group=None):
    """Ulysses attention over `group` on contiguous-layout shards q (b, s, h, d), k/v
    (b, s, h_k, d); h must be a multiple of the group size (K/V heads are repeated when h_k is
    not)."""
    return ulysses_attn(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                        alibi_slopes, deterministic, return_attn_probs, group)
