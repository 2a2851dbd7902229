"""Merging partial attention results by their log-sum-exp, in fp32.

A partial result over a set of keys K_i is (o_i, lse_i) with lse_i = log sum_{j in K_i} exp(s_j)
and o_i the softmax-weighted mean of v over K_i. Over the union of disjoint key sets:

    lse = log(exp(lse_1) + exp(lse_2))                    (torch.logaddexp)
    o   = exp(lse_1 - lse) * o_1 + exp(lse_2 - lse) * o_2

A row with no visible key has lse = -inf in this formula (an empty sum), so it adds nothing.
flashattn's kernels report such rows with lse = +inf instead (docs/semantics.md), which would
swamp the merge: it is mapped to -inf on the way in, and back to +inf at the end for rows that
saw no key on any step.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

_INF = float("inf")


def empty_partial(out_like: Tensor, lse_shape) -> tuple:
    """The merge's starting point: o = 0 (fp32), lse = -inf (no key yet)."""
    out = torch.zeros(out_like.shape, dtype=torch.float32, device=out_like.device)
    lse = torch.full(lse_shape, -_INF, dtype=torch.float32, device=out_like.device)
    return out, lse


def merge_(out: Tensor, lse: Tensor, o_i: Tensor, lse_i: Tensor) -> None:
    """Merges the partial (o_i, lse_i) into (out, lse) in place.

    out: (b, s, h, d) fp32, lse: (b, h, s) fp32 (views allowed); o_i like out in any float
    dtype; lse_i like lse, flashattn's convention (+inf for a row without keys).
    """
    lse_i = torch.where(lse_i == _INF, -_INF, lse_i)
    new = torch.logaddexp(lse, lse_i)
    # Rows still without any key: both weights must be 0, not exp(-inf - -inf) = NaN.
    ref = torch.where(new == -_INF, 0.0, new)
    w_old = torch.exp(lse - ref).transpose(1, 2).unsqueeze(-1)
    w_new = torch.exp(lse_i - ref).transpose(1, 2).unsqueeze(-1)
    out.mul_(w_old).add_(o_i.float() * w_new)
    lse.copy_(new)


def finalize_lse(lse: Tensor) -> Tensor:
    """flashattn's convention for the merged LSE: +inf where no step saw a key."""
    return torch.where(lse == -_INF, _INF, lse)
