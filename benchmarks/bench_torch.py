#!/usr/bin/env python3
"""flashattn (the Python package) against torch's attention, one process, same inputs.

GPU, on the standard grid of docs/design.md (bf16, batch*seqlen = 16384, hidden 2048, h = 2048/d,
d in {64, 128, 256}, seqlen 512..16384, causal and not), modes fwd, bwd, fwdbwd:
  flashattn        flashattn.flash_attn_func (autograd backward through torch.ops.flashattn.bwd)
  sdpa_flash       torch SDPA, FLASH_ATTENTION backend (FlashAttention-2's kernels)
  sdpa_cudnn       torch SDPA, CUDNN_ATTENTION backend
  sdpa_efficient   torch SDPA, EFFICIENT_ATTENTION backend
  flex             torch.compile'd FlexAttention (causal through a block mask)
Decode (s_q = 1, b = 8, h = 32, h_k = 8, d = 128, KV length 4k..128k): flashattn's
flash_attn_with_kvcache, contiguous and paged (page 256), against SDPA backends (GQA through
enable_gqa) and FlexAttention; reported as GB/s of K+V read.
CPU: flashattn's CPU backend against torch's CPU SDPA (fwd and bwd, fp32 and bf16).

FLOPs: 4*b*s^2*h*d for the forward (halved when causal), 2.5x that for the backward, 3.5x for
forward+backward. GPU times are medians of triton.testing.do_bench (CUDA events without triton)
after warm-up, rotating through several input sets so L2 does not serve them; CPU times are
medians of wall-clock repeats. Every flashattn point is first checked against SDPA in fp32.

Writes <out>/<date>-<gpu>-torch-<mode>.{json,md,png} per GPU mode and
<out>/<date>-<cpu>-torch-cpu.{json,md,png}, JSON as docs/design.md describes.

  python3 benchmarks/bench_torch.py --out benchmarks/results           # everything
  python3 benchmarks/bench_torch.py --quick                            # a few points, fewer reps
  python3 benchmarks/bench_torch.py --modes decode --kv-lens 4096,131072
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashattn

try:
    from triton.testing import do_bench
except ImportError:  # pragma: no cover - plain CUDA events instead
    do_bench = None

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # pragma: no cover - torch without FlexAttention
    flex_attention = None

SDPA_BACKENDS = {
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
}
GPU_IMPLS = ["flashattn", *SDPA_BACKENDS, "flex"]
MODE_TITLES = {"fwd": "Forward", "bwd": "Backward", "fwdbwd": "Forward+backward",
               "decode": "Decode"}
FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwdbwd": 3.5}


# ------------------------------------------------------------------------------- timing --

def gpu_ms(fn: Callable[[], object], rep: int) -> float:
    if do_bench is not None:
        return do_bench(fn, warmup=25, rep=rep, return_mode="median")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(5):
        fn()
    times = []
    for _ in range(max(10, rep // 3)):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (thread pools, first-touch of outputs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


# ----------------------------------------------------------------------- implementations --

def sdpa_bshd(q, k, v, causal: bool, enable_gqa: bool = False):
    """SDPA on flash_attn's (b, s, h, d) layout, through (b, h, s, d) views."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=causal, enable_gqa=enable_gqa)
    return out.transpose(1, 2)


_flex_compiled = None
_block_masks: Dict = {}


def flex_bshd(q, k, v, causal: bool, enable_gqa: bool = False):
    global _flex_compiled
    if _flex_compiled is None:
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    block_mask = None
    s_q, s_k = q.shape[1], k.shape[1]
    if causal:
        key = (s_q, s_k)
        if key not in _block_masks:
            offset = s_k - s_q  # bottom-right alignment, as flash_attn
            _block_masks[key] = create_block_mask(
                lambda b, h, qi, ki: qi + offset >= ki, None, None, s_q, s_k, device=q.device)
        block_mask = _block_masks[key]
    out = _flex_compiled(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                         block_mask=block_mask, enable_gqa=enable_gqa)
    return out.transpose(1, 2)


def attention_fn(impl: str, causal: bool) -> Callable:
    if impl == "flashattn":
        return lambda q, k, v: flashattn.flash_attn_func(q, k, v, causal=causal)
    if impl == "flex":
        if flex_attention is None:
            raise RuntimeError("FlexAttention is not available in this torch")
        return lambda q, k, v: flex_bshd(q, k, v, causal)
    backend = SDPA_BACKENDS[impl]

    def run(q, k, v):
        with sdpa_kernel(backend):
            return sdpa_bshd(q, k, v, causal)
    return run


# --------------------------------------------------------------------------- GPU grid --

