#!/usr/bin/env python3
"""GPU forward/backward benchmark: flashattn side by side with torch SDPA, one process, same inputs.

Runs the standard grid of docs/design.md (batch*seqlen = 16384, hidden 2048, h = 2048/d,
bf16, causal and not) against SDPA's FLASH_ATTENTION (FlashAttention-2's kernels),
CUDNN_ATTENTION and EFFICIENT_ATTENTION backends. flashattn is called through the C ABI shim
(build/libflashattn_capi.so, tools/capi.cpp) on the same torch tensors. Timing: median of
triton.testing.do_bench after warm-up, with several input sets rotated so L2 does not serve them.

Backward: flashattn's mha_bwd on the forward's saved out/LSE against SDPA's backward through
autograd (out.backward(dout, retain_graph=True)); FLOPs counted as 2.5x the forward's.

Writes <out>/<date>-<gpu>-<mode>.{json,md} (and .png when matplotlib is present) for each mode
and prints a ratio table last.

  python3 benchmarks/bench_gpu.py --lib build/libflashattn_capi.so --out benchmarks/results
"""
import argparse
import ctypes
import datetime
import json
import math
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

try:
    from triton.testing import do_bench
except ImportError:  # pragma: no cover
    do_bench = None


def bench_ms(fn, warmup=25, rep=100):
    if do_bench is not None:
        return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(5):
        fn()
    times = []
    for _ in range(30):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


class FlashAttnCapi:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        f = self.lib.flashattn_capi_fwd
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_void_p] + [ctypes.c_int] * 7 + [
            ctypes.POINTER(ctypes.c_int64), ctypes.c_float, ctypes.c_int, ctypes.c_int,
            ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p,
            ctypes.c_int]
        g = self.lib.flashattn_capi_bwd
        g.restype = ctypes.c_int
        g.argtypes = [ctypes.c_void_p] * 9 + [ctypes.c_int] * 7 + [
            ctypes.POINTER(ctypes.c_int64), ctypes.c_float, ctypes.c_int, ctypes.c_int,
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        self.err = ctypes.create_string_buffer(512)
        self.has_paths = hasattr(self.lib, "flashattn_capi_set_gpu_path")
        if self.has_paths:
            self.lib.flashattn_capi_set_gpu_path.argtypes = [ctypes.c_int]
            self.lib.flashattn_capi_last_gpu_path.restype = ctypes.c_int

    PATHS = {"auto": 0, "sm80": 1, "sm90": 2}

    def set_path(self, name):
        if self.has_paths:
            self.lib.flashattn_capi_set_gpu_path(self.PATHS[name])

    def last_path(self):
        if not self.has_paths:
            return "sm80"
        return {0: "none", 1: "sm80", 2: "sm90"}[self.lib.flashattn_capi_last_gpu_path()]

    def fwd(self, q, k, v, o, lse, causal):
        b, sq, h, d = q.shape
        sk, hk = k.shape[1], k.shape[2]
        strides = (ctypes.c_int64 * 12)(*(list(q.stride()[:3]) + list(k.stride()[:3]) +
                                          list(v.stride()[:3]) + list(o.stride()[:3])))
        dtype = {torch.float16: 1, torch.bfloat16: 2, torch.float8_e4m3fn: 3}[q.dtype]
        rc = self.lib.flashattn_capi_fwd(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(), dtype, b, sq,
            sk, h, hk, d, strides, 0.0, int(causal), -1, -1, 0.0, None,
            ctypes.c_void_p(torch.cuda.current_stream().cuda_stream), self.err, 512)
        if rc != 0:
            raise RuntimeError(self.err.value.decode())


    def bwd(self, q, k, v, o, lse, do, dq, dk, dv, causal, deterministic=False):
        b, sq, h, d = q.shape
        sk, hk = k.shape[1], k.shape[2]
        strides = (ctypes.c_int64 * 24)(*[x for t in (q, k, v, o, do, dq, dk, dv)
                                          for x in t.stride()[:3]])
        dtype = {torch.float16: 1, torch.bfloat16: 2}[q.dtype]
        rc = self.lib.flashattn_capi_bwd(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(), do.data_ptr(),
            dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), dtype, b, sq, sk, h, hk, d, strides, 0.0,
            int(causal), int(deterministic),
            ctypes.c_void_p(torch.cuda.current_stream().cuda_stream), self.err, 512)
        if rc != 0:
            raise RuntimeError(self.err.value.decode())


