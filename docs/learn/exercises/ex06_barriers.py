#!/usr/bin/env python3
"""Exercise 6 (docs/learn/06-forward-kernel.md): why every __syncthreads of the main loop is there.

A small model of the forward main loop's shared memory (src/sm80/mainloop_fwd_sm80.cuh, `run`):
the schedule is a list of operations per thread, identical for every warp; `|` is a barrier
(__syncthreads). Between two barriers warps run in any order relative to each other, so:
  - read-after-write: a buffer may be read only in a segment after the one in which the reading
    threads' copies were waited for (cp_async_wait<0>): each thread waits for ITS copies only, and
    only the barrier after the wait makes every thread's part visible to every warp;
  - write-after-read: a buffer may be overwritten (cp.async issue, or a register store) only in a
    segment after the last read of its old contents, or a slow warp may still be reading it.
The checker unrolls both schedules over a few key blocks, finds no hazard, then removes each
barrier in turn and asserts that the hazard the page names appears.
"""


def schedule_two_stage(n_max, barriers=("B",)):
    """kStages = 2: K and V double-buffered, one barrier per key block."""
    ops = [("issue", "Q", "Q"), ("issue", "K0", "K%d" % (n_max - 1)), ("issue", "V0", "V%d" % (n_max - 1))]
    for n in range(n_max - 1, -1, -1):
        stage = (n_max - 1 - n) % 2
        ops.append(("wait",))
        if "B" in barriers:
            ops.append(("barrier", "B"))
        if n > 0:
            ops += [("issue", "K%d" % (1 - stage), "K%d" % (n - 1)),
                    ("issue", "V%d" % (1 - stage), "V%d" % (n - 1))]
        ops += [("read", "Q", "Q"), ("read", "K%d" % stage, "K%d" % n),   # S = Q K[n]^T
                ("read", "V%d" % stage, "V%d" % n)]                        # O += P V[n]
    return ops + epilogue()


def schedule_one_stage(n_max, barriers=("B1", "B2")):
    """kStages = 1: FlashAttention-2's schedule, one K and one V buffer, two barriers per block."""
    ops = [("issue", "Q", "Q"), ("issue", "K", "K%d" % (n_max - 1))]
    for n in range(n_max - 1, -1, -1):
        ops.append(("wait",))
        if "B1" in barriers:
            ops.append(("barrier", "B1"))
        ops += [("issue", "V", "V%d" % n),
                ("read", "Q", "Q"), ("read", "K", "K%d" % n),   # S = Q K[n]^T, mask
                ("wait",)]
        if "B2" in barriers:
            ops.append(("barrier", "B2"))
        if n > 0:
            ops.append(("issue", "K", "K%d" % (n - 1)))
        ops.append(("read", "V", "V%d" % n))                    # softmax; O += P V[n]
    return ops + epilogue()


def epilogue(barriers=("E1", "E2")):
    """EpilogueFwdSm80::store: O goes registers -> smem (aliasing sQ) -> 16-byte global stores."""
    ops = []
    if "E1" in barriers:
        ops.append(("barrier", "E1"))
    ops.append(("write", "Q", "O"))   # every warp's O fragment into the sQ bytes
    if "E2" in barriers:
        ops.append(("barrier", "E2"))
    ops.append(("read", "Q", "O"))    # read back as row vectors, by OTHER threads
    return ops


def hazards(ops):
    """Hazards of a schedule run by many warps; returns a list of strings."""
    seg = 0
    holds = {}        # buffer -> item it will hold once its copy lands
    landed = {}       # buffer -> segment in which the landing was waited for (None: in flight)
    last_read = {}    # buffer -> (segment of the last read, item read)
    found = []
    for op in ops:
        kind = op[0]
        if kind == "barrier":
            seg += 1
        elif kind == "wait":
            for buf in holds:
                if landed.get(buf) is None:
                    landed[buf] = seg
        elif kind in ("issue", "write"):
            _, buf, item = op
            if buf in last_read and last_read[buf][0] >= seg and last_read[buf][1] != item:
                found.append(f"WAR on {buf}: {item} overwrites {last_read[buf][1]} while warps may still read it")
            holds[buf] = item
            # A register store is visible after the next barrier, like a waited-for copy.
            landed[buf] = seg if kind == "write" else None
        elif kind == "read":
            _, buf, item = op
            if holds.get(buf) != item:
                found.append(f"stale read of {buf}: wanted {item}, holds {holds.get(buf)}")
            elif landed.get(buf) is None or landed[buf] >= seg:
                found.append(f"RAW on {buf}: {item} read before every warp's part is visible")
            last_read[buf] = (seg, item)
    return found


# Both schedules, as written in the kernel, are hazard free.
assert hazards(schedule_two_stage(4)) == []
assert hazards(schedule_one_stage(4)) == []

# kStages = 2 without its barrier: K[n], V[n] are read before other threads' parts are visible,
# and the next block's copies overwrite the stage other warps may still be reading.
h = hazards(schedule_two_stage(4, barriers=()))
assert any(x.startswith("RAW on K") for x in h) and any(x.startswith("WAR on K") for x in h), h

# kStages = 1 without B1: K[n] read too early, and V[n] overwrites the V[n + 1] of a slow warp.
h = hazards(schedule_one_stage(4, barriers=("B2",)))
assert any(x.startswith("RAW on K") for x in h) and any(x.startswith("WAR on V") for x in h), h

# kStages = 1 without B2: V[n] read too early, and K[n - 1] overwrites K[n] under a slow S gemm.
h = hazards(schedule_one_stage(4, barriers=("B1",)))
assert any(x.startswith("RAW on V") for x in h) and any(x.startswith("WAR on K") for x in h), h

# Epilogue without E1: O overwrites sQ while a slow warp still runs its last S = Q K^T.
ops = schedule_two_stage(3)[:-len(epilogue())] + epilogue(barriers=("E2",))
assert any(x.startswith("WAR on Q") for x in hazards(ops))
# Epilogue without E2: threads read O rows that other warps have not written yet.
ops = schedule_two_stage(3)[:-len(epilogue())] + epilogue(barriers=("E1",))
assert any(x.startswith("RAW on Q") for x in hazards(ops))

print("ex06: both main-loop schedules are hazard free, and every barrier is needed")