def grid_point(modes: List[str], d: int, s: int, impls: List[str], rep: int) -> List[dict]:
    """Every mode and implementation at one (d, seqlen), causal and not."""
    h, b = 2048 // d, max(1, 16384 // s)
    dtype = torch.bfloat16
    nbytes = 4 * b * s * h * d * 2
    nsets = max(1, min(4, math.ceil(200e6 / nbytes)))  # rotate inputs past the L2 (50-60 MB)
    sets = [[torch.randn(b, s, h, d, device="cuda", dtype=dtype).requires_grad_()
             for _ in range(3)] for _ in range(nsets)]
    douts = [torch.randn(b, s, h, d, device="cuda", dtype=dtype) for _ in range(nsets)]
    records = []
    for causal in (False, True):
        err = check_against_sdpa(sets[0], douts[0], causal) if s <= 4096 else float("nan")
        for impl in impls:
            fn = attention_fn(impl, causal)
            it = [0]

            def next_index():
                it[0] = (it[0] + 1) % nsets
                return it[0]

            for mode in modes:
                try:
                    if mode == "fwd":
                        def bench():
                            with torch.no_grad():
                                fn(*sets[next_index()])
                    elif mode == "bwd":
                        graphs = [(fn(*qkv), qkv, do) for qkv, do in zip(sets, douts)]

                        def bench(graphs=graphs):
                            out, qkv, do = graphs[next_index()]
                            torch.autograd.grad(out, qkv, do, retain_graph=True)
                    else:
                        def bench():
                            i = next_index()
                            torch.autograd.grad(fn(*sets[i]), sets[i], douts[i])
                    ms = gpu_ms(bench, rep)
                except Exception as e:  # a backend that refuses the shape
                    print(f"  {mode} {impl} d={d} s={s} causal={int(causal)}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
                    continue
                flops = 4.0 * b * s * s * h * d / (2 if causal else 1) * FLOP_FACTOR[mode]
                rec = {"impl": impl, "mode": mode, "dtype": "bf16", "d": d, "seqlen": s,
                       "causal": causal, "page_size": None, "ms": ms,
                       "tflops": flops / (ms * 1e-3) / 1e12}
                if impl == "flashattn":
                    rec["max_err_vs_fp32"] = err
                records.append(rec)
                print(f"  {mode:6s} {impl:15s} d={d:3d} s={s:5d} causal={int(causal)} "
                      f"{ms:8.3f} ms {rec['tflops']:7.1f} TFLOP/s", flush=True)
    return records


def check_against_sdpa(qkv, dout, causal: bool) -> float:
    """Max error of flashattn's output and gradients against fp32 SDPA on these inputs."""
    q, k, v = qkv
    out = flashattn.flash_attn_func(q, k, v, causal=causal)
    grads = torch.autograd.grad(out, qkv, dout)
    ref_in = [x.detach().float().requires_grad_() for x in qkv]
    ref = sdpa_bshd(*ref_in, causal)
    ref_grads = torch.autograd.grad(ref, ref_in, dout.float())
    return max((a.float() - b).abs().max().item()
               for a, b in zip((out, *grads), (ref, *ref_grads)))


# ------------------------------------------------------------------------------ decode --

def decode_point(kv_len: int, page_size: Optional[int], rep: int) -> List[dict]:
    b, h, h_k, d = 8, 32, 8, 128
    dtype = torch.bfloat16
    kv_bytes = 2 * b * kv_len * h_k * d * 2
    nsets = max(1, min(4, math.ceil(200e6 / kv_bytes)))
    sets = []
    for _ in range(nsets):
        q = torch.randn(b, 1, h, d, device="cuda", dtype=dtype)
        k = torch.randn(b, kv_len, h_k, d, device="cuda", dtype=dtype)
        v = torch.randn(b, kv_len, h_k, d, device="cuda", dtype=dtype)
        sets.append((q, k, v))
    seqlens = torch.full((b,), kv_len, dtype=torch.int32, device="cuda")
    impls: Dict[str, Callable] = {}
    if page_size is None:
        impls["flashattn"] = lambda q, k, v: flashattn.flash_attn_with_kvcache(
            q, k, v, cache_seqlens=seqlens)
        for name, backend in SDPA_BACKENDS.items():
            def run(q, k, v, backend=backend):
                with sdpa_kernel(backend):
                    return sdpa_bshd(q, k, v, False, enable_gqa=True)
            impls[name] = run
        if flex_attention is not None:
            impls["flex"] = lambda q, k, v: flex_bshd(q, k, v, False, enable_gqa=True)
    else:
        blocks = kv_len // page_size
        table = torch.arange(b * blocks, dtype=torch.int32, device="cuda").view(b, blocks)
        paged = [(q, k.view(b * blocks, page_size, h_k, d), v.view(b * blocks, page_size, h_k, d))
                 for q, k, v in sets]
        sets = paged
        impls["flashattn"] = lambda q, k, v: flashattn.flash_attn_with_kvcache(
            q, k, v, cache_seqlens=seqlens, block_table=table)
    records = []
    for impl, fn in impls.items():
        it = [0]

        def bench(fn=fn):
            it[0] = (it[0] + 1) % len(sets)
            fn(*sets[it[0]])
        try:
            ms = gpu_ms(bench, rep)
        except Exception as e:
            print(f"  decode {impl} kv={kv_len} page={page_size}: {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:120]}", flush=True)
            continue
        gbps = kv_bytes / (ms * 1e-3) / 1e9
        records.append({"impl": impl, "mode": "decode", "dtype": "bf16", "d": d,
                        "seqlen": kv_len, "causal": False, "page_size": page_size, "ms": ms,
                        "gbps": gbps})
        print(f"  decode {impl:15s} kv={kv_len:6d} page={page_size} {ms:8.4f} ms "
              f"{gbps:7.0f} GB/s", flush=True)
    return records


# --------------------------------------------------------------------------------- CPU --

def cpu_points(seqlens: List[int], repeats: int) -> List[dict]:
    b, h, d = 1, 16, 128
    records = []
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for s in seqlens:
            q, k, v = (torch.randn(b, s, h, d, dtype=dtype).requires_grad_() for _ in range(3))
            dout = torch.randn(b, s, h, d, dtype=dtype)
            for causal in (False, True):
                impls = {"flashattn": lambda q, k, v: flashattn.flash_attn_func(q, k, v, causal=causal),
                         "torch_cpu": lambda q, k, v: sdpa_bshd(q, k, v, causal)}
                for impl, fn in impls.items():
                    for mode in ("fwd", "bwd"):
                        if mode == "fwd":
                            def bench():
                                with torch.no_grad():
                                    fn(q, k, v)
                        else:
                            out = fn(q, k, v)

                            def bench(out=out):
                                torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
                        ms = cpu_ms(bench, repeats)
                        flops = 4.0 * b * s * s * h * d / (2 if causal else 1) * FLOP_FACTOR[mode]
                        rec = {"impl": impl, "mode": mode, "dtype": dtype_name, "d": d,
                               "seqlen": s, "causal": causal, "page_size": None, "ms": ms,
                               "tflops": flops / (ms * 1e-3) / 1e12, "device": "cpu"}
                        records.append(rec)
                        print(f"  cpu {mode:3s} {impl:9s} {dtype_name} s={s:5d} causal={int(causal)} "
                              f"{ms:9.2f} ms {rec['tflops'] * 1e3:7.1f} GFLOP/s", flush=True)
    return records


# ----------------------------------------------------------------------------- results --

def meta(device_name: str) -> dict:
    # FA_COMMIT first: the GPU machine's copy of the tree may carry a stale .git.
    commit = os.environ.get("FA_COMMIT")
    if not commit:
        try:
            commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                             stderr=subprocess.DEVNULL).strip()
        except Exception:
            commit = "unknown"
    driver = "n/a"
    if torch.cuda.is_available():
        try:
            driver = subprocess.check_output(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                text=True).strip().splitlines()[0]
        except Exception:
            pass
    return {"gpu": device_name, "driver": driver, "torch": torch.__version__,
            "cuda": torch.version.cuda, "commit": commit,
            "date": datetime.date.today().isoformat(), "flashattn": flashattn.build_info()}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def table(records: List[dict], mode: str, title: str) -> str:
    """Markdown: one row per point, one column per implementation, flashattn's ratio to the
    best peer last."""
    metric = "gbps" if mode == "decode" else "tflops"
    impls = [i for i in ["flashattn", *SDPA_BACKENDS, "flex", "torch_cpu"]
             if any(r["impl"] == i for r in records)]
    def key(r):
        return (r["mode"], r["dtype"], r["d"], r["causal"], r["page_size"] or 0, r["seqlen"])

    keys = sorted({key(r) for r in records})
    unit = "GB/s" if metric == "gbps" else ("GFLOP/s" if records and records[0].get("device") == "cpu"
                                            else "TFLOP/s")
    scale = 1e3 if unit == "GFLOP/s" else 1.0
    lines = [f"# {title} ({unit})", "",
             "| mode | dtype | d | causal | page | seqlen | " + " | ".join(impls)
             + " | flashattn / best peer |",
             "|" + "---|" * (7 + len(impls))]
    for k in keys:
        m, dtype, d, causal, page, s = k
        vals = {r["impl"]: r[metric] * scale for r in records if key(r) == k}
        peers = [v for i, v in vals.items() if i != "flashattn"]
        ratio = f"{vals['flashattn'] / max(peers):.2f}x" if "flashattn" in vals and peers else "-"
        cells = [f"{vals[i]:.1f}" if i in vals else "-" for i in impls]
        lines.append(f"| {m} | {dtype} | {d} | {int(causal)} | {page or '-'} | {s} | "
                     + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines) + "\n"