def flops_fwd(b, s, h, d, causal):
    f = 4.0 * b * s * s * h * d
    return f / 2 if causal else f


def sdpa(q, k, v, causal):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=causal).transpose(1, 2)


SDPA_BACKENDS = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
                 "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}


def measure(mode, fa, d, s, dtype, dtype_name, rep, rounds=1, fp8=False):
    """Records for one (d, seqlen) point of the grid, causal and not, every implementation.
    With rounds > 1 every implementation is timed that many times, the implementations taking
    turns (A B C A B C ...), and the median round counts: a clock or thermal drift during the run
    then moves all of them alike instead of whichever happened to be timed at that moment."""
    h = 2048 // d
    b = max(1, 16384 // s)
    nbytes = (4 if mode == "fwd" else 9) * b * s * h * d * 2
    nsets = max(1, min(4, math.ceil(200e6 / nbytes)))  # rotate inputs past the 50 MB L2
    sets = []
    for _ in range(nsets):
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=dtype) for _ in range(3))
        o = torch.empty_like(q)
        lse = torch.empty(b, h, s, device="cuda", dtype=torch.float32)
        sets.append([q, k, v, o, lse])
        if mode == "bwd":
            sets[-1] += [torch.randn_like(q), torch.empty_like(q), torch.empty_like(k),
                         torch.empty_like(v)]
    # FP8: e4m3 copies of the same inputs (no descales: N(0, 1) values sit well inside e4m3's
    # range), the output in bf16 (the FP8 kernel's default).
    sets8 = []
    if fp8 and mode == "fwd":
        for q, k, v, o, lse in (st[:5] for st in sets):
            sets8.append([x.to(torch.float8_e4m3fn) for x in (q, k, v)] +
                         [torch.empty(o.shape, device="cuda", dtype=torch.bfloat16), lse])
    records = []
    for causal in (False, True):
        for st in sets:
            fa.fwd(*st[:5], causal)
        path = fa.last_path()
        err8 = float("nan")
        if sets8:
            try:
                fa.fwd(*sets8[0], causal)
                if s <= 4096:
                    q8, k8, v8, o8 = sets8[0][:4]
                    err8 = (o8.float() - sdpa(q8.float(), k8.float(), v8.float(), causal)).abs().max().item()
            except RuntimeError as e:
                print(f"  flashattn_fp8 d={d} s={s}: {e}".splitlines()[0])
                sets8 = []
        # Correctness of this very call against SDPA in fp32 before timing it.
        q, k, v, o, lse = sets[0][:5]
        err = float("nan")
        if s <= 4096:
            if mode == "fwd":
                err = (o.float() - sdpa(q.float(), k.float(), v.float(), causal)).abs().max().item()
            else:
                do, dq, dk, dv = sets[0][5:]
                fa.bwd(q, k, v, o, lse, do, dq, dk, dv, causal)
                qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
                sdpa(qf, kf, vf, causal).backward(do.float())
                err = max((a.float() - r.grad).abs().max().item()
                          for a, r in ((dq, qf), (dk, kf), (dv, vf)))
                del qf, kf, vf
        it = [0]

        def next_set():
            it[0] = (it[0] + 1) % nsets
            return sets[it[0]]

        if mode == "fwd":
            impls = {"flashattn": lambda: fa.fwd(*next_set()[:5], causal)}
            if sets8:
                def run_fp8():
                    it[0] = (it[0] + 1) % nsets
                    fa.fwd(*sets8[it[0]], causal)
                impls["flashattn_fp8"] = run_fp8
            if fa.has_paths:
                # The SM80 path on the same GPU, in the same process (the override is process-wide
                # and costs an atomic store, so it is set around each call).
                def run_sm80():
                    fa.set_path("sm80")
                    fa.fwd(*next_set()[:5], causal)
                    fa.set_path("auto")
                impls["flashattn_sm80"] = run_sm80
            for name, backend in SDPA_BACKENDS.items():
                def run_sdpa(backend=backend):
                    q, k, v = next_set()[:3]
                    with sdpa_kernel(backend):
                        sdpa(q, k, v, causal)
                impls[name] = run_sdpa
        else:
            impls = {"flashattn": lambda: fa.bwd(*next_set(), causal)}
            for name, backend in SDPA_BACKENDS.items():
                graphs = []
                try:
                    for st in sets:
                        q, k, v = (t.detach().requires_grad_() for t in st[:3])
                        with sdpa_kernel(backend):
                            out = sdpa(q, k, v, causal)
                        graphs.append((out, st[5], (q, k, v)))
                except Exception as e:  # a backend that refuses the shape
                    print(f"  {name} d={d} s={s} causal={causal}: {type(e).__name__}: {e}".splitlines()[0])
                    continue

                def run_sdpa_bwd(graphs=graphs):
                    it[0] = (it[0] + 1) % len(graphs)
                    out, do, inputs = graphs[it[0]]
                    torch.autograd.grad(out, inputs, do, retain_graph=True)
                impls[name] = run_sdpa_bwd
        times = {}
        for _ in range(rounds):
            for name, fn in impls.items():
                if name in times and times[name] is None:
                    continue
                try:
                    times.setdefault(name, []).append(bench_ms(fn, rep=rep))
                except Exception as e:  # a backend that refuses the shape
                    print(f"  {name} d={d} s={s} causal={causal}: {type(e).__name__}: {e}".splitlines()[0])
                    times[name] = None
        for name, ts in times.items():
            if ts is None:
                continue
            ms = sorted(ts)[len(ts) // 2]
            flops = flops_fwd(b, s, h, d, causal) * (2.5 if mode == "bwd" else 1.0)
            tf = flops / (ms * 1e-3) / 1e12
            records.append({"impl": name, "mode": mode, "dtype": dtype_name, "d": d, "seqlen": s,
                            "causal": causal, "page_size": None, "ms": ms, "tflops": tf,
                            **({"max_err_vs_fp32": err, "path": path} if name == "flashattn" else {}),
                            **({"max_err_vs_fp32": err8} if name == "flashattn_fp8" else {})})
            print(f"  {mode} {name:15s} d={d:3d} s={s:5d} causal={int(causal)} {ms:8.3f} ms {tf:7.1f} TFLOP/s"
                  + (f"  err={err:.2e} path={path}" if name == "flashattn" else "")
                  + (f"  err={err8:.2e} (vs fp32 on the e4m3 values)" if name == "flashattn_fp8" else ""),
                  flush=True)
    return records


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build/libflashattn_capi.so")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--hdims", default="64,128,256")
    ap.add_argument("--seqlens", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--modes", default="fwd,bwd")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--fp8", action="store_true",
                    help="forward: also time the FP8 (e4m3) kernel on e4m3 copies of the inputs")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time every implementation this many times, interleaved; report the median")
    args = ap.parse_args()

    torch.manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    fa = FlashAttnCapi(args.lib)
    gpu = torch.cuda.get_device_name(0)
    rep = 30 if args.quick else 100
    for mode in args.modes.split(","):
        records = []
        for d in [int(x) for x in args.hdims.split(",")]:
            for s in [int(x) for x in args.seqlens.split(",")]:
                records += measure(mode, fa, d, s, dtype, args.dtype, rep, args.rounds, args.fp8)
                torch.cuda.empty_cache()
        write_results(mode, records, args, gpu)


