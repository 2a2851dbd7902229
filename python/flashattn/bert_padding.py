"""Padding helpers for the varlen functions, with flash_attn 2.8's `bert_padding` interface.

A padded batch (batch, seqlen, ...) plus an attention mask becomes the packed rows the varlen
functions take ((total, ...) with cu_seqlens), and back:

    x_unpad, indices, cu_seqlens, max_seqlen, seqused = unpad_input(x, attention_mask)
    out_unpad = flash_attn_varlen_func(q_unpad, k_unpad, v_unpad, cu_seqlens, cu_seqlens,
                                       max_seqlen, max_seqlen)
    out = pad_input(out_unpad, indices, batch, seqlen)

The gather/scatter along the first axis are autograd Functions whose backward is the matching
scatter/gather over the same (unique) indices, instead of the generic indexing backward that
accumulates through atomics.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = [
    "IndexFirstAxis",
    "IndexFirstAxisResidual",
    "IndexPutFirstAxis",
    "index_first_axis",
    "index_first_axis_residual",
    "index_put_first_axis",
    "pad_input",
    "unpad_input",
    "unpad_input_for_concatenated_sequences",
]


class IndexFirstAxis(torch.autograd.Function):
    """out = input[indices] along the first axis; backward scatters into zeros."""

    @staticmethod
    def forward(ctx, input: Tensor, indices: Tensor) -> Tensor:
        ctx.save_for_backward(indices)
        ctx.first_axis_dim = input.shape[0]
        return torch.index_select(input, 0, indices)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (indices,) = ctx.saved_tensors
        grad_input = grad_output.new_zeros((ctx.first_axis_dim, *grad_output.shape[1:]))
        grad_input.index_copy_(0, indices, grad_output)
        return grad_input, None


index_first_axis = IndexFirstAxis.apply


class IndexPutFirstAxis(torch.autograd.Function):
    """out = zeros(first_axis_dim, ...); out[indices] = values; backward gathers."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, first_axis_dim: int) -> Tensor:
        ctx.save_for_backward(indices)
        output = values.new_zeros((first_axis_dim, *values.shape[1:]))
        output.index_copy_(0, indices, values)
        return output

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (indices,) = ctx.saved_tensors
        return torch.index_select(grad_output, 0, indices), None, None


index_put_first_axis = IndexPutFirstAxis.apply


class IndexFirstAxisResidual(torch.autograd.Function):
    """Like IndexFirstAxis but also returns `input` itself, so a residual branch that keeps the
    padded tensor and the gathered rows share one backward (gradients of both add up)."""

    @staticmethod
    def forward(ctx, input: Tensor, indices: Tensor) -> Tuple[Tensor, Tensor]:
        ctx.save_for_backward(indices)
        return torch.index_select(input, 0, indices), input.detach()

    @staticmethod
    def backward(ctx, grad_output: Tensor, grad_residual: Tensor):
        (indices,) = ctx.saved_tensors
        grad_input = grad_residual.clone()
        grad_input.index_add_(0, indices, grad_output)
        return grad_input, None


index_first_axis_residual = IndexFirstAxisResidual.apply


def _flatten_batch(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def unpad_input(
    hidden_states: Tensor,
    attention_mask: Tensor,
    unused_mask: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor, int, Tensor]:
    """Packs the valid tokens of a padded batch.

    Arguments:
        hidden_states: (batch, seqlen, ...).
        attention_mask: (batch, seqlen) bool/int, 1 = a token that is attended to.
        unused_mask: (batch, seqlen) optional, 1 = a token that is kept in the packed rows but
            not attended to (it counts in cu_seqlens, not in seqused).
    Returns:
        hidden_states (total, ...) with total the number of selected tokens;
        indices (total,) int64 positions in the flattened (batch * seqlen) input;
        cu_seqlens (batch + 1,) int32;
        max_seqlen_in_batch (Python int: one host read here, so none is needed later);
        seqused (batch,) int32 tokens per sequence that are attended to.
    """
    all_masks = attention_mask + unused_mask if unused_mask is not None else attention_mask
    seqlens_in_batch = all_masks.sum(dim=-1, dtype=torch.int32)
    used_seqlens_in_batch = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = int(seqlens_in_batch.max().item()) if seqlens_in_batch.numel() else 0
    cu_seqlens = F.pad(torch.cumsum(seqlens_in_batch, dim=0, dtype=torch.int32), (1, 0))
    return (
        index_first_axis(_flatten_batch(hidden_states), indices),
        indices,
        cu_seqlens,
        max_seqlen_in_batch,
        used_seqlens_in_batch,
    )


def unpad_input_for_concatenated_sequences(
    hidden_states: Tensor, attention_mask_in_length: Tensor
) -> Tuple[Tensor, Tensor, Tensor, int]:
    """Unpads rows that each hold several concatenated sequences.

    attention_mask_in_length (batch, seqlen) lists, per row, the lengths of the sequences packed
    into it followed by zeros, e.g. [[2, 3, 0, 0, 0, 0], [3, 2, 0, 0, 0, 0]] for two rows of
    length 6 holding sequences of 2+3 and 3+2 tokens. Every sequence becomes its own varlen entry.
    Returns (hidden_states (total, ...), indices, cu_seqlens, max_seqlen_in_batch).
    """
    length = attention_mask_in_length.sum(dim=-1)
    seqlen = attention_mask_in_length.shape[-1]
    positions = torch.arange(seqlen, device=length.device)
    attention_mask_2d = (positions.expand(len(length), seqlen) < length.unsqueeze(1))
    real_lengths = attention_mask_in_length.flatten()
    seqlens_in_batch = real_lengths[real_lengths.nonzero().squeeze(-1)].to(torch.int32)
    indices = torch.nonzero(attention_mask_2d.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = int(seqlens_in_batch.max().item()) if seqlens_in_batch.numel() else 0
    cu_seqlens = F.pad(torch.cumsum(seqlens_in_batch, dim=0, dtype=torch.int32), (1, 0))
    return (
        index_first_axis(_flatten_batch(hidden_states), indices),
        indices,
        cu_seqlens,
        max_seqlen_in_batch,
    )


def pad_input(hidden_states: Tensor, indices: Tensor, batch: int, seqlen: int) -> Tensor:
    """Inverse of unpad_input: (total, ...) rows back to (batch, seqlen, ...), zeros elsewhere."""
    output = index_put_first_axis(hidden_states, indices, batch * seqlen)
    return output.reshape(batch, seqlen, *hidden_states.shape[1:])
