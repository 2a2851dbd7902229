"""Accuracy of FP8 (e4m3) attention against fp32 attention on the original inputs, on the CPU.

For each point it quantizes the same fp32 q, k, v three ways and runs flashattn's CPU path:
  bf16        q, k, v rounded to bfloat16 (the CPU backend, bf16 output);
  fp8_head    float8_e4m3fn with one descale per (batch, kv head): amax / 448, FlashAttention-3's
              granularity (q's factor over the query heads of the group);
  fp8_block   float8_e4m3fn with one descale per block of 128 rows (q: per query head, k and v:
              per kv head), amax of the block / 448, and no per-head factor.
The FP8 runs are the CPU reference's emulation of the FP8 kernel (quantized P, docs/fp8.md), so
the numbers are what the Hopper kernel must reproduce (within the 2x rule). The error is taken
against attention computed in float64 on the unquantized fp32 inputs: max |o - o_ref| and the
relative RMS error ||o - o_ref|| / ||o_ref||.

Data:
  random     q, k, v ~ N(0, 1).
  outliers   LLM-like activations: N(0, 1), then 4 outlier channels of q and k scaled by 20
             (a fixed set of head-dim columns, as the massive channels of q/k projections), and
             1% outlier tokens plus token 0 (an attention-sink token) whose k and v rows are
             scaled by 30. A per-head scale must cover the outlier tokens' range and loses the
             resolution of every other token; a per-block one confines that loss to the blocks
             holding them.
  massive    N(0, 1), and the v rows of token 0 and of 1% of the tokens scaled by 1000 (massive
             activations): a per-head v scale of amax / 448 then puts every ordinary v element
             below 2^-6 of that scale (0.13 here) into e4m3's subnormals or to zero.

Usage: python benchmarks/fp8_accuracy.py [--quick] [--out benchmarks/results/<stem>]
Writes <stem>.json ({"meta", "records"}, docs/design.md), <stem>.md and, with matplotlib,
<stem>.png.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess

import torch

import flashattn

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0
BLOCK = 128


def make_data(kind, b, s, h, d, gen):
    q, k, v = (torch.randn(b, s, h, d, generator=gen) for _ in range(3))
    if kind == "outliers":
        chans = torch.randperm(d, generator=gen)[:4]
        q[..., chans] *= 20
        k[..., chans] *= 20
        n_tok = max(1, s // 100)
        toks = torch.cat([torch.tensor([0]), torch.randperm(s, generator=gen)[:n_tok]])
        k[:, toks] *= 30
        v[:, toks] *= 30
    elif kind == "massive":
        toks = torch.cat([torch.tensor([0]), torch.randperm(s, generator=gen)[:max(1, s // 100)]])
        v[:, toks] *= 1000
    return q, k, v


def reference(q, k, v, causal):
    qd, kd, vd = (x.double().transpose(1, 2) for x in (q, k, v))
    s = qd @ kd.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = s.shape[-1]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return (torch.softmax(s, -1) @ vd).transpose(1, 2)


def per_head(x):
    """(b, s, h, d) -> descale (b, h) and the quantized tensor (h = kv heads here: h == h_k)."""
    scale = (x.abs().amax(dim=(1, 3)) / E4M3_MAX).clamp_min(1e-12)
    return scale, (x / scale[:, None, :, None]).to(FP8)


def per_block(x, block):
    """(b, s, h, d) -> descale (b, h, ceil(s / block)) and the quantized tensor."""
    b, s, h, d = x.shape
    nb = math.ceil(s / block)
    pad = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, nb * block - s))
    amax = pad.view(b, nb, block, h, d).abs().amax(dim=(2, 4))  # (b, nb, h)
    scale = (amax / E4M3_MAX).clamp_min(1e-12)
    rows = scale.repeat_interleave(block, dim=1)[:, :s]  # (b, s, h)
    return scale.transpose(1, 2).contiguous(), (x / rows[..., None]).to(FP8)


def run_point(kind, d, s, causal, h, gen):
    q, k, v = make_data(kind, 1, s, h, d, gen)
    ref = reference(q, k, v, causal)
    outs = {}
    outs["bf16"] = flashattn.flash_attn_func(*(x.bfloat16() for x in (q, k, v)), causal=causal)
    (qs, q8), (ks, k8), (vs, v8) = per_head(q), per_head(k), per_head(v)
    outs["fp8_head"] = flashattn.flash_attn_func(q8, k8, v8, causal=causal, q_descale=qs,
                                                 k_descale=ks, v_descale=vs)
    (qs, q8), (ks, k8), (vs, v8) = (per_block(x, BLOCK) for x in (q, k, v))
    outs["fp8_block"] = flashattn.flash_attn_func(
        q8, k8, v8, causal=causal, q_block_descale=qs, k_block_descale=ks, v_block_descale=vs,
        descale_block=(BLOCK, BLOCK))
    recs = []
    for name, o in outs.items():
        err = o.double() - ref
        recs.append({
            "impl": "flashattn_cpu", "mode": "fwd", "dtype": name, "d": d, "seqlen": s,
            "causal": causal, "page_size": None, "data": kind,
            "max_abs_err": float(err.abs().max()),
            "rel_rmse": float(err.norm() / ref.norm()),
            "ref_max_abs": float(ref.abs().max()),
        })
    return recs


def write_markdown(path, meta, recs, heads):
    lines = [f"# FP8 accuracy (CPU emulation) vs fp32 attention on the unquantized inputs",
             "",
             f"{meta['date']}, commit {meta['commit']}, torch {meta['torch']}. Relative RMS "
             "error ||o - o_ref|| / ||o_ref|| (max |o - o_ref| in parentheses); b = 1, "
             f"h = {heads}, descale blocks of {BLOCK} rows "
             "(benchmarks/fp8_accuracy.py).",
             "",
             "| data | d | seqlen | causal | bf16 | fp8 per-head | fp8 per-block |",
             "|---|---|---|---|---|---|---|"]
    keyed = {}
    for r in recs:
        keyed.setdefault((r["data"], r["d"], r["seqlen"], r["causal"]), {})[r["dtype"]] = r
    for (data, d, s, causal), row in keyed.items():
        cells = [f"{row[n]['rel_rmse']:.2e} ({row[n]['max_abs_err']:.1e})"
                 for n in ("bf16", "fp8_head", "fp8_block")]
        lines.append(f"| {data} | {d} | {s} | {'yes' if causal else 'no'} | " +
                     " | ".join(cells) + " |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(path, recs):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for ax, data in zip(axes, ("random", "outliers", "massive")):
        for name, style in (("bf16", "o-"), ("fp8_head", "s--"), ("fp8_block", "^-")):
            for d in sorted({r["d"] for r in recs}):
                pts = [r for r in recs if r["data"] == data and r["dtype"] == name and
                       r["d"] == d and not r["causal"]]
                ax.plot([r["seqlen"] for r in pts], [r["rel_rmse"] for r in pts], style,
                        label=f"{name} d={d}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{data} data, non-causal")
        ax.set_xlabel("seqlen")
    axes[0].set_ylabel("relative RMS error vs fp32")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small lengths only")
    ap.add_argument("--out", default=None)
    ap.add_argument("--heads", type=int, default=4)
    args = ap.parse_args()
    seqlens = [128, 512] if args.quick else [256, 512, 1024]
    gen = torch.Generator().manual_seed(0)
    recs = []
    for kind in ("random", "outliers", "massive"):
        for d in (64, 128):
            for s in seqlens:
                for causal in (False, True):
                    recs += run_point(kind, d, s, causal, args.heads, gen)
                    print(recs[-3:], flush=True)
    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"],
                                         text=True).strip()
    except Exception:
        commit = "unknown"
    date = datetime.date.today().isoformat()
    meta = {"gpu": None, "cpu": platform.processor() or platform.machine(), "driver": None,
            "torch": torch.__version__, "cuda": None, "commit": commit, "date": date,
            "what": "fp8 accuracy vs fp32 on unquantized inputs (CPU emulation)"}
    stem = args.out or os.path.join(os.path.dirname(__file__), "results",
                                    f"{date}-cpu-fp8-accuracy")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "records": recs}, f, indent=1)
    write_markdown(stem + ".md", meta, recs, args.heads)
    plot(stem + ".png", recs)
    print(open(stem + ".md").read())


if __name__ == "__main__":
    main()
