"""Loads the compiled adapter and tells torch what it needs to know about its ops.

Importing `flashattn._C` runs the extension's TORCH_LIBRARY block, which defines
`torch.ops.flashattn.{fwd, varlen_fwd, bwd, bwd_into, varlen_bwd, fwd_kvcache}` with CPU and CUDA kernels.
This module registers, for each op:
- a fake (meta) implementation: the shape, dtype and device of every output without running
  anything, so torch.compile (and FakeTensor tracing in general) keeps the op as one graph node.
  They must agree exactly with what csrc/torch/flashattn_ops.cpp allocates;
- for the two forwards, the backward formula (torch.library.register_autograd), which calls the
  backward ops (a `sinks` tensor that requires grad gets the backward's dsinks). Autograd on the
  ops themselves, rather than a torch.autograd.Function around them, is what torch.compile
  traces on every torch release: Dynamo in torch 2.15 refuses an autograd.Function that
  receives one tensor twice ("duplicate tensor input"), which every self-attention varlen call
  does (cu_seqlens_q is cu_seqlens_k), and flash_attn_func(x, x, x) too, while an op may take
  the same tensor for several arguments.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from flashattn import _C  # noqa: F401  (registers the ops)

Tensor = torch.Tensor

# Raised for every broken argument rule: both a ValueError and a RuntimeError (flash_attn's type).
InvalidArgumentError = _C.InvalidArgumentError


def _round_up_128(x):
    return (x + 127) // 128 * 128


def _rng_state_like() -> Tensor:
    # Host tensor: the backward hands the seed/offset to the library without a device read.
    return torch.empty((2,), dtype=torch.int64, device="cpu")


def _out_like(q: Tensor, v: Tensor) -> Tensor:
    # q's shape with v's head dim (v may have a head dim of its own).
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def _dsinks_like(q: Tensor, sinks: Optional[Tensor]) -> Tensor:
    # float32 (nheads,) with sinks, else empty: what the backward ops allocate.
    if sinks is not None:
        return sinks.new_empty(sinks.shape)
    return q.new_empty((0,), dtype=torch.float32)


@torch.library.register_fake("flashattn::fwd")
def _fwd_fake(q: Tensor, k: Tensor, v: Tensor, alibi_slopes: Optional[Tensor], dropout_p: float,
              softmax_scale: float, causal: bool, window_size_left: int, window_size_right: int,
              softcap: float, return_softmax: bool, deterministic: bool,
              sinks: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    b, seqlen_q, h, _ = q.shape
    seqlen_k = k.shape[1]
    out = _out_like(q, v)
    lse = q.new_empty((b, h, seqlen_q), dtype=torch.float32)
    if return_softmax:
        s_dmask = q.new_empty((b, h, _round_up_128(seqlen_q), _round_up_128(seqlen_k)))
    else:
        s_dmask = q.new_empty((0,))
    return out, lse, s_dmask, _rng_state_like()


@torch.library.register_fake("flashattn::varlen_fwd")
def _varlen_fwd_fake(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                     seqused_k: Optional[Tensor], block_table: Optional[Tensor],
                     alibi_slopes: Optional[Tensor], max_seqlen_q: int, max_seqlen_k: int,
                     dropout_p: float, softmax_scale: float, causal: bool, window_size_left: int,
                     window_size_right: int, softcap: float, return_softmax: bool,
                     deterministic: bool,
                     sinks: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    total_q, h, _ = q.shape
    out = _out_like(q, v)
    lse = q.new_empty((h, total_q), dtype=torch.float32)
    return out, lse, q.new_empty((0,)), _rng_state_like()


@torch.library.register_fake("flashattn::bwd")
def _bwd_fake(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, softmax_lse: Tensor,
              alibi_slopes: Optional[Tensor], dropout_p: float, softmax_scale: float,
              causal: bool, window_size_left: int, window_size_right: int, softcap: float,
              deterministic: bool, rng_state: Tensor,
              sinks: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            _dsinks_like(q, sinks))


@torch.library.register_fake("flashattn::bwd_into")
def _bwd_into_fake(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                   softmax_lse: Tensor, dq: Tensor, dk: Tensor, dv: Tensor, accumulate: bool,
                   alibi_slopes: Optional[Tensor], dropout_p: float, softmax_scale: float,
                   causal: bool, window_size_left: int, window_size_right: int, softcap: float,
                   deterministic: bool, rng_state: Tensor) -> None:
    # Writes (or adds to) dq, dk, dv in place; no outputs.
    return None


@torch.library.register_fake("flashattn::varlen_bwd")
def _varlen_bwd_fake(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                     softmax_lse: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                     seqused_k: Optional[Tensor], alibi_slopes: Optional[Tensor],
                     max_seqlen_q: int, max_seqlen_k: int, dropout_p: float,
                     softmax_scale: float, causal: bool, window_size_left: int,
                     window_size_right: int, softcap: float, deterministic: bool,
                     rng_state: Tensor,
                     sinks: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            _dsinks_like(q, sinks))


@torch.library.register_fake("flashattn::fwd_kvcache")
def _fwd_kvcache_fake(q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor],
                      v: Optional[Tensor], rotary_cos: Optional[Tensor],
                      rotary_sin: Optional[Tensor], cache_seqlens: Optional[Tensor],
                      cache_seqlen: int, cache_batch_idx: Optional[Tensor],
                      cache_leftpad: Optional[Tensor], block_table: Optional[Tensor],
                      alibi_slopes: Optional[Tensor], softmax_scale: float, causal: bool,
                      window_size_left: int, window_size_right: int, softcap: float,
                      rotary_interleaved: bool, num_splits: int,
                      sinks: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    b, seqlen_q, h, _ = q.shape
    return _out_like(q, v_cache), q.new_empty((b, h, seqlen_q), dtype=torch.float32)


@torch.library.register_fake("flashattn::fp8_fwd")
def _fp8_fwd_fake(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Optional[Tensor],
                  cu_seqlens_k: Optional[Tensor], seqused_k: Optional[Tensor],
                  block_table: Optional[Tensor], max_seqlen_q: int, max_seqlen_k: int,
                  q_descale: Optional[Tensor], k_descale: Optional[Tensor],
                  v_descale: Optional[Tensor], q_block_descale: Optional[Tensor],
                  k_block_descale: Optional[Tensor], v_block_descale: Optional[Tensor],
                  descale_block_m: int, descale_block_n: int, alibi_slopes: Optional[Tensor],
                  softmax_scale: float, causal: bool, window_size_left: int,
                  window_size_right: int, softcap: float, out_dtype: Optional[torch.dtype],
                  sinks: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    out = q.new_empty((*q.shape[:-1], v.shape[-1]), dtype=out_dtype or torch.bfloat16)
    if cu_seqlens_q is not None:
        total_q, h, _ = q.shape
        return out, q.new_empty((h, total_q), dtype=torch.float32)
    b, seqlen_q, h, _ = q.shape
    return out, q.new_empty((b, h, seqlen_q), dtype=torch.float32)


# ------------------------------------------------------------------------------ autograd --
# setup_context runs inside the forward with the op's inputs (every argument, in schema order)
# and outputs; backward gets one gradient per output and returns one per input (None for the
# non-tensor arguments and the index arrays; dsinks for sinks, which autograd drops when sinks
# does not require grad). The LSE and S_dmask are marked non-differentiable: a gradient through
# them would be silently dropped otherwise.

def _fwd_setup_context(ctx, inputs, output):
    (q, k, v, alibi_slopes, dropout_p, softmax_scale, causal, window_size_left,
     window_size_right, softcap, _return_softmax, deterministic) = inputs[:12]
    sinks = inputs[12] if len(inputs) > 12 else None
    out, lse, s_dmask, rng_state = output
    ctx.save_for_backward(q, k, v, out, lse, rng_state, alibi_slopes, sinks)
    ctx.options = (dropout_p, softmax_scale, causal, window_size_left, window_size_right,
                   softcap, deterministic)
    ctx.mark_non_differentiable(lse, s_dmask)


def _fwd_backward(ctx, dout, *_unused):
    q, k, v, out, lse, rng_state, alibi_slopes, sinks = ctx.saved_tensors
    (dropout_p, softmax_scale, causal, window_size_left, window_size_right, softcap,
     deterministic) = ctx.options
    # The kernels need a contiguous last dimension; autograd does not promise one.
    dq, dk, dv, dsinks = torch.ops.flashattn.bwd(
        dout.contiguous(), q, k, v, out, lse, alibi_slopes, dropout_p, softmax_scale, causal,
        window_size_left, window_size_right, softcap, deterministic, rng_state, sinks)
    return (dq, dk, dv) + (None,) * 9 + (dsinks if sinks is not None else None,)


def _varlen_fwd_setup_context(ctx, inputs, output):
    (q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table, alibi_slopes, max_seqlen_q,
     max_seqlen_k, dropout_p, softmax_scale, causal, window_size_left, window_size_right,
     softcap, _return_softmax, deterministic) = inputs[:18]
    sinks = inputs[18] if len(inputs) > 18 else None
    out, lse, s_dmask, rng_state = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k, rng_state,
                          alibi_slopes, sinks)
    ctx.paged = block_table is not None
    ctx.options = (max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
                   window_size_left, window_size_right, softcap, deterministic)
    ctx.mark_non_differentiable(lse, s_dmask)


def _varlen_fwd_backward(ctx, dout, *_unused):
    if ctx.paged:
        raise NotImplementedError("flashattn: paged KV (block_table) has no backward")
    (q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k, rng_state, alibi_slopes,
     sinks) = ctx.saved_tensors
    (max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal, window_size_left,
     window_size_right, softcap, deterministic) = ctx.options
    dq, dk, dv, dsinks = torch.ops.flashattn.varlen_bwd(
        dout.contiguous(), q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k,
        alibi_slopes, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
        window_size_left, window_size_right, softcap, deterministic, rng_state, sinks)
    return (dq, dk, dv) + (None,) * 15 + (dsinks if sinks is not None else None,)


torch.library.register_autograd("flashattn::fwd", _fwd_backward,
                                setup_context=_fwd_setup_context)
torch.library.register_autograd("flashattn::varlen_fwd", _varlen_fwd_backward,
                                setup_context=_varlen_fwd_setup_context)


def build_info() -> dict:
    """What the linked library contains: version, CUDA archs, head dims, dtypes, CPU ISA."""
    return dict(_C.build_info())
