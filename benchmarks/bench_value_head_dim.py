#!/usr/bin/env python3
"""V with a head dim of its own (dv != d) against the alternatives a user has, in one process on
the same tensors: torch's scaled_dot_product_attention given v as it is (SDPA accepts E_v != E)
and given v zero-padded to d (the output sliced back to dv), which is how libraries without
dv != d run these models.

Cases (bf16, the device's own backend: the CPU backend on CPU tensors):
  train  DeepSeek-style 192 / 128: b = 1, h = 16, s_q = s_k = s, causal; forward, and the
         backward timed alone through torch.autograd.grad after an untimed forward.
  mla    MLA decode 576 / 512: b = 4 sequences, one new query each, 16 query heads on one latent
         kv head, v = the latent's first 512 columns (a view of k; SDPA gets enable_gqa);
         flashattn through flash_attn_with_kvcache.
FLOPs: forward 2 b h s_q s_k (d + dv) (halved when causal), backward 2 b h s_q s_k (3 d + 2 dv)
(halved when causal): the recomputed scores, dP, dV, dK and dQ.

Timing as benchmarks/bench_cpu.py: --rounds rounds, each point timing the implementations back to
back in alternating order, the median over rounds of each round's median; the other processes'
CPU use per round recorded. Round 0 checks every implementation against the first.

  PYTHONPATH=<flashattn package> python benchmarks/bench_value_head_dim.py --out benchmarks/results
  python3 benchmarks/bench_value_head_dim.py --replot benchmarks/results/<stem>.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import OtherLoad, cpu_name, time_calls  # noqa: E402

IMPLS = ("flashattn", "sdpa_native", "sdpa_padded")


def flops(case: str, mode: str, b: int, h: int, s_q: int, s_k: int, d: int, dv: int,
          causal: bool) -> float:
    per = (d + dv) if mode == "fwd" else (3 * d + 2 * dv)
    f = 2.0 * b * h * s_q * s_k * per
    return f / 2 if causal else f


def make_train(torch, device, s: int, d: int = 192, dv: int = 128, h: int = 16):
    import torch.nn.functional as F

    import flashattn

    g = torch.Generator().manual_seed(s)
    mk = lambda *shape: torch.randn(*shape, generator=g).to(device, torch.bfloat16)  # noqa: E731
    q, k, v, dout = mk(1, s, h, d), mk(1, s, h, d), mk(1, s, h, dv), mk(1, s, h, dv)
    for t in (q, k, v):
        t.requires_grad_()

    def fa():
        return flashattn.flash_attn_func(q, k, v, causal=True)

    def native():
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                              v.transpose(1, 2), is_causal=True).transpose(1, 2)

    def padded():
        vp = F.pad(v, [0, d - dv])
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           vp.transpose(1, 2), is_causal=True).transpose(1, 2)
        return o[..., :dv]

    shape = dict(b=1, h=h, s_q=s, s_k=s, d=d, dv=dv, causal=True)
    return {"flashattn": fa, "sdpa_native": native, "sdpa_padded": padded}, (q, k, v), dout, shape


def make_mla(torch, device, s_k: int, b: int = 4, h: int = 16, d: int = 576, dv: int = 512):
    import torch.nn.functional as F

    import flashattn

    g = torch.Generator().manual_seed(s_k)
    q = torch.randn(b, 1, h, d, generator=g).to(device, torch.bfloat16)
    cache = torch.randn(b, s_k, 1, d, generator=g).to(device, torch.bfloat16)
    seqlens = torch.full((b,), s_k, dtype=torch.int32, device=device)
    qt, kt = q.transpose(1, 2), cache.transpose(1, 2)  # (b, h, 1, d), (b, 1, s_k, d)

    def fa():
        return flashattn.flash_attn_with_kvcache(q, cache, cache[..., :dv], cache_seqlens=seqlens)

    def native():
        return F.scaled_dot_product_attention(qt, kt, kt[..., :dv],
                                              enable_gqa=True).transpose(1, 2)

    def padded():
        vp = F.pad(kt[..., :dv], [0, d - dv])
        return F.scaled_dot_product_attention(qt, kt, vp, enable_gqa=True).transpose(1, 2)[..., :dv]

    shape = dict(b=b, h=h, s_q=1, s_k=s_k, d=d, dv=dv, causal=False)
    return {"flashattn": fa, "sdpa_native": native, "sdpa_padded": padded}, None, None, shape


def run(args):
    import torch

    device = torch.device(args.device)
    load = OtherLoad()
    points = [("train", "fwd", s) for s in args.train_seqlens]
    points += [("train", "bwd", s) for s in args.train_seqlens]
    points += [("mla", "fwd", s) for s in args.mla_seqlens]
    times = {(c, m, s, i): [] for c, m, s in points for i in IMPLS}
    errors, others, shapes = {}, [], {}
    for rnd in range(args.rounds):
        load.restart()
        for case, mode, s in points:
            load.wait_quiet(args.quiet_wait)
            fns, inputs, dout, shape = (make_train(torch, device, s) if case == "train"
                                        else make_mla(torch, device, s))
            shapes[(case, mode, s)] = shape
            order = IMPLS if rnd % 2 == 0 else tuple(reversed(IMPLS))
            outs = {}
            for impl in order:
                fn = fns[impl]
                # One untimed call first: the first call of a process starts thread pools and
                # sets up per-thread buffers (hundreds of ms on the CPU backend).
                if mode == "fwd":
                    with torch.no_grad():
                        fn()
                        ms = time_calls(fn, args.min_time, args.max_calls)
                        outs[impl] = fn().float()
                else:
                    o = fn()
                    def call(o=o):  # noqa: E306
                        torch.autograd.grad(o, inputs, dout, retain_graph=True)
                    call()
                    ms = time_calls(call, args.min_time, args.max_calls)
                    outs[impl] = torch.cat([x.float().flatten() for x in
                                            torch.autograd.grad(o, inputs, dout)])
                times[(case, mode, s, impl)].append(ms)
            if rnd == 0:
                ref = outs["sdpa_native"]
                for impl in IMPLS:
                    err = (outs[impl] - ref).abs().max().item() / max(1.0, ref.abs().max().item())
                    errors[(case, mode, s, impl)] = err
        others.append(load.since_restart()[0])
        print(f"round {rnd + 1}/{args.rounds} done (other processes: {others[-1]:.2f} cpu-s)",
              flush=True)
    records = []
    for (case, mode, s, impl), ts in times.items():
        shape = shapes[(case, mode, s)]
        ms = statistics.median(ts)
        records.append(dict(case=case, mode=mode, seqlen=s, impl=impl, ms=ms, times_ms=ts,
                            gflops=flops(case, mode, **shape) / ms / 1e6,
                            rel_err_vs_sdpa_native=errors[(case, mode, s, impl)], **shape))
    meta = dict(date=args.date or datetime.date.today().isoformat(), device=str(device),
                cpu=cpu_name(), cores=os.cpu_count(), threads=torch.get_num_threads(),
                torch=torch.__version__, rounds=args.rounds, other_cpu_s_per_round=others,
                dtype="bf16")
    return meta, records


def render(stem: str, meta: dict, records: list) -> None:
    by = {(r["case"], r["mode"], r["seqlen"], r["impl"]): r for r in records}
    lines = [f"# V head dim of its own (dv != d) vs SDPA, {meta['device']} "
             f"({meta['cpu']}, {meta['threads']} threads), {meta['date']}", "",
             f"torch {meta['torch']}, bf16, medians of {meta['rounds']} interleaved rounds; other "
             f"processes used {', '.join(f'{x:.2f}' for x in meta['other_cpu_s_per_round'])} "
             "cpu-s per round. GFLOP/s; speedup = best SDPA ms / flashattn ms; err = max "
             "|impl - sdpa_native| / max(1, max |sdpa_native|) over o (fwd) or dq, dk, dv (bwd).",
             "", "| case | mode | seqlen | flashattn ms | sdpa native ms | sdpa padded ms | "
             "flashattn GFLOP/s | best SDPA GFLOP/s | speedup | err flashattn | err padded |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["case"], r["mode"], r["seqlen"]) for r in records})
    for case, mode, s in keys:
        fa, na, pa = (by[(case, mode, s, i)] for i in IMPLS)
        best = na if na["ms"] <= pa["ms"] else pa
        lines.append(f"| {case} {fa['d']}/{fa['dv']} | {mode} | {s} | {fa['ms']:.2f} | "
                     f"{na['ms']:.2f} | {pa['ms']:.2f} | {fa['gflops']:.0f} | "
                     f"{best['gflops']:.0f} | {best['ms'] / fa['ms']:.2f}x | "
                     f"{fa['rel_err_vs_sdpa_native']:.1e} | {pa['rel_err_vs_sdpa_native']:.1e} |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: no plot (--replot with a Python that has it)")
        return
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (case, mode) in zip(axes, [("train", "fwd"), ("train", "bwd"), ("mla", "fwd")]):
        ss = sorted({s for c, m, s in keys if (c, m) == (case, mode)})
        for impl in IMPLS:
            ax.plot(ss, [by[(case, mode, s, impl)]["gflops"] for s in ss], marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{case} {mode}")
        ax.set_xlabel("seqlen (keys)")
        ax.set_ylabel("GFLOP/s")
        ax.legend()
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-seqlens", default="512,1024,2048")
    ap.add_argument("--mla-seqlens", default="1024,4096,16384")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--max-calls", type=int, default=20)
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    ap.add_argument("--date", default=None)
    ap.add_argument("--replot", default=None, metavar="JSON")
    args = ap.parse_args()
    if args.replot:
        with open(args.replot) as f:
            data = json.load(f)
        render(args.replot[:-len(".json")], data["meta"], data["records"])
        return
    args.train_seqlens = [int(x) for x in args.train_seqlens.split(",") if x]
    args.mla_seqlens = [int(x) for x in args.mla_seqlens.split(",") if x]
    meta, records = run(args)
    # Named like bench_cpu.py's results: the CPU model's last word and the core count.
    name = "".join(ch for ch in (meta["cpu"].lower().split() or ["cpu"])[-1] if ch.isalnum())
    if meta["device"] != "cpu":
        name = "gpu-" + name
    stem = os.path.join(args.out, f"{meta['date']}-{name}{meta['cores']}c-value-head-dim")
    os.makedirs(args.out, exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump(dict(meta=meta, records=records), f, indent=1)
    render(stem, meta, records)
    print(open(stem + ".md").read())


if __name__ == "__main__":
    main()
