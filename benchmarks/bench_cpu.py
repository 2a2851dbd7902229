#!/usr/bin/env python3
"""CPU backend against torch's CPU attention (F.scaled_dot_product_attention on CPU tensors, its
flash-attention CPU kernel), in one process, on the same tensors, using all the machine's cores.

Grid (docs/design.md's standard grid cut down to what a CPU runs in minutes): b = 1, hidden
2048 (h = 2048 / d), d in {64, 128}, seqlen 512 .. 4096, causal and not, fp32 and bf16, forward
and backward (the backward timed alone through torch.autograd.grad, after an untimed forward).
FLOPs: 4 b s^2 h d for the forward, halved when causal, 2.5x that for the backward.

Timing on a shared machine (other processes, such as a compiler, come and go on the same cores):
the grid is run `--rounds` times; within a round every point times flashattn and torch back to
back, in alternating order, so a burst of outside load hits both; the reported time of a point
is the median over rounds (each round's value is the median of its calls). The CPU time other
processes used during each round is read from /proc/stat and recorded, so a disturbed run can be
told from a clean one. Round 0 also checks flashattn's output and gradients against torch's.

Writes <out>/<date>-<cpu><cores>c-cpu-vs-torch.{json,md,png}; the JSON follows docs/design.md
(impl "flashattn" or "torch_cpu", "gflops" per record, plus the per-round times).

  PYTHONPATH=<flashattn package> python benchmarks/bench_cpu.py --out benchmarks/results
  ... --seqlens 512,1024 --rounds 3 --dtypes bf16     # a quick look
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

import flashattn

FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Largest |flashattn - torch| accepted in the round-0 check, relative to max(1, max |torch|):
# bf16 outputs differ by a few roundings of the dtype; fp32 by accumulation order only.
CHECK_TOL = {"fp32": 1e-4, "bf16": 3e-2}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


class OtherLoad:
    """CPU seconds used by other processes (all CPU time on the machine minus this process's)."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK")
        self.start = self._read()

    def _read(self):
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
        mine = int(own[11]) + int(own[12])  # utime, stime
        return busy, mine, time.perf_counter()

    def restart(self):
        self.start = self._read()

    def cores_busy(self) -> float:
        """Average number of cores other processes kept busy since the last restart."""
        busy0, mine0, t0 = self.start
        busy1, mine1, t1 = self._read()
        return max(0.0, ((busy1 - busy0) - (mine1 - mine0)) / self.tick / max(t1 - t0, 1e-9))


def sdpa_bshd(q, k, v, causal):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=causal).transpose(1, 2)


def fa_bshd(q, k, v, causal):
    return flashattn.flash_attn_func(q, k, v, causal=causal)


IMPLS = {"flashattn": fa_bshd, "torch_cpu": sdpa_bshd}


def time_calls(fn, min_s: float, max_calls: int) -> float:
    """Median ms of repeated calls: as many as fit in min_s (at least one, at most max_calls)."""
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= max_calls or time.perf_counter() - start >= min_s:
            break
    return statistics.median(times)


def check(tensors, out) -> float:
    """Max |flashattn - torch| over o, dq, dk, dv, relative to max(1, max |torch|)."""
    q, k, v, dout = tensors
    worst = 0.0
    results = {}
    for impl, fn in IMPLS.items():
        o = out[impl]
        grads = torch.autograd.grad(o, (q, k, v), dout, retain_graph=True)
        results[impl] = [o.detach().float()] + [g.float() for g in grads]
    for a, b in zip(results["flashattn"], results["torch_cpu"]):
        worst = max(worst, (a - b).abs().max().item() / max(1.0, b.abs().max().item()))
    return worst


