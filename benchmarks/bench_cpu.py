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
is the median over rounds (each round's value is the median of its calls). Before each point the
script waits (up to --quiet-wait seconds) until other processes use less than 0.15 of a core,
and the CPU time other processes used during each round is read from /proc/stat and recorded,
so a disturbed run can be told from a clean one. Round 0 also checks flashattn's output and
gradients against torch's.

Writes <out>/<date>-<cpu><cores>c-cpu-vs-torch.{json,md,png}; the JSON follows docs/design.md
(impl "flashattn" or "torch_cpu", "gflops" per record, plus the per-round times). The plot needs
matplotlib; --replot redraws the Markdown and the plot from a JSON without torch (for a Python
that has matplotlib but not torch).

  PYTHONPATH=<flashattn package> python benchmarks/bench_cpu.py --out benchmarks/results
  ... --seqlens 512,1024 --rounds 3 --dtypes bf16     # a quick look
  python3 benchmarks/bench_cpu.py --replot benchmarks/results/<stem>.json
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

FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5}
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

    def wait_quiet(self, max_s: float, threshold: float = 0.15) -> float:
        """Sleeps in 1 s steps until other processes kept fewer than `threshold` cores busy over
        the last step, or max_s passed; returns the seconds waited."""
        start = time.perf_counter()
        while time.perf_counter() - start < max_s:
            probe = self._read()
            time.sleep(1.0)
            busy0, mine0, t0 = probe
            busy1, mine1, t1 = self._read()
            if ((busy1 - busy0) - (mine1 - mine0)) / self.tick / (t1 - t0) < threshold:
                break
        return time.perf_counter() - start

    def since_restart(self):
        """(CPU seconds of other processes, wall seconds) since the last restart."""
        busy0, mine0, t0 = self.start
        busy1, mine1, t1 = self._read()
        return max(0.0, ((busy1 - busy0) - (mine1 - mine0)) / self.tick), t1 - t0


def impls():
    import torch.nn.functional as F

    import flashattn

    def sdpa_bshd(q, k, v, causal):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                              v.transpose(1, 2), is_causal=causal).transpose(1, 2)

    def fa_bshd(q, k, v, causal):
        return flashattn.flash_attn_func(q, k, v, causal=causal)

    return {"flashattn": fa_bshd, "torch_cpu": sdpa_bshd}


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
    import torch

    q, k, v, dout = tensors
    worst = 0.0
    results = {}
    for impl in out:
        o = out[impl]
        grads = torch.autograd.grad(o, (q, k, v), dout, retain_graph=True)
        results[impl] = [o.detach().float()] + [g.float() for g in grads]
    for a, b in zip(results["flashattn"], results["torch_cpu"]):
        worst = max(worst, (a - b).abs().max().item() / max(1.0, b.abs().max().item()))
    return worst


def run(args):
    import torch

    IMPLS = impls()
    DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
    points = [(dt, d, s, causal) for dt in args.dtypes.split(",")
              for d in [int(x) for x in args.hdims.split(",")]
              for s in [int(x) for x in args.seqlens.split(",")] for causal in (False, True)]
    times = {}  # (impl, mode, point) -> [ms per round]
    checks = {}
    load = []
    waited = 0.0
    other = OtherLoad()
    for rnd in range(args.rounds):
        t_round = time.perf_counter()
        other_s = wall_s = 0.0  # over the measurements only, not the waits
        for pi, (dt, d, s, causal) in enumerate(points):
            waited += other.wait_quiet(args.quiet_wait) if args.quiet_wait > 0 else 0.0
            other.restart()
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
            o, w = other.since_restart()
            other_s += o
            wall_s += w
        load.append(other_s / max(wall_s, 1e-9))
        print(f"round {rnd}: {time.perf_counter() - t_round:6.1f} s, other processes kept "
              f"{load[-1]:.2f} cores busy while it measured ({waited:.0f} s waited for quiet "
              f"so far)", flush=True)

    records = []
    for (impl, mode, (dt, d, s, causal)), per_round in times.items():
        ms = statistics.median(per_round)
        flops = 4.0 * args.batch * s * s * (args.hidden // d) * d * FLOP_FACTOR[mode]
        flops /= 2 if causal else 1
        records.append({"impl": impl, "mode": mode, "dtype": dt, "d": d, "seqlen": s,
                        "causal": causal, "page_size": None, "ms": ms,
                        "gflops": flops / (ms * 1e-3) / 1e9, "ms_rounds": per_round,
                        "check_max_rel_err": checks.get((dt, d, s, causal))})
    return records, load


def ratio_rows(records):
    by = {(r["impl"], r["mode"], r["dtype"], r["d"], r["seqlen"], r["causal"]): r for r in records}
    rows = []
    for (impl, mode, dt, d, s, causal), r in sorted(by.items(), key=lambda kv: kv[0][1:]):
        if impl != "flashattn":
            continue
        t = by[("torch_cpu", mode, dt, d, s, causal)]
        rows.append((mode, dt, d, causal, s, r, t, t["ms"] / r["ms"]))
    return rows


def make_meta(args, load):
    import torch

    import flashattn

    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                         stderr=subprocess.DEVNULL).strip()
    except Exception:
        commit = "unknown"
    return {"gpu": None, "cpu": cpu_name(), "cores": os.cpu_count(), "driver": None,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cuda": None,
            "commit": commit, "date": args.date or datetime.date.today().isoformat(),
            "flashattn": flashattn.build_info(), "batch": args.batch, "hidden": args.hidden,
            "rounds": args.rounds, "other_cores_busy_per_round": load,
            "method": "median over rounds of the per-round median; flashattn and torch back to "
                      "back per point in alternating order"}