def plot(records: List[dict], mode: str, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plot)")
        return
    metric = "gbps" if mode == "decode" else "tflops"
    def panel(r):
        return (r["mode"], r["dtype"], r["d"], r["causal"], r["page_size"] or 0)

    panels = sorted({panel(r) for r in records})
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, p in zip(axes.flat, panels):
        m, dtype, d, causal, page = p
        for impl in ["flashattn", *SDPA_BACKENDS, "flex", "torch_cpu"]:
            pts = sorted((r["seqlen"], r[metric]) for r in records
                         if r["impl"] == impl and panel(r) == p)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{m} {dtype} d={d}" + (" causal" if causal else "")
                     + (f" page={page}" if page else ""), fontsize=9)
        ax.set_xlabel("KV length" if mode == "decode" else "seqlen")
        ax.set_ylabel("GB/s" if metric == "gbps" else "TFLOP/s")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write(out_dir: str, tag: str, what: str, title: str, mode: str, records: List[dict],
          device_name: str) -> None:
    if not records:
        return
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{datetime.date.today().isoformat()}-{tag}-{what}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta(device_name), "records": records}, f, indent=1)
    md = table(records, mode, title)
    with open(stem + ".md", "w") as f:
        f.write(md)
    plot(records, mode, stem + ".png")
    print(md)