def write_results(mode, records, args, gpu):
    date = datetime.date.today().isoformat()
    tag = gpu.replace("NVIDIA ", "").split()[0].lower()
    # FA_COMMIT first: the GPU machine's copy of the tree may carry a stale .git.
    commit = os.environ.get("FA_COMMIT")
    if not commit:
        try:
            commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
        except Exception:
            commit = "unknown"
    rounds = getattr(args, "rounds", 1)
    meta = {"gpu": gpu, "driver": torch.cuda.get_device_properties(0).name, "torch": torch.__version__,
            "cuda": torch.version.cuda, "commit": commit, "date": date, "rounds": rounds}
    try:
        drv = subprocess.check_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], text=True)
        meta["driver"] = drv.strip().splitlines()[0]
    except Exception:
        pass
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{date}-{tag}-{mode}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1)

    # Ratio table: flashattn / sdpa_flash and / sdpa_cudnn at each point.
    def get(impl, d, s, c):
        for r in records:
            if r["impl"] == impl and r["d"] == d and r["seqlen"] == s and r["causal"] == c:
                return r["tflops"]
        return None

    how = f"; median of {rounds} interleaved rounds" if rounds > 1 else ""
    lines = [f"# {'Forward' if mode == 'fwd' else 'Backward'} TFLOP/s, {args.dtype}, {gpu} ({date}, commit {commit}{how})", "",
             "| d | seqlen | causal | flashattn | path | flashattn sm80 | flashattn fp8 | sdpa_flash | sdpa_cudnn | sdpa_efficient | vs flash | vs cudnn | fp8 vs cudnn |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in sorted({r["d"] for r in records}):
        for c in (False, True):
            for s in sorted({r["seqlen"] for r in records}):
                fa_t = get("flashattn", d, s, c)
                if fa_t is None:
                    continue
                fl, cu, ef = get("sdpa_flash", d, s, c), get("sdpa_cudnn", d, s, c), get("sdpa_efficient", d, s, c)
                s80 = get("flashattn_sm80", d, s, c)
                f8 = get("flashattn_fp8", d, s, c)
                path = next((r.get("path", "-") for r in records if r["impl"] == "flashattn" and r["d"] == d
                             and r["seqlen"] == s and r["causal"] == c), "-")
                fmt = lambda x: f"{x:.1f}" if x else "-"
                rat = lambda x: f"{fa_t / x:.2f}x" if x else "-"
                r8 = f"{f8 / cu:.2f}x" if f8 and cu else "-"
                lines.append(f"| {d} | {s} | {int(c)} | {fmt(fa_t)} | {path} | {fmt(s80)} | {fmt(f8)} | {fmt(fl)} | {fmt(cu)} | {fmt(ef)} | {rat(fl)} | {rat(cu)} | {r8} |")
    table = "\n".join(lines) + "\n"
    with open(stem + ".md", "w") as f:
        f.write(table)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        ds = sorted({r["d"] for r in records})
        fig, axes = plt.subplots(2, len(ds), figsize=(5 * len(ds), 8), squeeze=False)
        for col, d in enumerate(ds):
            for row, c in enumerate((False, True)):
                ax = axes[row][col]
                for impl in ["flashattn", "flashattn_sm80", "flashattn_fp8", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient"]:
                    pts = sorted((r["seqlen"], r["tflops"]) for r in records
                                 if r["impl"] == impl and r["d"] == d and r["causal"] == c)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
                ax.set_xscale("log", base=2)
                ax.set_title(f"{mode} d={d} {'causal' if c else 'non-causal'}")
                ax.set_xlabel("seqlen")
                ax.set_ylabel("TFLOP/s")
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(stem + ".png", dpi=80)
    except Exception as e:
        print(f"(no plot: {e})")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