def run(args):
    points = [(dt, d, s, causal) for dt in args.dtypes.split(",")
              for d in [int(x) for x in args.hdims.split(",")]
              for s in [int(x) for x in args.seqlens.split(",")] for causal in (False, True)]
    times = {}  # (impl, mode, point) -> [ms per round]
    checks = {}
    load = []
    other = OtherLoad()
    for rnd in range(args.rounds):
        other.restart()
        t_round = time.perf_counter()
        for pi, (dt, d, s, causal) in enumerate(points):
            h = args.hidden // d
            gen = torch.Generator().manual_seed(1000 * pi + 7)
            q, k, v, dout = (torch.randn(args.batch, s, h, d, generator=gen).to(DTYPES[dt])
                             for _ in range(4))
            for t in (q, k, v):
                t.requires_grad_()
            out = {}
            for impl, fn in IMPLS.items():
                out[impl] = fn(q, k, v, causal)  # graph for the backward; also a warm-up
            if rnd == 0:
                checks[(dt, d, s, causal)] = check((q, k, v, dout), out)
            order = list(IMPLS) if (rnd + pi) % 2 == 0 else list(reversed(IMPLS))
            for mode in ("fwd", "bwd"):
                for impl in order:
                    fn = IMPLS[impl]
                    if mode == "fwd":
                        def call(fn=fn):
                            with torch.no_grad():
                                fn(q, k, v, causal)
                    else:
                        def call(o=out[impl]):
                            torch.autograd.grad(o, (q, k, v), dout, retain_graph=True)
                    ms = time_calls(call, args.min_time, args.max_calls)
                    times.setdefault((impl, mode, (dt, d, s, causal)), []).append(ms)
            del out
        load.append(other.cores_busy())
        print(f"round {rnd}: {time.perf_counter() - t_round:6.1f} s, other processes kept "
              f"{load[-1]:.2f} cores busy", flush=True)

    records = []
    for (impl, mode, (dt, d, s, causal)), per_round in times.items():
        ms = statistics.median(per_round)
        flops = 4.0 * args.batch * s * s * (args.hidden // d) * d * FLOP_FACTOR[mode]
        flops /= 2 if causal else 1
        records.append({"impl": impl, "mode": mode, "dtype": dt, "d": d, "seqlen": s,
                        "causal": causal, "page_size": None, "ms": ms,
                        "gflops": flops / (ms * 1e-3) / 1e9, "ms_rounds": per_round,
                        "check_max_rel_err": checks.get((dt, d, s, causal))})
    return records, load, checks


def ratio_rows(records):
    by = {(r["impl"], r["mode"], r["dtype"], r["d"], r["seqlen"], r["causal"]): r for r in records}
    rows = []
    for (impl, mode, dt, d, s, causal), r in sorted(by.items(), key=lambda kv: kv[0][1:]):
        if impl != "flashattn":
            continue
        t = by[("torch_cpu", mode, dt, d, s, causal)]
        rows.append((mode, dt, d, causal, s, r, t, t["ms"] / r["ms"]))
    return rows


def write(args, records, load, checks):
    date = args.date or datetime.date.today().isoformat()
    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                         stderr=subprocess.DEVNULL).strip()
    except Exception:
        commit = "unknown"
    name = cpu_name()
    cores = os.cpu_count()
    info = flashattn.build_info()
    meta = {"gpu": None, "cpu": name, "cores": cores, "driver": None, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cuda": None, "commit": commit,
            "date": date, "flashattn": info, "batch": args.batch, "hidden": args.hidden,
            "rounds": args.rounds, "other_cores_busy_per_round": load,
            "method": "median over rounds of the per-round median; flashattn and torch back to "
                      "back per point in alternating order"}
    os.makedirs(args.out, exist_ok=True)
    tag = re.sub(r"[^a-z0-9]+", "", name.lower().split()[-1] if name else "cpu") or "cpu"
    stem = os.path.join(args.out, f"{date}-{tag}{cores}c-cpu-vs-torch")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1)

    rows = ratio_rows(records)
    lines = [f"# CPU backend vs torch CPU SDPA ({name}, {cores} cores, {date}, commit {commit})",
             "",
             f"flashattn `cpu_isa` = {info.get('cpu_isa')}, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads). b = {args.batch}, h = {args.hidden}/d. "
             f"GFLOP/s, medians over {args.rounds} interleaved rounds; other processes kept "
             f"{min(load):.2f} .. {max(load):.2f} cores busy per round.",
             "",
             "| mode | dtype | d | causal | seqlen | flashattn ms | torch ms | flashattn GFLOP/s "
             "| torch GFLOP/s | speedup | check |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, dt, d, causal, s, r, t, ratio in rows:
        err = checks.get((dt, d, s, causal))
        ok = "ok" if err is not None and err <= CHECK_TOL[dt] else f"FAIL {err:.1e}"
        lines.append(f"| {mode} | {dt} | {d} | {int(causal)} | {s} | {r['ms']:.1f} | {t['ms']:.1f} "
                     f"| {r['gflops']:.0f} | {t['gflops']:.0f} | {ratio:.2f}x | {ok} |")
    ratios = [x[-1] for x in rows]
    if ratios:
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        lines += ["", f"Speedup (torch ms / flashattn ms): min {min(ratios):.2f}x, geometric mean "
                      f"{geo:.2f}x, max {max(ratios):.2f}x over {len(ratios)} points."]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    modes = sorted({x[0] for x in rows})
    dts = sorted({x[1] for x in rows})
    fig, axes = plt.subplots(len(modes), len(dts), figsize=(5 * len(dts), 3.2 * len(modes)),
                             squeeze=False, sharey=True)
    for i, mode in enumerate(modes):
        for j, dt in enumerate(dts):
            ax = axes[i][j]
            for d in sorted({x[2] for x in rows}):
                for causal in (False, True):
                    pts = sorted((x[4], x[7]) for x in rows
                                 if x[0] == mode and x[1] == dt and x[2] == d and x[3] == causal)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                                linestyle="--" if causal else "-",
                                label=f"d={d}{' causal' if causal else ''}")
            ax.axhline(1.0, color="gray", linewidth=0.8)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{mode} {dt}", fontsize=9)
            ax.set_xlabel("seqlen")
            ax.set_ylabel("speedup vs torch CPU SDPA")
            ax.legend(fontsize=6)
    fig.suptitle(f"flashattn CPU backend / torch, {name} {cores} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=80)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--hdims", default="64,128")
    ap.add_argument("--seqlens", default="512,1024,2048,4096")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.3,
                    help="seconds of calls per point, impl and mode in each round")
    ap.add_argument("--max-calls", type=int, default=20)
    ap.add_argument("--date", default=None, help="date in the file names (default: today)")
    args = ap.parse_args()
    records, load, checks = run(args)
    write(args, records, load, checks)


if __name__ == "__main__":
    main()
