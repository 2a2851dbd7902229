"""Loads the compiled adapter and registers the fake (meta) implementations of its ops.

Importing `flashattn._C` runs the extension's TORCH_LIBRARY block, which defines
`torch.ops.flashattn.{fwd, varlen_fwd, bwd, bwd_into, varlen_bwd, fwd_kvcache}` with CPU and
CUDA kernels. The fake implementations below tell torch.compile (and FakeTensor tracing in
general) the shape, dtype and device of every output without running anything, so compiled
graphs contain the ops as single nodes instead of breaking around them. They must agree exactly
with what csrc/torch/flashattn_ops.cpp allocates.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from flashattn import _C  # noqa: F401  (registers the ops)

Tensor = torch.Tensor


def _round_up_128(x):
    return (x + 127) // 128 * 128


def _rng_state_like() -> Tensor:
    # Host tensor: the backward hands the seed/offset to the library without a device read.
    return torch.empty((2,), dtype=torch.int64, device="cpu")


@torch.library.register_fake("flashattn::fwd")
def _fwd_fake(q: Tensor, k: Tensor, v: Tensor, alibi_slopes: Optional[Tensor], dropout_p: float,
              softmax_scale: float, causal: bool, window_size_left: int, window_size_right: int,
              softcap: float, return_softmax: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    b, seqlen_q, h, _ = q.shape
    seqlen_k = k.shape[1]
    out = q.new_empty(q.shape)
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
                     window_size_right: int, softcap: float,
                     return_softmax: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    total_q, h, _ = q.shape
    out = q.new_empty(q.shape)
    lse = q.new_empty((h, total_q), dtype=torch.float32)
    return out, lse, q.new_empty((0,)), _rng_state_like()


@torch.library.register_fake("flashattn::bwd")
def _bwd_fake(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, softmax_lse: Tensor,
              alibi_slopes: Optional[Tensor], dropout_p: float, softmax_scale: float,
              causal: bool, window_size_left: int, window_size_right: int, softcap: float,
              deterministic: bool, rng_state: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


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
                     rng_state: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@torch.library.register_fake("flashattn::fwd_kvcache")
def _fwd_kvcache_fake(q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor],
                      v: Optional[Tensor], rotary_cos: Optional[Tensor],
                      rotary_sin: Optional[Tensor], cache_seqlens: Optional[Tensor],
                      cache_seqlen: int, cache_batch_idx: Optional[Tensor],
                      cache_leftpad: Optional[Tensor], block_table: Optional[Tensor],
                      alibi_slopes: Optional[Tensor], softmax_scale: float, causal: bool,
                      window_size_left: int, window_size_right: int, softcap: float,
                      rotary_interleaved: bool, num_splits: int) -> Tuple[Tensor, Tensor]:
    b, seqlen_q, h, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((b, h, seqlen_q), dtype=torch.float32)


def build_info() -> dict:
    """What the linked library contains: version, CUDA archs, head dims, dtypes, CPU ISA."""
    return dict(_C.build_info())
