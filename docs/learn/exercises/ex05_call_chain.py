#!/usr/bin/env python3
"""Exercise 5 (docs/learn/05-fa2-map-and-call-chain.md): walk the call chain through the code.

The page lists the hops from `flash_attn_func` to the CUDA kernel, on both kernel paths after
`run_routed` (FORWARD: the SM80 path; FORWARD_SM90: the Hopper path). This script checks every hop
against the sources: in file F, the body of function G calls H. If a refactor renames or
re-routes a hop, this fails and the page must be updated with it.

Your turn: add the backward chain (FORWARD is the model): `_fwd_backward` (the backward that
python/flashattn/_ops.py registers on the fwd op) -> `torch.ops.flashattn.bwd` ->
flashattn_torch::bwd -> flashattn::mha_bwd -> bwd_entry -> cuda::mha_bwd -> run_mha_bwd ->
run_bwd_sm80 -> ... -> flash_bwd_sm80_kernel. The first hops are already in BACKWARD below.
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

# (file, function whose body is searched, text that must appear in that body)
FORWARD = [
    ("python/flashattn/flash_attn_interface.py", "flash_attn_func", "_attn_dense"),
    ("python/flashattn/flash_attn_interface.py", "_attn_dense", "torch.ops.flashattn.fwd"),
    ("csrc/torch/flashattn_ops.cpp", "TORCH_LIBRARY_IMPL", 'm.impl("fwd", &flashattn_torch::fwd)'),
    ("csrc/torch/flashattn_ops.cpp", "fwd", "flashattn::mha_fwd(p)"),
    ("src/api/api.cpp", "mha_fwd", "fwd_entry"),
    ("src/api/api.cpp", "fwd_entry", "detail::validate_fwd"),
    ("src/api/api.cpp", "fwd_entry", "FA_CUDA_FN(mha_fwd)"),
    ("src/cuda/dispatch.cu", "mha_fwd", "run_mha_fwd"),
    ("src/cuda/fwd_dispatch.cu", "run_mha_fwd", "run_routed"),
    ("src/cuda/fwd_dispatch.cu", "run_routed", "route::choose_fwd_path"),
    ("src/cuda/fwd_dispatch.cu", "run_routed", "run_compiled(p, cache, hd, splits)"),
    ("src/cuda/fwd_dispatch.cu", "run_routed", "run_compiled_sm90("),
    # The SM80 path, every GPU of compute capability 8.0+.
    ("src/cuda/fwd_dispatch.cu", "run_compiled", "run_family<kDtype, kHeadDim>"),
    ("src/cuda/fwd_dispatch.cu", "run_family", "sm80::run_fwd_sm80<kDtype, kHeadDim>"),
    ("src/sm80/launch_fwd_sm80.cuh", "run_fwd_sm80", "run_fwd_plain_sm80"),
    ("src/sm80/launch_fwd_sm80.cuh", "run_fwd_plain_sm80", "launch_fwd_sm80"),
    ("src/sm80/launch_fwd_sm80.cuh", "launch_fwd_sm80", "launch_fwd_kernel_sm80"),
    ("src/sm80/launch_fwd_sm80.cuh", "launch_fwd_kernel_sm80", "flash_fwd_sm80_kernel<Kernel"),
    ("src/sm80/kernel_fwd_sm80.cuh", "flash_fwd_sm80_kernel", "Kernel{}(args, smem)"),
    ("src/sm80/kernel_fwd_sm80.cuh", "operator()", "run_tile("),
    ("src/sm80/kernel_fwd_sm80.cuh", "run_tile", "Mainloop{}.run("),
    ("src/sm80/kernel_fwd_sm80.cuh", "run_tile", "epilogue.store("),
]

# The Hopper path (docs/learn/09-hopper.md), where route::choose_fwd_path picks it.
FORWARD_SM90 = [
    ("src/api/route.cpp", "choose_fwd_path", "fwd_sm90_uncovered"),
    ("src/cuda/fwd_dispatch.cu", "run_compiled_sm90", "sm90::run_fwd_sm90<kDtype, kHeadDim>"),
    ("src/sm90/launch_fwd_sm90.cuh", "run_fwd_sm90", "launch_fwd_sm90<Traits"),
    ("src/sm90/launch_fwd_sm90.cuh", "launch_fwd_sm90", "flash_fwd_sm90_kernel<Kernel>"),
    ("src/sm90/kernel_fwd_sm90.cuh", "flash_fwd_sm90_kernel", "Kernel{}(args, smem)"),
    ("src/sm90/kernel_fwd_sm90.cuh", "operator()", "mainloop.load("),
    ("src/sm90/kernel_fwd_sm90.cuh", "operator()", "mainloop.mma("),
    ("src/sm90/kernel_fwd_sm90.cuh", "operator()", "epilogue.store("),
]

BACKWARD = [
    # Autograd is registered on the op (torch.library.register_autograd), not an autograd.Function.
    ("python/flashattn/_ops.py", "_fwd_backward", "torch.ops.flashattn.bwd"),
    ("src/api/api.cpp", "mha_bwd", "bwd_entry"),
]


def python_body(path: Path, qualname: str) -> str:
    tree = ast.parse(path.read_text())
    scope = tree.body
    node = None
    for part in qualname.split("."):
        node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                     and n.name == part), None)
        assert node is not None, f"{path}: no {qualname}"
        scope = node.body
    return ast.get_source_segment(path.read_text(), node)


def cpp_bodies(path: Path, name: str) -> list[str]:
    """The brace-balanced bodies of every definition of `name` (functions, or TORCH_LIBRARY_IMPL)."""
    text = path.read_text()
    bodies = []
    for m in re.finditer(r"(?<![\w:.])" + re.escape(name) + r"\s*(<[^;{}()]*>)?\s*\(", text):
        # Skip to the parameter list's end, then expect a body (not a call or a declaration).
        depth, i = 0, m.end() - 1
        while i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
            if depth == 0:
                break
        brace = re.match(r"[^;{}]*?\{", text[i:])
        if not brace or re.search(r"[;=]", text[i:i + brace.end() - 1]):
            continue
        j = i + brace.end()
        depth = 1
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        bodies.append(text[m.start():j])
    return bodies


def check(chain):
    for rel, func, callee in chain:
        path = ROOT / rel
        bodies = [python_body(path, func)] if rel.endswith(".py") else cpp_bodies(path, func)
        assert bodies, f"{rel}: no definition of {func}"
        assert any(callee in b for b in bodies), f"{rel}: {func} does not call {callee}"


check(FORWARD)
check(FORWARD_SM90)
check(BACKWARD)
print(f"ex05: {len(FORWARD)} forward hops (SM80 path), {len(FORWARD_SM90)} on the Hopper path and "
      f"{len(BACKWARD)} backward hops found in the code")
