"""Shared test setup: import flashattn (or skip), device/dtype helpers, kernel availability.

Every test module starts with `torch = pytest.importorskip("torch")`, then imports from here, so
without torch (CI) or without an installed flashattn the whole suite skips. Set
FLASHATTN_TEST_REQUIRE=1 to turn a missing or broken flashattn into an error instead (the GPU
runs do, so a failed build cannot pass as skipped tests).
"""
from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")

if os.environ.get("FLASHATTN_TEST_REQUIRE"):
    import flashattn
else:
    flashattn = pytest.importorskip("flashattn")

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

# Head dims of the GPU kernel families; a head dim runs on the smallest family that holds it
# (after padding to a multiple of 8).
_KERNEL_HEAD_DIMS = (32, 64, 96, 128, 192, 256)


def kernel_head_dim(d: int) -> int:
    padded = (d + 7) // 8 * 8
    return next(k for k in _KERNEL_HEAD_DIMS if k >= padded)


def skip_unless_gpu_kernel(d: int, dtype) -> None:
    """Skips when this build has no GPU kernel for (head dim, dtype) (FA_HDIMS/FA_DTYPES)."""
    info = flashattn.build_info()
    if not info["cuda"]:
        pytest.skip("flashattn was built without CUDA kernels")
    name = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    if name not in info["dtypes"]:
        pytest.skip(f"{name} kernels not built (FA_DTYPES={info['dtypes']})")
    if kernel_head_dim(d) not in info["head_dims"]:
        pytest.skip(f"head dim {kernel_head_dim(d)} kernels not built (FA_HDIMS={info['head_dims']})")


def call_or_skip_not_implemented(fn, *args, **kwargs):
    """Runs fn; a NotImplementedError from the library (a kernel another change is adding) skips
    the test with the library's message, so the test turns on by itself when the kernel lands."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as e:
        pytest.skip(f"not implemented yet: {e}")


def seeded_generator(seed: int) -> "torch.Generator":
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def randn(shape, dtype, device, generator, scale: float = 1.0):
    """Random normal tensor drawn on the CPU (reproducible across devices) then moved."""
    return (torch.randn(shape, generator=generator) * scale).to(dtype=dtype, device=device)