def write(stem, meta, records):
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1)
    render(stem, meta, records)


def render(stem, meta, records):
    name, cores, date, commit = meta["cpu"], meta["cores"], meta["date"], meta["commit"]
    load = meta["other_cores_busy_per_round"]
    checks = {(r["dtype"], r["d"], r["seqlen"], r["causal"]): r["check_max_rel_err"]
              for r in records}
    rows = ratio_rows(records)
    lines = [f"# CPU backend vs torch CPU SDPA ({name}, {cores} cores, {date}, commit {commit})",
             "",
             f"flashattn `cpu_isa` = {meta['flashattn'].get('cpu_isa')}, torch {meta['torch']} "
             f"({meta['torch_threads']} threads). b = {meta['batch']}, h = {meta['hidden']}/d. "
             f"GFLOP/s, medians over {meta['rounds']} interleaved rounds; other processes kept "
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
    def summary(sel):
        ratios = [x[-1] for x in sel]
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        return f"min {min(ratios):.2f}x, geometric mean {geo:.2f}x, max {max(ratios):.2f}x"

    if rows:
        lines += ["", "Speedup (torch ms / flashattn ms):", "",
                  "| mode | dtype | causal | speedup |", "|---|---|---|---|"]
        for mode in sorted({x[0] for x in rows}):
            for dt in sorted({x[1] for x in rows}):
                for causal in (False, True):
                    sel = [x for x in rows if x[0] == mode and x[1] == dt and x[3] == causal]
                    if sel:
                        lines.append(f"| {mode} | {dt} | {int(causal)} | {summary(sel)} |")
        lines += ["", f"All {len(rows)} points: {summary(rows)}."]
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
            seqlens = sorted({x[4] for x in rows})
            ax.set_xticks(seqlens)
            ax.set_xticklabels([str(x) for x in seqlens])
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
    ap.add_argument("--quiet-wait", type=float, default=120.0,
                    help="seconds to wait at most, before each point, for other processes to go "
                         "quiet (0: do not wait)")
    ap.add_argument("--date", default=None, help="date in the file names (default: today)")
    ap.add_argument("--replot", default=None, metavar="JSON",
                    help="redraw the .md and .png of this JSON (no benchmark, no torch needed)")
    args = ap.parse_args()
    if args.replot:
        with open(args.replot) as f:
            data = json.load(f)
        render(args.replot[:-len(".json")], data["meta"], data["records"])
        return
    records, load = run(args)
    meta = make_meta(args, load)
    os.makedirs(args.out, exist_ok=True)
    tag = re.sub(r"[^a-z0-9]+", "", meta["cpu"].lower().split()[-1] if meta["cpu"] else "cpu")
    stem = os.path.join(args.out, f"{meta['date']}-{tag or 'cpu'}{meta['cores']}c-cpu-vs-torch")
    write(stem, meta, records)


if __name__ == "__main__":
    main()
