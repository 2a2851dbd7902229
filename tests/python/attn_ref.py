"""Test helpers: a plain-torch reference attention and flash_attn's error rule.

The reference materializes the full score matrix and applies the semantics of docs/semantics.md
one step at a time (scale, softcap, ALiBi, bottom-right aligned causal/window masks, GQA, dropout
from an explicit keep mask, seqused_k, attention sinks as one more softmax column that has no
value, v with a head dim of its own), so it is slow and obviously right. Tests compare the
library against it computed in high precision (`upcast=True`: fp32, or fp64 for fp32 inputs) and
bound the library's error by a multiple of the error the same reference makes when computed in
the input dtype (flash_attn's "2x rule").
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch

Tensor = torch.Tensor


def ref_dtype(dtype: torch.dtype) -> torch.dtype:
    """High-precision dtype of the reference for inputs of `dtype`."""
    return torch.float64 if dtype == torch.float32 else torch.float32


def visible_mask(seqlen_q: int, seqlen_k: int, causal: bool, window_size: Sequence[int],
                 device, keys_used: Optional[int] = None) -> Tensor:
    """(seqlen_q, seqlen_k) bool: key j visible to query i (bottom-right aligned windows)."""
    left, right = window_size
    if causal:
        right = 0
    i = torch.arange(seqlen_q, device=device).unsqueeze(1)
    j = torch.arange(seqlen_k, device=device).unsqueeze(0)
    shift = i + seqlen_k - seqlen_q
    visible = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if left >= 0:
        visible &= j >= shift - left
    if right >= 0:
        visible &= j <= shift + right
    if keys_used is not None:
        visible &= j < keys_used
    return visible


def attention_ref(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
                  window_size: Sequence[int] = (-1, -1), softcap: float = 0.0,
                  alibi_slopes: Optional[Tensor] = None, softmax_scale: Optional[float] = None,
                  dropout_p: float = 0.0, keep_mask: Optional[Tensor] = None,
                  seqused_k: Optional[Sequence[int]] = None, sinks: Optional[Tensor] = None,
                  upcast: bool = True) -> Tuple[Tensor, Tensor]:
    """Dense attention, q (b, s_q, h, d), k (b, s_k, h_k, d), v (b, s_k, h_k, dv).
    Returns (out (b, s_q, h, dv), lse (b, h, s_q)).

    upcast=True computes in ref_dtype(q.dtype) and returns that dtype; upcast=False computes in
    the input dtype, the way a low-precision implementation of the same math would.
    keep_mask (b, h, s_q, s_k) bool: dropout's kept entries (kept probabilities scaled by
    1/(1 - dropout_p)). sinks (h,): one logit per head appended to every row's scores (after
    scale, softcap, ALiBi and the mask), so it takes its share of the softmax and adds no value;
    differentiable like q, k, v.
    """
    dtype = ref_dtype(q.dtype) if upcast else q.dtype
    b, seqlen_q, h, d = q.shape
    seqlen_k, h_k = k.shape[1], k.shape[2]
    qc, kc, vc = (x.to(dtype) for x in (q, k, v))
    kc = kc.repeat_interleave(h // h_k, dim=2)
    vc = vc.repeat_interleave(h // h_k, dim=2)
    scale = 1.0 / math.sqrt(d) if softmax_scale is None else softmax_scale
    scores = torch.einsum("bqhd,bkhd->bhqk", qc * scale, kc)
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(dtype)
        slopes = slopes.view(1, h, 1, 1) if slopes.dim() == 1 else slopes.view(b, h, 1, 1)
        i = torch.arange(seqlen_q, device=q.device).view(-1, 1)
        j = torch.arange(seqlen_k, device=q.device).view(1, -1)
        dist = (i + seqlen_k - seqlen_q - j).abs().to(dtype)
        scores = scores - slopes * dist
    masks = []
    for bi in range(b):
        used = None if seqused_k is None else int(seqused_k[bi])
        masks.append(visible_mask(seqlen_q, seqlen_k, causal, window_size, q.device, used))
    visible = torch.stack(masks).unsqueeze(1)  # (b, 1, s_q, s_k)
    scores = scores.masked_fill(~visible, float("-inf"))
    if sinks is not None:
        # The sink column: every row has a finite entry, so no row is empty any more.
        sink_col = sinks.to(dtype).view(1, h, 1, 1).expand(b, h, seqlen_q, 1)
        ext = torch.cat([scores, sink_col], dim=-1)
        lse = torch.logsumexp(ext.float() if dtype != torch.float64 else ext, dim=-1)
        probs = torch.softmax(ext, dim=-1)[..., :-1]
    else:
        lse = torch.logsumexp(scores.float() if dtype != torch.float64 else scores, dim=-1)
        probs = torch.softmax(scores, dim=-1)
        # Rows with no visible key: zero output (the softmax of all -inf is NaN).
        empty_row = ~visible.any(dim=-1, keepdim=True)
        probs = probs.masked_fill(empty_row, 0.0)
        lse = lse.masked_fill(empty_row.squeeze(-1), float("inf"))
    if keep_mask is not None:
        probs = probs.masked_fill(~keep_mask, 0.0) / (1.0 - dropout_p)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, vc)
    return out, lse


def attention_ref_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: List[int],
                         cu_seqlens_k: List[int], **kwargs) -> Tuple[Tensor, Tensor]:
    """Varlen reference: each sequence on its own through attention_ref (masks aligned per
    sequence). q (total_q, h, d), k (total_k, h_k, d), v (total_k, h_k, dv). Returns
    (out (total_q, h, dv), lse (h, total_q))."""
    outs, lses = [], []
    alibi = kwargs.pop("alibi_slopes", None)
    for i in range(len(cu_seqlens_q) - 1):
        qs = q[cu_seqlens_q[i]:cu_seqlens_q[i + 1]].unsqueeze(0)
        ks = k[cu_seqlens_k[i]:cu_seqlens_k[i + 1]].unsqueeze(0)
        vs = v[cu_seqlens_k[i]:cu_seqlens_k[i + 1]].unsqueeze(0)
        slopes = None
        if alibi is not None:
            slopes = alibi if alibi.dim() == 1 else alibi[i]
        o, lse = attention_ref(qs, ks, vs, alibi_slopes=slopes, **kwargs)
        outs.append(o[0])
        lses.append(lse[0])
    return torch.cat(outs, dim=0), torch.cat(lses, dim=1)


def max_err(a: Tensor, b: Tensor) -> float:
    """Max |a - b|; equal entries (including matching infinities) count as 0, and a NaN or an
    infinity where the other has a finite value makes the error inf."""
    if a.numel() == 0:
        return 0.0
    a64, b64 = a.double(), b.double()
    diff = (a64 - b64).abs()
    diff = diff.masked_fill(a64 == b64, 0.0)
    diff = torch.nan_to_num(diff, nan=float("inf"))
    return diff.max().item()


def assert_close_2x(actual: Tensor, ref: Tensor, ref_lowp: Tensor, what: str,
                    factor: float = 2.0, floor: float = 1e-5) -> None:
    """flash_attn's rule: |actual - ref| <= factor * |ref_lowp - ref| (max norms).

    `floor` is an absolute allowance for the case where the low-precision reference happens to be
    exact (its error is then 0 and any rounding difference would fail); it is far below one ulp
    of fp16/bf16 at the magnitudes tested.
    """
    assert actual.shape == ref.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(actual).any(), f"{what}: NaN in the result"
    assert torch.equal(torch.isinf(actual), torch.isinf(ref)), f"{what}: inf positions differ"
    err = max_err(actual, ref)
    err_lowp = max_err(ref_lowp, ref)
    bound = factor * err_lowp + floor
    assert err <= bound, (f"{what}: max error {err:.3e} > {factor}x the low-precision reference's "
                          f"{err_lowp:.3e} (+{floor:g})")


def random_seqlens(batch: int, max_len: int, generator: torch.Generator,
                   allow_zero: bool = True) -> List[int]:
    lo = 0 if allow_zero else 1
    return torch.randint(lo, max_len + 1, (batch,), generator=generator).tolist()


def cu_seqlens_of(seqlens: Sequence[int]) -> List[int]:
    cu = [0]
    for s in seqlens:
        cu.append(cu[-1] + int(s))
    return cu


def alibi_slopes_for(nheads: int, batch: Optional[int], device) -> Tensor:
    """ALiBi slopes of the usual geometric form, (nheads,) or (batch, nheads) with jitter."""
    base = torch.tensor([2.0 ** (-8.0 * (i + 1) / nheads) for i in range(nheads)])
    if batch is None:
        return base.to(device)
    return (base.unsqueeze(0) * (0.5 + torch.rand(batch, 1))).to(device)
