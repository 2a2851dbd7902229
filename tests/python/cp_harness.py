"""Shared by test_cp.py and the processes it spawns: cases, inputs, the emulated and the
distributed runs of one case, and the single-device and reference results to compare them with.

Kept free of pytest so the spawned ranks can import it. A case is a plain dict:
    variant   "ring" (contiguous layout), "zigzag" or "ulysses"
    api       "func", "kvpacked" or "qkvpacked" (ring variants only)
    causal, dtype (str), b, s (global sequence length), h, h_k, d, softcap, seed
    subgroup  optional list of global ranks: run on dist.new_group(subgroup) instead of WORLD
"""
from __future__ import annotations

import os
from typing import Dict, List

import torch
import torch.distributed as dist

import flashattn
from flashattn import cp
from flashattn.cp import emulate

from attn_ref import attention_ref, ref_dtype

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GRADS = ("dq", "dk", "dv")


def layout_of(case: dict) -> str:
    return "zigzag" if case["variant"] == "zigzag" else "contiguous"


def full_inputs(case: dict) -> Dict[str, torch.Tensor]:
    """The whole-sequence q, k, v, dout of a case (the same on every rank: seeded)."""
    g = torch.Generator().manual_seed(case["seed"])
    dtype = DTYPES[case["dtype"]]
    b, s, h, h_k, d = case["b"], case["s"], case["h"], case["h_k"], case["d"]
    make = lambda *shape: torch.randn(*shape, generator=g).to(dtype)  # noqa: E731
    return {"q": make(b, s, h, d), "k": make(b, s, h_k, d), "v": make(b, s, h_k, d),
            "dout": make(b, s, h, d)}


def shards(case: dict, x: torch.Tensor, world: int, dim: int = 1) -> List[torch.Tensor]:
    return [cp.shard_sequence(x, dim=dim, layout=layout_of(case), rank=r, world_size=world)
            for r in range(world)]


def join(case: dict, xs: List[torch.Tensor], dim: int = 1) -> torch.Tensor:
    return cp.join_shards(xs, dim=dim, layout=layout_of(case))


def run_emulated(case: dict, world: int) -> List[Dict[str, torch.Tensor]]:
    """Every rank's out, lse, dq, dk, dv from the emulator."""
    x = full_inputs(case)
    qs, ks, vs, ds = (shards(case, x[n], world) for n in ("q", "k", "v", "dout"))
    kw = dict(causal=case["causal"], softcap=case.get("softcap", 0.0))
    if case["variant"] == "ulysses":
        outs, lses, saved = emulate.ulysses_forward(qs, ks, vs, **kw)
        dqs, dks, dvs = emulate.ulysses_backward(ds, saved, case["h_k"], **kw)
    else:
        outs, lses = emulate.ring_forward(qs, ks, vs, layout=layout_of(case), **kw)
        dqs, dks, dvs = emulate.ring_backward(ds, qs, ks, vs, outs, lses, layout=layout_of(case),
                                              **kw)
    return [dict(out=outs[r], lse=lses[r], dq=dqs[r], dk=dks[r], dv=dvs[r])
            for r in range(world)]


def joined(case: dict, per_rank: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Whole-sequence results from per-rank ones."""
    res = {n: join(case, [r[n] for r in per_rank]) for n in ("out",) + GRADS}
    res["lse"] = join(case, [r["lse"] for r in per_rank], dim=2)
    return res


def single_device(case: dict) -> Dict[str, torch.Tensor]:
    """flash_attn_func on the whole sequence (what CP must reproduce)."""
    x = full_inputs(case)
    q, k, v = (x[n].clone().requires_grad_() for n in ("q", "k", "v"))
    out, lse, _ = flashattn.flash_attn_func(q, k, v, causal=case["causal"],
                                            softcap=case.get("softcap", 0.0),
                                            return_attn_probs=True)
    out.backward(x["dout"])
    return dict(out=out.detach(), lse=lse, dq=q.grad, dk=k.grad, dv=v.grad)


def reference(case: dict, upcast: bool) -> Dict[str, torch.Tensor]:
    """The plain-torch reference on the whole sequence, in high precision (upcast) or in the
    input dtype, with autograd gradients."""
    x = full_inputs(case)
    # Leaves in the computation's dtype, so the gradients are not rounded to the inputs' one.
    dtype = ref_dtype(x["q"].dtype) if upcast else x["q"].dtype
    q, k, v = (x[n].to(dtype).requires_grad_() for n in ("q", "k", "v"))
    out, lse = attention_ref(q, k, v, causal=case["causal"], softcap=case.get("softcap", 0.0),
                             upcast=upcast)
    out.backward(x["dout"].to(out.dtype))
    return dict(out=out.detach(), lse=lse.detach(), dq=q.grad, dk=k.grad, dv=v.grad)


# ---------------------------------------------------------------------- spawned ranks --

def _run_case_distributed(case: dict, group) -> Dict[str, torch.Tensor]:
    """This rank's results through the public API, with autograd."""
    layout = layout_of(case)
    x = full_inputs(case)
    q, k, v, dout = (cp.shard_sequence(x[n], group, layout=layout)
                     for n in ("q", "k", "v", "dout"))
    kw = dict(causal=case["causal"], softcap=case.get("softcap", 0.0), return_attn_probs=True,
              group=group)
    variant, api = case["variant"], case.get("api", "func")
    if variant == "ulysses":
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, lse, none = cp.ulysses_flash_attn_func(*leaves, **kw)
    elif api == "func":
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        fn = cp.zigzag_ring_flash_attn_func if variant == "zigzag" else cp.ring_flash_attn_func
        out, lse, none = fn(*leaves, **kw)
    elif api == "kvpacked":
        leaves = [q.clone().requires_grad_(), torch.stack((k, v), dim=2).requires_grad_()]
        fn = (cp.zigzag_ring_flash_attn_kvpacked_func if variant == "zigzag"
              else cp.ring_flash_attn_kvpacked_func)
        out, lse, none = fn(*leaves, **kw)
    else:
        leaves = [torch.stack((q, k, v), dim=2).requires_grad_()]
        fn = (cp.zigzag_ring_flash_attn_qkvpacked_func if variant == "zigzag"
              else cp.ring_flash_attn_qkvpacked_func)
        out, lse, none = fn(*leaves, **kw)
    assert none is None
    out.backward(dout)
    if api == "func" or variant == "ulysses":
        dq, dk, dv = (t.grad for t in leaves)
    elif api == "kvpacked":
        dq, (dk, dv) = leaves[0].grad, leaves[1].grad.unbind(dim=2)
    else:
        dq, dk, dv = leaves[0].grad.unbind(dim=2)
    res = dict(out=out.detach(), lse=lse, dq=dq, dk=dk, dv=dv)
    # The gather helper: every rank gets the whole output.
    res["out_gathered"] = cp.unshard_sequence(res["out"], group, layout=layout)
    return res


def rank_main(rank: int, world: int, workdir: str, cases: List[dict]) -> None:
    """Entry point of one spawned rank: runs every case and saves this rank's results."""
    torch.set_num_threads(1)
    os.environ["FLASHATTN_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{workdir}/rendezvous", rank=rank,
                            world_size=world)
    try:
        results = []
        for case in cases:
            sub = case.get("subgroup")
            # new_group is collective over the whole world, members or not.
            group = dist.new_group(sub) if sub is not None else None
            if sub is not None and rank not in sub:
                results.append(None)
                continue
            results.append(_run_case_distributed(case, group))
        torch.save(results, os.path.join(workdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
