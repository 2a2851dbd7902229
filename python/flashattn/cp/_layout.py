"""Which tokens of a sequence each rank holds, and moving between the whole and the shards.

contiguous: the sequence is cut into P equal chunks; rank r holds chunk r.
zigzag:     the sequence is cut into 2P equal chunks; rank r holds chunks r and 2P-1-r, in
            that order (balanced causal work for the ring, see _ring.py).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.distributed as dist

from flashattn.cp._comm import group_rank_and_size

Tensor = torch.Tensor

LAYOUTS = ("contiguous", "zigzag")


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"flashattn.cp: layout must be one of {LAYOUTS}, got {layout!r}")


def _chunks_of(rank: int, world: int, layout: str) -> List[int]:
    return [rank] if layout == "contiguous" else [rank, 2 * world - 1 - rank]


def _num_chunks(world: int, layout: str) -> int:
    return world if layout == "contiguous" else 2 * world


def _check_divisible(seqlen: int, world: int, layout: str, what: str) -> int:
    n = _num_chunks(world, layout)
    if seqlen % n != 0:
        rule = "P" if layout == "contiguous" else "2 * P"
        raise ValueError(f"flashattn.cp: {what}: sequence length {seqlen} is not a multiple of "
                         f"{rule} = {n} (the {layout} layout over P = {world} ranks needs "
                         "equal chunks)")
    return seqlen // n


def _rank_and_world(group, rank: Optional[int], world_size: Optional[int]):
    if (rank is None) != (world_size is None):
        raise ValueError("flashattn.cp: give rank and world_size together (or neither, to use "
                         "the process group)")
    if rank is None:
        return group_rank_and_size(group)
    if not 0 <= rank < world_size:
        raise ValueError(f"flashattn.cp: rank {rank} is outside [0, world_size = {world_size})")
    return rank, world_size


def shard_sequence(x: Tensor, group: Optional[dist.ProcessGroup] = None, dim: int = 1,
                   layout: str = "zigzag", *, rank: Optional[int] = None,
                   world_size: Optional[int] = None) -> Tensor:
    """This rank's shard of a whole sequence `x` (every rank passes the same `x`).

    dim: the sequence dimension (1 for (b, s, h, d)). rank/world_size: use these instead of
    the process group (e.g. to build every rank's shard in one process).
    """
    check_layout(layout)
    rank, world = _rank_and_world(group, rank, world_size)
    c = _check_divisible(x.shape[dim], world, layout, "shard_sequence")
    parts = [x.narrow(dim, i * c, c) for i in _chunks_of(rank, world, layout)]
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts, dim=dim)


def join_shards(shards: Sequence[Tensor], dim: int = 1, layout: str = "zigzag") -> Tensor:
    """The whole sequence from every rank's shard (shards[r] = rank r's); no communication."""
    check_layout(layout)
    world = len(shards)
    n = _num_chunks(world, layout)
    chunks: List[Optional[Tensor]] = [None] * n
    for r, shard in enumerate(shards):
        ids = _chunks_of(r, world, layout)
        if shard.shape[dim] % len(ids) != 0:
            raise ValueError(f"flashattn.cp: join_shards: shard {r} has {shard.shape[dim]} "
                             f"tokens, not a multiple of the {len(ids)} chunks of the {layout} "
                             "layout")
        for i, part in zip(ids, shard.chunk(len(ids), dim=dim)):
            chunks[i] = part
    return torch.cat(chunks, dim=dim)


def unshard_sequence(x: Tensor, group: Optional[dist.ProcessGroup] = None, dim: int = 1,
                     layout: str = "zigzag") -> Tensor:
    """The whole sequence on every rank, gathered from each rank's shard `x` (all_gather; not
    differentiable)."""
    check_layout(layout)
    _, world = group_rank_and_size(group)
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x, group=group)
    return join_shards(parts, dim=dim, layout=layout)


def sequence_positions(seqlen: int, group: Optional[dist.ProcessGroup] = None,
                       layout: str = "zigzag", *, rank: Optional[int] = None,
                       world_size: Optional[int] = None, device=None) -> Tensor:
    """Global positions (int64) of this rank's tokens of a sequence of `seqlen` tokens, in
    shard order: what RoPE needs for the local shard."""
    check_layout(layout)
    rank, world = _rank_and_world(group, rank, world_size)
    c = _check_divisible(seqlen, world, layout, "sequence_positions")
    return torch.cat([torch.arange(i * c, (i + 1) * c, device=device)
                      for i in _chunks_of(rank, world, layout)])