# -------------------------------------------------------------------------------- main --

def ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--modes", default="fwd,bwd,fwdbwd,decode,cpu",
                    help="comma list of fwd, bwd, fwdbwd, decode, cpu")
    ap.add_argument("--hdims", default="64,128,256")
    ap.add_argument("--seqlens", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--kv-lens", default="4096,16384,65536,131072")
    ap.add_argument("--cpu-seqlens", default="512,1024,2048")
    ap.add_argument("--impls", default=",".join(GPU_IMPLS))
    ap.add_argument("--quick", action="store_true",
                    help="d=128 at 1k/4k/16k, decode at 4k/64k, CPU at 512, fewer repetitions")
    args = ap.parse_args()
    if args.quick:
        args.hdims, args.seqlens, args.kv_lens, args.cpu_seqlens = "128", "1024,4096,16384", "4096,65536", "512"
    modes = args.modes.split(",")
    gpu_modes = [m for m in modes if m in ("fwd", "bwd", "fwdbwd")]
    torch.manual_seed(0)
    rep = 30 if args.quick else 100

    if (gpu_modes or "decode" in modes) and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        tag = gpu.replace("NVIDIA ", "").split()[0].lower()
        records: List[dict] = []
        for d in ints(args.hdims):
            for s in ints(args.seqlens):
                records += grid_point(gpu_modes, d, s, args.impls.split(","), rep)
                torch.cuda.empty_cache()
        for mode in gpu_modes:
            write(args.out, tag, f"torch-{mode}", f"{MODE_TITLES[mode]}, bf16, {gpu}", mode,
                  [r for r in records if r["mode"] == mode], gpu)
        if "decode" in modes:
            dec: List[dict] = []
            for kv_len in ints(args.kv_lens):
                for page in (None, 256):
                    dec += decode_point(kv_len, page, rep)
                torch.cuda.empty_cache()
            write(args.out, tag, "torch-decode",
                  f"Decode (b=8, h=32, h_k=8, d=128), GB/s of K+V, {gpu}", "decode", dec, gpu)
    elif gpu_modes or "decode" in modes:
        print("no CUDA device: GPU modes skipped")

    if "cpu" in modes:
        name = cpu_name()
        words = [w for w in name.split() if w.lower() not in ("amd", "intel(r)", "intel")]
        tag = (words[0].lower() if words else "cpu") + f"{os.cpu_count()}c"
        recs = cpu_points(ints(args.cpu_seqlens), 3 if args.quick else 5)
        write(args.out, tag, "torch-cpu",
              f"CPU backend vs torch CPU SDPA (b=1, h=16, d=128), {name}", "cpu", recs, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
