#!/usr/bin/env python3
"""Peak device memory of torch SDPA FLASH_ATTENTION backward at the standard grid's s = 16k
(b = 1, h = 16, d = 128, bf16; docs/design.md): torch allocator peak during autograd.grad minus
what was allocated before the call. flashattn workspace is measured by
benchmarks/cpp/bwd_bench_sm80.cu --mem (docs/sm80_backward.md).
"""
import torch
from torch.nn.attention import sdpa_kernel, SDPBackend
import torch.nn.functional as F
b, s, h, d = 1, 16384, 16, 128
for causal in (False, True):
    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    do = torch.randn_like(out)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    grads = 3 * q.numel() * 2
    print(f"sdpa_flash bwd causal={causal}: peak over inputs {peak / 2**20:.1f} MiB, of which dq/dk/dv "
          f"{grads / 2**20:.1f} MiB, workspace {(peak - grads) / 2**20:.1f} MiB")
    del q, k, v, out, do, dq, dk, dv
    torch.cuda.empty_cache()
