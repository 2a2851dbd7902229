"""Communication for context parallelism, written once and run two ways.

Every variant is written as a *schedule*: a generator that runs one rank's work and yields a
request whenever it needs to communicate:

    handle = yield RingShift(send, recv, tag)   # start: send to the next rank, receive from the
                                                # previous one (ranks in group order, cyclic)
    yield Wait(handle)                          # the shift has completed
    yield AllToAll(out, inp)                    # blocking all-to-all over dim 0 (P equal chunks)

`run_distributed` drives one schedule with torch.distributed: a shift is one
`batch_isend_irecv` (both directions in one call, the form that does not deadlock, and NCCL's
`wait()` only orders the current stream, so the host does not block on the GPU). `run_emulated`
drives the schedules of all P ranks in one process, in lockstep, and moves the tensors itself.
The attention and merge code is therefore the same in both, which is what lets the tests demand
bitwise equality between a distributed run and the emulator.
"""
from __future__ import annotations

from typing import Any, Generator, List, NamedTuple, Optional

import torch
import torch.distributed as dist

Tensor = torch.Tensor


class RingShift(NamedTuple):
    """Send `send` to the next rank and receive the previous rank's `send` into `recv`."""
    send: Tensor
    recv: Tensor
    tag: int


class Wait(NamedTuple):
    """Wait for the shift whose handle a RingShift request returned."""
    handle: Any


class AllToAll(NamedTuple):
    """Chunk j (dim 0, P equal chunks) of `inp` goes to rank j; chunk j of `out` comes from j."""
    out: Tensor
    inp: Tensor


Schedule = Generator[Any, Any, Any]


def group_rank_and_size(group: Optional[dist.ProcessGroup]) -> tuple:
    """(rank, world size) of this process in `group` (None: the default group)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("flashattn.cp: torch.distributed is not initialized "
                           "(call torch.distributed.init_process_group first)")
    return dist.get_rank(group), dist.get_world_size(group)


def run_distributed(schedule: Schedule, group: Optional[dist.ProcessGroup]):
    """Runs one rank's schedule over torch.distributed and returns its result."""
    rank, world = group_rank_and_size(group)
    pg = group if group is not None else dist.group.WORLD
    nxt = dist.get_global_rank(pg, (rank + 1) % world)
    prv = dist.get_global_rank(pg, (rank - 1) % world)
    reply = None
    try:
        while True:
            req = schedule.send(reply)
            reply = None
            if isinstance(req, RingShift):
                reply = dist.batch_isend_irecv([
                    dist.P2POp(dist.isend, req.send, nxt, group, req.tag),
                    dist.P2POp(dist.irecv, req.recv, prv, group, req.tag),
                ])
            elif isinstance(req, Wait):
                for work in req.handle:
                    work.wait()
            elif isinstance(req, AllToAll):
                dist.all_to_all_single(req.out, req.inp, group=group)
            else:
                raise TypeError(f"flashattn.cp: unknown schedule request {req!r}")
    except StopIteration as stop:
        return stop.value


def run_emulated(schedules: List[Schedule]) -> list:
    """Runs the schedules of all ranks of a group (rank r = schedules[r]) in one process.

    The ranks advance in lockstep from one communication to the next; a shift copies each rank's
    send buffer into the next rank's receive buffer at once (so a Wait has nothing left to do),
    an all-to-all moves the chunks. Every rank must issue the same sequence of requests, as it
    would have to over a real group.
    """
    world = len(schedules)
    results: list = [None] * world
    reqs: list = [None] * world
    done = [False] * world

    def advance(r: int, reply) -> None:
        try:
            req = schedules[r].send(reply)
            while isinstance(req, Wait):
                req = schedules[r].send(None)
            reqs[r] = req
        except StopIteration as stop:
            results[r] = stop.value
            done[r] = True

    for r in range(world):
        advance(r, None)
    while not all(done):
        if any(done) or len({type(q) for q in reqs}) != 1:
            raise RuntimeError("flashattn.cp emulator: ranks issued different communication "
                               f"sequences ({[type(q).__name__ for q in reqs]})")
        first = reqs[0]
        if isinstance(first, RingShift):
            # A rank's receive buffer is never another rank's send buffer, so the copies can
            # go in any order.
            for r, q in enumerate(reqs):
                q.recv.copy_(reqs[(r - 1) % world].send)
        elif isinstance(first, AllToAll):
            ins = [q.inp.chunk(world, dim=0) for q in reqs]
            for r, q in enumerate(reqs):
                for j, part in enumerate(q.out.chunk(world, dim=0)):
                    part.copy_(ins[j][r])
        else:
            raise TypeError(f"flashattn.cp: unknown schedule request {first!r}")
        for r in range(world):
            advance(r, None)
    return results
