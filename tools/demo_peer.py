#!/usr/bin/env python3
"""The peer half of `make demo`: times the best attention the user already has (torch SDPA) on
the shape, dtype and device flashattn-bench just ran, and says how the two compare.

    flashattn-bench ... > out.txt && python3 tools/demo_peer.py out.txt

It reads everything from the bench's own output (its first line names the mode, dtype and
shape; `device:` and `time:` the device and the median), so the two always measure the same
problem with the same protocol: WARMUP untimed calls (the bench's default), then the median of
as many timed calls as the bench made, each timed alone (CUDA events around the call on the GPU,
wall clock on the CPU), no cache flushing. On the GPU every SDPA backend that accepts the
problem is timed (FLASH_ATTENTION, CUDNN_ATTENTION, EFFICIENT_ATTENTION) and the fastest is the
peer. Inputs are made in SDPA's preferred (b, h, s, d) layout. Without torch, or with features
SDPA has no kernel for (sliding window, softcap, ALiBi), it says that there is no peer and exits
0: the demo itself does not depend on it.
"""
from __future__ import annotations

import contextlib
import re
import statistics
import sys
import time
import warnings

WARMUP = 2


def parse(text: str) -> dict:
    """The problem and flashattn's result from flashattn-bench's output."""
    head = re.search(r"^flashattn-bench \S+: (fwd|bwd) (bf16|fp16|fp32) b=(\d+) s_q=(\d+) "
                     r"s_k=(\d+) h=(\d+) h_k=(\d+) d=(\d+)(.*)$", text, re.M)
    device = re.search(r"^device: (cuda|cpu)\b(.*)$", text, re.M)
    timing = re.search(r"^time: ([\d.]+) ms \(median of (\d+)\)\s+([\d.]+) TFLOP/s", text, re.M)
    if not (head and device and timing):
        raise ValueError("no flashattn-bench result in the input")
    flags = head.group(9).split()
    return dict(mode=head.group(1), dtype=head.group(2), b=int(head.group(3)),
                s_q=int(head.group(4)), s_k=int(head.group(5)), h=int(head.group(6)),
                h_k=int(head.group(7)), d=int(head.group(8)), causal="causal" in flags,
                flags=flags, device=device.group(1), ms=float(timing.group(1)),
                iters=int(timing.group(2)))


def flops(r: dict) -> float:
    """FlashAttention's count, as the bench prints it: 4 b s_q s_k h d, halved when causal,
    2.5x for the backward."""
    f = 4.0 * r["b"] * r["s_q"] * r["s_k"] * r["h"] * r["d"]
    return f * (0.5 if r["causal"] else 1.0) * (2.5 if r["mode"] == "bwd" else 1.0)


def time_sdpa(torch, r: dict, backend) -> float:
    """Median ms of SDPA (forward, or backward alone after one forward) under `backend`."""
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[r["dtype"]]
    dev = r["device"]
    gen = torch.Generator(device="cpu").manual_seed(0)

    def make(heads: int, s: int):
        x = torch.rand(r["b"], heads, s, r["d"], generator=gen) * 2 - 1
        return x.to(dev, dtype).requires_grad_(r["mode"] == "bwd")

    q, k, v = make(r["h"], r["s_q"]), make(r["h_k"], r["s_k"]), make(r["h_k"], r["s_k"])
    kwargs = {}
    if r["h"] != r["h_k"]:
        kwargs["enable_gqa"] = True
    if r["causal"] and r["s_q"] == r["s_k"]:
        kwargs["is_causal"] = True
    elif r["causal"]:
        # flashattn's causal mask is aligned to the bottom-right corner, SDPA's is_causal to the
        # top-left; this bias object keeps the fused kernels.
        from torch.nn.attention.bias import causal_lower_right
        kwargs["attn_mask"] = causal_lower_right(r["s_q"], r["s_k"])
    for flag in r["flags"]:
        if flag.startswith("dropout="):
            kwargs["dropout_p"] = float(flag.split("=", 1)[1])

    def run():
        return F.scaled_dot_product_attention(q, k, v, **kwargs)

    with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
        if r["mode"] == "bwd":
            out = run()
            dout = torch.rand_like(out)

            def call():
                torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
        else:
            call = run
        times = []
        for i in range(WARMUP + r["iters"]):
            if dev == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                call()
                end.record()
                end.synchronize()
                ms = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                call()
                ms = (time.perf_counter() - t0) * 1e3
            if i >= WARMUP:
                times.append(ms)
    return statistics.median(times)


def peer(r: dict) -> list[str]:
    """The lines the demo prints for the peer."""
    unsupported = [f for f in ("window", "softcap", "alibi") if f in r["flags"]]
    if unsupported:
        return [f"peer: none available (torch SDPA has no fused kernel with "
                f"{', '.join(unsupported)})"]
    try:
        import torch
        from torch.nn.attention import SDPBackend  # noqa: F401  (torch >= 2.3)
    except ImportError as e:
        return [f"peer: none available (torch SDPA is not importable: {e})"]
    if r["device"] == "cuda" and not torch.cuda.is_available():
        return [f"peer: none available (torch {torch.__version__} sees no CUDA device)"]

    from torch.nn.attention import SDPBackend
    if r["device"] == "cuda":
        candidates = {"FLASH_ATTENTION": SDPBackend.FLASH_ATTENTION,
                      "CUDNN_ATTENTION": SDPBackend.CUDNN_ATTENTION,
                      "EFFICIENT_ATTENTION": SDPBackend.EFFICIENT_ATTENTION}
        where = f"cuda ({torch.cuda.get_device_name()})"
    else:
        candidates = {"default": None}
        where = f"cpu ({torch.get_num_threads()} threads)"
    results, refused = {}, []
    for name, backend in candidates.items():
        try:
            with warnings.catch_warnings():  # a refusing backend warns why, then raises
                warnings.simplefilter("ignore")
                results[name] = time_sdpa(torch, r, backend)
        except (RuntimeError, TypeError):  # refused: dtype, head dim, GPU, or an older torch
            refused.append(name)
    if not results:
        return [f"peer: none available (no torch {torch.__version__} SDPA backend on {where} "
                f"takes this problem)"]
    best = min(results, key=results.get)
    label = "SDPA" if best == "default" else f"SDPA {best}"
    others = ", ".join(f"{n} {ms:.3f} ms" for n, ms in results.items() if n != best)
    if refused:
        others = ", ".join(filter(None, [others, "refused: " + ", ".join(refused)]))
    tflops = flops(r) / (results[best] * 1e-3) / 1e12
    ratio = results[best] / r["ms"]
    verdict = "faster" if ratio > 1 else "slower"
    lines = [f"peer: torch {torch.__version__} {label} on {where}: {results[best]:.3f} ms "
             f"(median of {r['iters']})  {tflops:.2f} TFLOP/s  ({tflops * 1e3:.1f} GFLOP/s)" +
             (f"  [{others}]" if others else "")]
    lines.append(f"flashattn vs peer: {ratio:.2f}x the speed of torch {label} ({verdict})")
    return lines


def main(argv: list[str]) -> int:
    text = open(argv[1]).read() if len(argv) > 1 else sys.stdin.read()
    try:
        r = parse(text)
    except ValueError as e:
        print(f"peer: none available ({e})")
        return 0
    for line in peer(r):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
