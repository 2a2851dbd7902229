"""flash_attn 2.x's public functions over flashattn's custom ops.

Every function here has flash_attn 2.x's name, parameter names, order, defaults and return values
(the table in docs/python.md, "API"), so `import flashattn as flash_attn` is the whole port.
The work happens in `torch.ops.flashattn.*` (csrc/torch/flashattn_ops.cpp), on the GPU for CUDA
tensors and on the CPU backend for CPU tensors; this module adds what flash_attn's Python layer
adds: the default softmax scale, head dims padded to a multiple of 8 on the GPU and packed-input
unpacking. Autograd is registered on the forward ops themselves (flashattn/_ops.py).

Beyond flash_attn 2.x, every function takes `sinks` (learnable attention sinks, float32
(nheads,), one logit per query head that joins each row's softmax denominator and contributes
no value; gradients flow to it), and v may have a head dim of its own (out has v's head dim);
docs/python.md.

FP8: flash_attn_func and flash_attn_varlen_func (and the packed forms) take q, k, v in
torch.float8_e4m3fn with FlashAttention-3's q_descale / k_descale / v_descale (float32
(batch, nheads_k)) and per-block descales (q_block_descale, k_block_descale, v_block_descale with
descale_block=(rows of q, rows of k/v) per factor), keyword only; out is bfloat16 (or out_dtype).
Forward only. CUDA tensors run the Hopper FP8 kernel (dense inputs, per-head descales, head dim a
multiple of 16, on an H100 / H200); other fp8 CUDA calls raise NotImplementedError naming what is
not covered, and CPU tensors run every case on the CPU backend (docs/fp8.md).

Nothing here reads device memory (no .item(), no data-dependent Python branches), so the
functions run under torch.compile(fullgraph=True) and inside CUDA graph capture.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from flashattn import _ops  # noqa: F401  (loads the extension and the fake implementations)

Tensor = torch.Tensor

__all__ = [
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
]

# The GPU kernels move 16-byte vectors, so head dims are padded to a multiple of 8 elements.
_HEAD_DIM_MULTIPLE = 8


def _maybe_contiguous(x: Optional[Tensor]) -> Optional[Tensor]:
    # flash_attn's rule: only the last dimension must be contiguous; other strides are free.
    return x.contiguous() if x is not None and x.stride(-1) != 1 else x


def _window(window_size: Sequence[int]) -> Tuple[int, int]:
    if len(window_size) != 2:
        raise ValueError(f"window_size must be (left, right), got {tuple(window_size)}")
    return int(window_size[0]), int(window_size[1])


def _needs_padding(*xs: Tensor) -> bool:
    # The CPU backend takes any head dim; only the GPU kernels need the multiple of 8.
    return any(x.is_cuda and x.shape[-1] % _HEAD_DIM_MULTIPLE != 0 for x in xs)


def _pad_head_dim(x: Tensor) -> Tensor:
    pad = -x.shape[-1] % _HEAD_DIM_MULTIPLE
    return F.pad(x, [0, pad])


def _check_softmax_scale(softmax_scale: Optional[float], head_dim: int) -> float:
    # Computed on the head dim the caller passed, before any padding.
    return head_dim ** (-0.5) if softmax_scale is None else float(softmax_scale)


_FP8 = torch.float8_e4m3fn
_FP8_ARGS = ("q_descale", "k_descale", "v_descale", "q_block_descale", "k_block_descale",
             "v_block_descale", "descale_block", "out_dtype")


def _fp8_options(q: Tensor, k: Tensor, v: Tensor, fp8: dict) -> bool:
    """Whether this is an FP8 call; a clear error for every mix that is not one."""
    is_fp8 = [x.dtype == _FP8 for x in (q, k, v)]
    if any(is_fp8) and not all(is_fp8):
        raise ValueError("flashattn: q, k and v must all be float8_e4m3fn or none, got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    if not any(is_fp8):
        given = [n for n in _FP8_ARGS if fp8.get(n) is not None]
        if given:
            raise ValueError(f"flashattn: {', '.join(given)} apply to float8_e4m3fn inputs "
                             f"only; q is {q.dtype}")
        return False
    return True


def _fp8_call(q, k, v, cu_seqlens_q, cu_seqlens_k, block_table, max_seqlen_q, max_seqlen_k,
              dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
              return_attn_probs, sinks, fp8: dict):
    if dropout_p > 0:
        raise ValueError("flashattn: dropout is not available with float8_e4m3fn inputs "
                         "(forward-only inference)")
    if (sinks is not None and sinks.requires_grad) or any(
            x is not None and x.requires_grad for x in (alibi_slopes,)):
        raise ValueError("flashattn: float8_e4m3fn attention has no backward")
    block = fp8.get("descale_block")
    has_blocks = any(fp8.get(n) is not None
                     for n in ("q_block_descale", "k_block_descale", "v_block_descale"))
    if has_blocks and block is None:
        raise ValueError("flashattn: per-block descales need descale_block=(rows of q, rows "
                         "of k and v per factor)")
    if block is not None and (len(block) != 2 or not has_blocks):
        raise ValueError("flashattn: descale_block=(block_m, block_n) goes with "
                         "q/k/v_block_descale")
    block_m, block_n = (int(block[0]), int(block[1])) if block is not None else (0, 0)
    softmax_scale = _check_softmax_scale(softmax_scale, q.shape[-1])
    q, k, v = (_maybe_contiguous(x) for x in (q, k, v))
    window = _window(window_size)
    out, lse = torch.ops.flashattn.fp8_fwd(
        q, k, v, cu_seqlens_q, cu_seqlens_k, None, block_table, int(max_seqlen_q),
        int(max_seqlen_k), fp8.get("q_descale"), fp8.get("k_descale"), fp8.get("v_descale"),
        fp8.get("q_block_descale"), fp8.get("k_block_descale"), fp8.get("v_block_descale"),
        block_m, block_n, alibi_slopes, softmax_scale, bool(causal), window[0], window[1],
        float(softcap), fp8.get("out_dtype"), sinks)
    return (out, lse, out.new_empty((0,))) if return_attn_probs else out


def _attn_dense(q: Tensor, k: Tensor, v: Tensor, dropout_p: float,
                softmax_scale: Optional[float], causal: bool, window_size: Sequence[int],
                softcap: float, alibi_slopes: Optional[Tensor], deterministic: bool,
                return_attn_probs: bool, sinks: Optional[Tensor], fp8: Optional[dict] = None):
    if _fp8_options(q, k, v, fp8 or {}):
        return _fp8_call(q, k, v, None, None, None, 0, 0, dropout_p, softmax_scale, causal,
                         window_size, softcap, alibi_slopes, return_attn_probs, sinks, fp8 or {})
    softmax_scale = _check_softmax_scale(softmax_scale, q.shape[-1])
    head_dim_v = v.shape[-1]
    q, k, v = (_maybe_contiguous(x) for x in (q, k, v))
    padded = _needs_padding(q, v)
    if padded:
        q, k, v = (_pad_head_dim(x) for x in (q, k, v))
    window = _window(window_size)
    out, lse, s_dmask, _ = torch.ops.flashattn.fwd(
        q, k, v, alibi_slopes, float(dropout_p), softmax_scale, bool(causal), window[0],
        window[1], float(softcap), bool(return_attn_probs and dropout_p > 0), bool(deterministic),
        sinks)
    if padded:
        out = out[..., :head_dim_v]
    return (out, lse, s_dmask) if return_attn_probs else out


def _attn_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                 max_seqlen_q: int, max_seqlen_k: int, dropout_p: float,
                 softmax_scale: Optional[float], causal: bool, window_size: Sequence[int],
                 softcap: float, alibi_slopes: Optional[Tensor], deterministic: bool,
                 return_attn_probs: bool, block_table: Optional[Tensor],
                 sinks: Optional[Tensor], fp8: Optional[dict] = None):
    if _fp8_options(q, k, v, fp8 or {}):
        return _fp8_call(q, k, v, cu_seqlens_q, cu_seqlens_k, block_table, max_seqlen_q,
                         max_seqlen_k, dropout_p, softmax_scale, causal, window_size, softcap,
                         alibi_slopes, return_attn_probs, sinks, fp8 or {})
    softmax_scale = _check_softmax_scale(softmax_scale, q.shape[-1])
    head_dim_v = v.shape[-1]
    q, k, v = (_maybe_contiguous(x) for x in (q, k, v))
    padded = _needs_padding(q, v)
    if padded:
        q, k, v = (_pad_head_dim(x) for x in (q, k, v))
    window = _window(window_size)
    out, lse, s_dmask, _ = torch.ops.flashattn.varlen_fwd(
        q, k, v, cu_seqlens_q, cu_seqlens_k, None, block_table, alibi_slopes, int(max_seqlen_q),
        int(max_seqlen_k), float(dropout_p), softmax_scale, bool(causal), window[0], window[1],
        float(softcap), bool(return_attn_probs and dropout_p > 0), bool(deterministic), sinks)
    if padded:
        out = out[..., :head_dim_v]
    return (out, lse, s_dmask) if return_attn_probs else out


def flash_attn_qkvpacked_func(
    qkv: Tensor,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    *,
    sinks: Optional[Tensor] = None,
):
    """Attention over packed qkv (batch, seqlen, 3, nheads, headdim) (self-attention, MHA).

    Returns out (batch, seqlen, nheads, headdim), or (out, softmax_lse, S_dmask) with
    return_attn_probs. Gradients flow back into qkv (and sinks).
    """
    q, k, v = qkv.unbind(dim=2)
    return _attn_dense(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                       alibi_slopes, deterministic, return_attn_probs, sinks)


def flash_attn_kvpacked_func(
    q: Tensor,
    kv: Tensor,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    *,
    sinks: Optional[Tensor] = None,
):
    """Attention with q (batch, seqlen_q, nheads, headdim) and packed kv
    (batch, seqlen_k, 2, nheads_k, headdim); nheads % nheads_k == 0 (GQA/MQA)."""
    k, v = kv.unbind(dim=2)
    return _attn_dense(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                       alibi_slopes, deterministic, return_attn_probs, sinks)


def flash_attn_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    *,
    sinks: Optional[Tensor] = None,
    q_descale: Optional[Tensor] = None,
    k_descale: Optional[Tensor] = None,
    v_descale: Optional[Tensor] = None,
    q_block_descale: Optional[Tensor] = None,
    k_block_descale: Optional[Tensor] = None,
    v_block_descale: Optional[Tensor] = None,
    descale_block: Optional[Tuple[int, int]] = None,
    out_dtype: Optional[torch.dtype] = None,
):
    """Exact attention softmax(q k^T * softmax_scale) v.

    Arguments:
        q: (batch, seqlen_q, nheads, headdim); k: (batch, seqlen_k, nheads_k, headdim);
            v: (batch, seqlen_k, nheads_k, headdim_v), headdim_v any head dim (the GPU kernels
            need headdim_v == headdim for now), with nheads % nheads_k == 0 (GQA/MQA). fp16 or
            bf16 on the GPU; CPU tensors (fp32 too) run on the CPU backend.
        dropout_p: dropout probability on the attention weights (0.0 for evaluation).
        softmax_scale: defaults to 1 / sqrt(headdim).
        causal: causal mask aligned to the bottom-right corner of the score matrix.
        window_size: (left, right) sliding window, -1 = unbounded; query i sees keys
            [i + seqlen_k - seqlen_q - left, i + seqlen_k - seqlen_q + right].
        softcap: > 0 applies softcap * tanh(scores / softcap).
        alibi_slopes: fp32 (nheads,) or (batch, nheads); adds -slope * |i + seqlen_k - seqlen_q - j|.
        deterministic: bitwise reproducible backward.
        return_attn_probs: also return softmax_lse (batch, nheads, seqlen_q) fp32 and S_dmask
            (the attention probabilities, negated where dropped, when dropout_p > 0; else an
            empty tensor). For testing only.
        sinks: learnable attention sinks, fp32 (nheads,) (keyword only; CPU and CUDA tensors,
            forward and backward): sinks[h] joins every softmax row of head
            h as one more logit, P_ij = exp(s_ij) / (exp(sinks[h]) + sum_j exp(s_ij)), taking
            probability mass and adding no value; softmax_lse includes it. Not scaled, capped or
            ALiBi-shifted. Gradients flow to it when it requires grad.
        q_descale, k_descale, v_descale: FP8 only (q, k, v float8_e4m3fn; on CUDA, Hopper GPUs):
            float32 (batch, nheads_k), as FlashAttention-3; an element x of q stands for
            x * q_descale[b, h // (nheads // nheads_k)] (and so on for k, v).
        q_block_descale, k_block_descale, v_block_descale, descale_block: FP8 per-block
            factors, float32 (batch, nheads, ceil(seqlen_q / block_m)) for q and
            (batch, nheads_k, ceil(seqlen_k / block_n)) for k and v, descale_block =
            (block_m, block_n) rows per factor; they multiply with the per-head ones.
        out_dtype: FP8 only: torch.bfloat16 (default) or torch.float16.
    Returns:
        out (batch, seqlen_q, nheads, headdim_v), or (out, softmax_lse, S_dmask).
    """
    fp8 = dict(q_descale=q_descale, k_descale=k_descale, v_descale=v_descale,
               q_block_descale=q_block_descale, k_block_descale=k_block_descale,
               v_block_descale=v_block_descale, descale_block=descale_block, out_dtype=out_dtype)
    return _attn_dense(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                       alibi_slopes, deterministic, return_attn_probs, sinks, fp8)


def flash_attn_varlen_qkvpacked_func(
    qkv: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    *,
    sinks: Optional[Tensor] = None,
):
    """Variable-length attention over packed qkv (total, 3, nheads, headdim).

    cu_seqlens: (batch + 1,) int32 cumulative sequence lengths; max_seqlen: the longest sequence
    (a Python int, so no device read is needed). softmax_lse is (nheads, total).
    """
    q, k, v = qkv.unbind(dim=1)
    return _attn_varlen(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p,
                        softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                        return_attn_probs, None, sinks)


def flash_attn_varlen_kvpacked_func(
    q: Tensor,
    kv: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    *,
    sinks: Optional[Tensor] = None,
):
    """Variable-length attention with q (total_q, nheads, headdim) and packed kv
    (total_k, 2, nheads_k, headdim)."""
    k, v = kv.unbind(dim=1)
    return _attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                        dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                        deterministic, return_attn_probs, None, sinks)


def flash_attn_varlen_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    block_table: Optional[Tensor] = None,
    *,
    sinks: Optional[Tensor] = None,
    q_descale: Optional[Tensor] = None,
    k_descale: Optional[Tensor] = None,
    v_descale: Optional[Tensor] = None,
    q_block_descale: Optional[Tensor] = None,
    k_block_descale: Optional[Tensor] = None,
    v_block_descale: Optional[Tensor] = None,
    descale_block: Optional[Tuple[int, int]] = None,
    out_dtype: Optional[torch.dtype] = None,
):
    """Variable-length attention: q (total_q, nheads, headdim), k (total_k, nheads_k, headdim),
    v (total_k, nheads_k, headdim_v).

    Sequence i owns rows cu_seqlens_q[i]:cu_seqlens_q[i+1] of q (and likewise of k, v);
    causal and window masks are aligned per sequence. With block_table (batch, max_blocks) int32,
    k and v are a paged cache (num_blocks, page_block_size, nheads_k, headdim) (forward only).
    softmax_lse is (nheads, total_q). sinks and the FP8 arguments: as in flash_attn_func, with
    rows counted within each sequence (per-block factors of sequence i start at its first row;
    seqlen_q / seqlen_k are max_seqlen_q / max_seqlen_k).
    """
    fp8 = dict(q_descale=q_descale, k_descale=k_descale, v_descale=v_descale,
               q_block_descale=q_block_descale, k_block_descale=k_block_descale,
               v_block_descale=v_block_descale, descale_block=descale_block, out_dtype=out_dtype)
    return _attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                        dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                        deterministic, return_attn_probs, block_table, sinks, fp8)


def flash_attn_with_kvcache(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    k: Optional[Tensor] = None,
    v: Optional[Tensor] = None,
    rotary_cos: Optional[Tensor] = None,
    rotary_sin: Optional[Tensor] = None,
    cache_seqlens: Optional[Union[int, Tensor]] = None,
    cache_batch_idx: Optional[Tensor] = None,
    cache_leftpad: Optional[Tensor] = None,
    block_table: Optional[Tensor] = None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    rotary_interleaved: bool = True,
    alibi_slopes: Optional[Tensor] = None,
    num_splits: int = 0,
    return_softmax_lse: bool = False,
    *,
    sinks: Optional[Tensor] = None,
):
    """Attention of q against a KV cache, for incremental decoding (no backward).

    If k, v (batch, seqlen_new, nheads_k, headdim) are given they are written into k_cache/v_cache
    IN PLACE at positions cache_seqlens (rotated first when rotary_cos/sin are given), and
    attention then covers the cache including them.

    Arguments:
        q: (batch, seqlen_q, nheads, headdim).
        k_cache, v_cache: (batch_cache, seqlen_cache, nheads_k, headdim), or with block_table
            (num_blocks, page_block_size, nheads_k, headdim); v_cache (and v) may have a head
            dim of its own, headdim_v, which out then has.
        rotary_cos, rotary_sin: (seqlen_ro, rotary_dim / 2); interleaved pairs or GPT-NeoX halves
            (rotary_interleaved=False).
        cache_seqlens: int or (batch,) int32: tokens already in each cache row.
        cache_batch_idx: (batch,) int32 rows of the cache to use (default arange(batch)).
        cache_leftpad: (batch,) int32 first valid cache index per row.
        block_table: (batch, max_blocks_per_seq) int32 for a paged cache.
        num_splits: split-KV chunks (0 = heuristic, 1 = no split).
        return_softmax_lse: also return softmax_lse (batch, nheads, seqlen_q).
        sinks: learnable attention sinks, fp32 (nheads,), as in flash_attn_func (keyword only).
    Returns:
        out (batch, seqlen_q, nheads, headdim_v), or (out, softmax_lse).
    Raises:
        flashattn.InvalidArgumentError (a RuntimeError and a ValueError) when an index value is
        out of range: cache_seqlens (+ the new keys) past the cache, or past the block table's
        max_blocks_per_seq * page_block_size, cache_leftpad, cache_batch_idx, a used block_table
        entry, a rotary table too short. Nothing is appended then. CUDA tensors are checked too,
        at the cost of one stream synchronization per call, except during CUDA graph capture or
        with FLASHATTN_CHECK_DEVICE_INDICES=0, where such a sequence gets zeros instead
        (docs/kvcache.md).
    """
    if any(x is not None and x.dtype == _FP8 for x in (q, k_cache, v_cache, k, v)):
        raise NotImplementedError(
            "flashattn: flash_attn_with_kvcache does not take float8_e4m3fn tensors yet (the "
            "C++ API's mha_fwd_kvcache does, on the CPU; docs/fp8.md)")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"flashattn: {name} must have a contiguous last dimension "
                             f"(stride(-1) == 1); it is updated in place so it cannot be copied")
    if (k is None) != (v is None):
        raise ValueError("flashattn: k and v must be given together (both or neither)")
    softmax_scale = _check_softmax_scale(softmax_scale, q.shape[-1])
    head_dim, head_dim_v = k_cache.shape[-1], v_cache.shape[-1]
    q, k, v = (_maybe_contiguous(x) for x in (q, k, v))
    cache_batch_idx = _maybe_contiguous(cache_batch_idx)
    block_table = _maybe_contiguous(block_table)

    if isinstance(cache_seqlens, int):
        cache_seqlen, cache_seqlens = cache_seqlens, None
    elif cache_seqlens is None:
        if k is not None:
            raise ValueError("flashattn: cache_seqlens is required when k, v are appended")
        # Without lengths the whole cache is attended to (flash_attn's behaviour).
        if block_table is not None:
            cache_seqlen = block_table.shape[1] * k_cache.shape[1]
        else:
            cache_seqlen = k_cache.shape[1]
    else:
        cache_seqlen = 0

    padded = _needs_padding(q, v_cache)
    kc, vc = k_cache, v_cache
    if padded:
        # Rare (head dims not a multiple of 8 on the GPU): run on padded copies of the cache and
        # write the appended tokens back, as flash_attn does.
        q, kc, vc = _pad_head_dim(q), _pad_head_dim(k_cache), _pad_head_dim(v_cache)
        if k is not None:
            k, v = _pad_head_dim(k), _pad_head_dim(v)
    window = _window(window_size)
    out, lse = torch.ops.flashattn.fwd_kvcache(
        q, kc, vc, k, v, rotary_cos, rotary_sin, cache_seqlens, int(cache_seqlen),
        cache_batch_idx, cache_leftpad, block_table, alibi_slopes, softmax_scale, bool(causal),
        window[0], window[1], float(softcap), bool(rotary_interleaved), int(num_splits), sinks)
    if padded:
        out = out[..., :head_dim_v]
        if k is not None:
            k_cache.copy_(kc[..., :head_dim])
            v_cache.copy_(vc[..., :head_dim_v])
    return (out, lse) if return_softmax_lse else out
