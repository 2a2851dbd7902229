#!/usr/bin/env python3
"""GPU decode benchmark: flashattn's mha_fwd_kvcache side by side with torch SDPA, one process.

The decode shape of docs/design.md (Performance protocol): s_q = 1, b = 8, h = 32, h_k = 8,
d = 128, bf16, KV length 4k..128k, contiguous cache and paged caches (page 16, 64, 256). The
figure of merit is GB/s of K+V read (the bytes of the whole cache, 2 * b * L * h_k * d * 2; one
pass over it is the least any exact kernel must read), next to the device copy bandwidth
measured in the same run (a device-to-device copy of 1 GiB, counted as bytes read + bytes
written).

Peers on the same tensors: SDPA's FLASH_ATTENTION (FlashAttention-2's kernels) and
CUDNN_ATTENTION, with GQA through `enable_gqa=True` (K/V read as stored, h_k heads); a backend
that refuses it is run on K/V repeated to h heads beforehand (outside the timing) and its record
says "gqa": "repeat_kv" (it then reads h / h_k = 4x the bytes; GB/s still counts the cache once,
so the times compare directly). SDPA has no paged cache; paged records compare with the
contiguous ones.

flashattn is called through the C ABI shim (libflashattn_capi.so, tools/capi.cpp) with per-sequence
cache_seqlens in device memory (the serving path: the forward reads them as seqused_k, split
heuristic, num_splits = 0) and, as "flashattn_scalar", with one host cache_seqlen.

Timing, two ways, both with input sets rotated through more than the 50 MB L2 (so no call finds
its K/V in L2):
  - "ms" / "gbps": median of triton.testing.do_bench, which zeroes a 256 MB buffer before every
    call. That leaves the L2 full of dirty lines, and the timed call pays for writing them back
    to DRAM while it reads its own K/V: ~10-15 us, a fifth of a 4k decode step's ~60 us;
  - "ms_noflush" / "gbps_noflush": median of per-call CUDA events with no flush, each call
    preceded by a GPU spin (torch.cuda._sleep, touches no memory) so the host is always ahead of
    the GPU and launch overhead is not timed. The L2 then holds clean lines of the previous
    call's inputs, as in a serving loop, and as in the device copy the ratio is taken against.

Writes <out>/<date>-<gpu>-decode.{json,md} (and .png when matplotlib is present) in the
results format of docs/design.md, records {"mode": "decode", "seqlen": KV length, "gbps", ...}.

  python3 benchmarks/bench_decode.py --lib build/libflashattn_capi.so --out benchmarks/results
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

# The same timer as the forward/backward benchmark (median of triton do_bench).
from bench_gpu import bench_ms  # noqa: E402  (benchmarks/ is the script directory)

B, H, HK, D = 8, 32, 8, 128


class FlashAttnCapi:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        f = self.lib.flashattn_capi_fwd_kvcache
        f.restype = ctypes.c_int
        P, I, I64, FL = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
        f.argtypes = ([P] * 5 + [I] * 7 + [ctypes.POINTER(ctypes.c_int64), I] +
                      [P, I, P, P, P, I64, I, I, I] +      # cache_seqlens .. num_blocks
                      [P, P, I] +                          # knew, vnew, seqlen_knew
                      [P, P, I, I, I] +                    # rotary
                      [FL, I, I, I, FL, P, I, P, ctypes.c_char_p, I])
        self.err = ctypes.create_string_buffer(512)

    def kvcache(self, q, k_cache, v_cache, o, lse, cache_seqlens=None, cache_seqlen=0,
                block_table=None, num_splits=0):
        """q (b, s_q, h, d); k/v_cache (b, L, h_k, d) or paged (num_blocks, page, h_k, d)."""
        b, sq, h, d = q.shape
        hk = k_cache.shape[2]
        if block_table is not None:
            page = k_cache.shape[1]
            max_blocks = block_table.shape[1]
            seqlen_k, num_blocks = max_blocks * page, k_cache.shape[0]
            bt, bt_stride = block_table.data_ptr(), block_table.stride(0)
        else:
            page = max_blocks = num_blocks = bt_stride = 0
            seqlen_k, bt = k_cache.shape[1], None
        strides = (ctypes.c_int64 * 18)(*(list(q.stride()[:3]) + list(k_cache.stride()[:3]) +
                                          list(v_cache.stride()[:3]) + list(o.stride()[:3]) +
                                          [0] * 6))
        dtype = {torch.float16: 1, torch.bfloat16: 2}[q.dtype]
        rc = self.lib.flashattn_capi_fwd_kvcache(
            q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), o.data_ptr(), lse.data_ptr(),
            dtype, b, sq, seqlen_k, h, hk, d, strides, b if block_table is None else 0,
            None if cache_seqlens is None else cache_seqlens.data_ptr(), cache_seqlen,
            None, None, bt, bt_stride, max_blocks, page, num_blocks,
            None, None, 0, None, None, 0, 0, 1,
            0.0, 0, -1, -1, 0.0, None, num_splits,
            ctypes.c_void_p(torch.cuda.current_stream().cuda_stream), self.err, 512)
        if rc != 0:
            raise RuntimeError(self.err.value.decode())


def sdpa(q, k, v, gqa):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          enable_gqa=gqa).transpose(1, 2)


SDPA_BACKENDS = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION}


def bench_ms_noflush(fn, warmup=25, rep=200, spin_cycles=1_000_000):
    """Median of per-call event times without an L2 flush; fn rotates its own inputs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(rep)]
    for start, end in events:
        torch.cuda._sleep(spin_cycles)  # ~0.5 ms of GPU time: the host queues fn meanwhile
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in events)
    return times[len(times) // 2]


def copy_bandwidth(rep):
    """Device-to-device copy of 1 GiB: (read + written bytes) / time, GB/s."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), rep=rep)
    del src, dst
    return 2 * n / (ms * 1e-3) / 1e9, ms


def to_paged(k, v, page, gen):
    """Scatter the contiguous caches into a pool of pages in random order."""
    b, L, hk, d = k.shape
    per_seq = L // page
    perm = torch.randperm(b * per_seq, generator=gen).to(device=k.device, dtype=torch.int32)
    table = perm.view(b, per_seq).contiguous()
    kp = torch.empty(b * per_seq, page, hk, d, dtype=k.dtype, device=k.device)
    vp = torch.empty_like(kp)
    kp[table.flatten().long()] = k.reshape(b * per_seq, page, hk, d)
    vp[table.flatten().long()] = v.reshape(b * per_seq, page, hk, d)
    return kp, vp, table


def measure(fa, L, dtype, dtype_name, pages, rep, copy_gbps):
    kv_bytes = 2 * B * L * HK * D * torch.tensor([], dtype=dtype).element_size()
    nsets = max(1, min(4, math.ceil(400e6 / kv_bytes)))  # rotate inputs past the 50 MB L2
    sets = []
    for _ in range(nsets):
        q = torch.randn(B, 1, H, D, device="cuda", dtype=dtype)
        k = torch.randn(B, L, HK, D, device="cuda", dtype=dtype)
        v = torch.randn(B, L, HK, D, device="cuda", dtype=dtype)
        sets.append({"q": q, "k": k, "v": v, "o": torch.empty_like(q),
                     "lse": torch.empty(B, H, 1, device="cuda", dtype=torch.float32)})
    seqlens = torch.full((B,), L, dtype=torch.int32, device="cuda")
    it = [0]

    def nxt():
        it[0] = (it[0] + 1) % nsets
        return sets[it[0]]

    records = []

    def record(impl, fn, page=None, **extra):
        ms, ms_nf = bench_ms(fn, rep=rep), bench_ms_noflush(fn, rep=rep)
        gbps, gbps_nf = kv_bytes / (ms * 1e-3) / 1e9, kv_bytes / (ms_nf * 1e-3) / 1e9
        records.append({"impl": impl, "mode": "decode", "dtype": dtype_name, "d": D, "seqlen": L,
                        "causal": False, "page_size": page, "ms": ms, "gbps": gbps,
                        "ms_noflush": ms_nf, "gbps_noflush": gbps_nf,
                        "b": B, "h": H, "h_k": HK, **extra})
        print(f"  decode {impl:22s} L={L:6d} page={str(page):4s} {ms * 1e3:9.1f} us "
              f"{gbps:7.0f} GB/s ({gbps / copy_gbps * 100:5.1f}% of copy); no flush "
              f"{ms_nf * 1e3:7.1f} us ({gbps_nf / copy_gbps * 100:5.1f}%)"
              + "".join(f" {k}={v}" for k, v in extra.items()), flush=True)

    # Correctness of the very calls that are timed, against SDPA in fp32 (math backend).
    s0 = sets[0]
    fa.kvcache(s0["q"], s0["k"], s0["v"], s0["o"], s0["lse"], cache_seqlens=seqlens)
    err = float("nan")
    if L <= 32768:
        with sdpa_kernel(SDPBackend.MATH):
            ref = sdpa(s0["q"].float(), s0["k"].float(), s0["v"].float(), True)
        err = (s0["o"].float() - ref).abs().max().item()
        del ref
    o_contiguous = s0["o"].clone()

    def run_fa(**kw):
        st = nxt()
        fa.kvcache(st["q"], st["k"], st["v"], st["o"], st["lse"], **kw)

    record("flashattn", lambda: run_fa(cache_seqlens=seqlens), max_err_vs_fp32=err)
    record("flashattn_scalar", lambda: run_fa(cache_seqlen=L))

    for name, backend in SDPA_BACKENDS.items():
        mode = "enable_gqa"
        try:
            with sdpa_kernel(backend):
                sdpa(s0["q"], s0["k"], s0["v"], True)
            torch.cuda.synchronize()
        except Exception as e:  # the backend refuses GQA: repeat K/V outside the timing
            print(f"  {name} L={L}: enable_gqa refused ({type(e).__name__}); repeating K/V")
            mode = "repeat_kv"
            for st in sets:
                st["k_rep"] = st["k"].repeat_interleave(H // HK, dim=2)
                st["v_rep"] = st["v"].repeat_interleave(H // HK, dim=2)

        def run(mode=mode):
            st = nxt()
            if mode == "enable_gqa":
                sdpa(st["q"], st["k"], st["v"], True)
            else:
                sdpa(st["q"], st["k_rep"], st["v_rep"], False)
        try:
            # The backend is selected once around the whole timing: entering sdpa_kernel per
            # call costs host time that a short decode step cannot hide.
            with sdpa_kernel(backend):
                record(name, run, gqa=mode)
        except Exception as e:
            print(f"  {name} L={L}: {type(e).__name__}: {e}".splitlines()[0])
        for st in sets:
            st.pop("k_rep", None)
            st.pop("v_rep", None)

    gen = torch.Generator().manual_seed(L)
    for page in pages:
        if L % page:
            continue
        psets = []
        for st in sets:
            kp, vp, table = to_paged(st["k"], st["v"], page, gen)
            psets.append((st["q"], kp, vp, st["o"], st["lse"], table))
        q, kp, vp, o, lse, table = psets[0]
        fa.kvcache(q, kp, vp, o, lse, cache_seqlens=seqlens, block_table=table)
        diff = (o.float() - o_contiguous.float()).abs().max().item()
        pit = [0]

        def run_paged():
            pit[0] = (pit[0] + 1) % len(psets)
            q, kp, vp, o, lse, table = psets[pit[0]]
            fa.kvcache(q, kp, vp, o, lse, cache_seqlens=seqlens, block_table=table)
        record("flashattn", run_paged, page=page, max_diff_vs_contiguous=diff)
        del psets, kp, vp, table
        torch.cuda.empty_cache()
    return records


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build/libflashattn_capi.so")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--kv", default="4096,8192,16384,32768,65536,131072")
    ap.add_argument("--pages", default="16,64,256")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()

    torch.manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    fa = FlashAttnCapi(args.lib)
    gpu = torch.cuda.get_device_name(0)
    rep = 50 if args.quick else 200
    copy_gbps, copy_ms = copy_bandwidth(rep)
    print(f"device copy bandwidth: {copy_gbps:.0f} GB/s (1 GiB in {copy_ms * 1e3:.0f} us)")
    records = [{"impl": "device_copy", "mode": "decode", "dtype": None, "d": None, "seqlen": None,
                "causal": None, "page_size": None, "ms": copy_ms, "gbps": copy_gbps}]
    pages = [int(x) for x in args.pages.split(",") if x]
    for L in [int(x) for x in args.kv.split(",")]:
        records += measure(fa, L, dtype, args.dtype, pages, rep, copy_gbps)
        torch.cuda.empty_cache()
    write_results(records, args, gpu, copy_gbps)


def write_results(records, args, gpu, copy_gbps):
    date = datetime.date.today().isoformat()
    tag = gpu.replace("NVIDIA ", "").split()[0].lower()
    # FA_COMMIT first: a copied working tree (the GPU machine's) may carry a stale .git.
    commit = os.environ.get("FA_COMMIT")
    if not commit:
        try:
            commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                             stderr=subprocess.DEVNULL).strip()
        except Exception:
            commit = "unknown"
    meta = {"gpu": gpu, "driver": "unknown", "torch": torch.__version__, "cuda": torch.version.cuda,
            "commit": commit, "date": date, "copy_gbps": copy_gbps,
            "shape": {"b": B, "h": H, "h_k": HK, "d": D, "s_q": 1}}
    try:
        drv = subprocess.check_output(["nvidia-smi", "--query-gpu=driver_version",
                                       "--format=csv,noheader"], text=True)
        meta["driver"] = drv.strip().splitlines()[0]
    except Exception:
        pass
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{date}-{tag}-decode")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1)

    def get(impl, L, page=None, key="gbps"):
        for r in records:
            if r["impl"] == impl and r["seqlen"] == L and r["page_size"] == page:
                return r.get(key)
        return None

    pages = sorted({r["page_size"] for r in records if r["page_size"] is not None})
    fmt = lambda x: f"{x:.0f}" if x else "-"
    rat = lambda a, b: f"{a / b:.2f}x" if a and b else "-"
    lines = [f"# Decode GB/s of K+V read, {args.dtype}, b={B} h={H} h_k={HK} d={D} s_q=1, {gpu} "
             f"({date}, commit {commit}); device copy {copy_gbps:.0f} GB/s", "",
             "| KV length | flashattn | scalar seqlen | sdpa_flash | sdpa_cudnn | vs flash | vs cudnn "
             "| % of copy | " + " | ".join(f"page {p}" for p in pages) + " |",
             "|---" * (8 + len(pages)) + "|"]
    lengths = sorted({r["seqlen"] for r in records if r["seqlen"] is not None})
    for L in lengths:
        fa = get("flashattn", L)
        fl, cu = get("sdpa_flash", L), get("sdpa_cudnn", L)
        paged = [get("flashattn", L, p) for p in pages]
        lines.append(f"| {L} | {fmt(fa)} | {fmt(get('flashattn_scalar', L))} | {fmt(fl)} | {fmt(cu)} "
                     f"| {rat(fa, fl)} | {rat(fa, cu)} | {fa / copy_gbps * 100:.0f}% | "
                     + " | ".join(f"{fmt(x)} ({rat(x, fa)})" for x in paged) + " |")
    if any("gbps_noflush" in r for r in records):
        nf = "gbps_noflush"
        lines += ["", "Without do_bench's L2 flush (per-call events, inputs rotated; see "
                  "benchmarks/bench_decode.py):", "",
                  "| KV length | flashattn | sdpa_flash | sdpa_cudnn | vs flash | vs cudnn "
                  "| % of copy | " + " | ".join(f"page {p}" for p in pages) + " |",
                  "|---" * (7 + len(pages)) + "|"]
        for L in lengths:
            fa = get("flashattn", L, key=nf)
            fl, cu = get("sdpa_flash", L, key=nf), get("sdpa_cudnn", L, key=nf)
            paged = [get("flashattn", L, p, key=nf) for p in pages]
            lines.append(f"| {L} | {fmt(fa)} | {fmt(fl)} | {fmt(cu)} | {rat(fa, fl)} | {rat(fa, cu)} "
                         f"| {fa / copy_gbps * 100:.0f}% | "
                         + " | ".join(f"{fmt(x)} ({rat(x, fa)})" for x in paged) + " |")
    table = "\n".join(lines) + "\n"
    with open(stem + ".md", "w") as f:
        f.write(table)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 5))
        series = [("flashattn", None), ("sdpa_flash", None), ("sdpa_cudnn", None)]
        series += [("flashattn", p) for p in pages]
        for impl, page in series:
            pts = sorted((r["seqlen"], r["gbps"]) for r in records
                         if r["impl"] == impl and r["page_size"] == page and r["seqlen"])
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                        label=impl + (f" page {page}" if page else ""))
        ax.axhline(copy_gbps, color="gray", linestyle="--", label="device copy")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("KV length")
        ax.set_ylabel("GB/s of K+V read")
        ax.set_title(f"decode b={B} h={H} h_k={HK} d={D} {args.dtype}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(stem + ".png", dpi=80)
    except Exception as e:
        print(f"(no plot: {e})")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
