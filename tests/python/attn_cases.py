"""Test cases shared by the GPU and CPU suites: run one flashattn call (forward, and backward
through autograd) and check it against the reference with the 2x rule.

Each runner draws its inputs from a seeded CPU generator, calls the public flash_attn-compatible
function, and checks out, softmax_lse and dq/dk/dv against attention_ref computed in high
precision, bounding the error by a multiple of the same reference's error in the input dtype.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

import flashattn
from attn_ref import (alibi_slopes_for, assert_close_2x, attention_ref, attention_ref_varlen,
                      cu_seqlens_of, max_err, ref_dtype, visible_mask)
from fa_testing import randn, seeded_generator

# Gradient bound: flash_attn's tests use 2x for outputs and 2x-3x for gradients; the backward
# accumulates more rounding steps (dS, the dQ reduction over key blocks), so gradients get 3x.
GRAD_FACTOR = 3.0


def _leaf(x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    return x.detach().to(dtype or x.dtype).clone().requires_grad_()


def _slopes(alibi: Optional[str], h: int, b: int, device) -> Optional[torch.Tensor]:
    if alibi is None:
        return None
    return alibi_slopes_for(h, b if alibi == "bh" else None, device)


def _sinks(sinks: bool, h: int, device, generator) -> Optional[torch.Tensor]:
    """Sink logits (h,) fp32, uniform in [-2, 4): from negligible to dominant next to the scores
    of unit-normal inputs. A leaf that requires grad."""
    if not sinks:
        return None
    return (torch.rand(h, generator=generator) * 6 - 2).to(device).requires_grad_()


def _sink_refs(sinks: Optional[torch.Tensor], dtype):
    """The sinks as leaves of the high-precision and of the input-dtype reference (the latter
    stays fp32: the reference rounds it to the dtype in its math, as a kernel would not)."""
    if sinks is None:
        return None, None
    return _leaf(sinks, ref_dtype(dtype)), _leaf(sinks)


def dsinks_of_returned_out(out, lse, sinks, dout):
    """dsinks as the kernels define it, in float64: -sum over rows of p_sink (dout . out) with
    the returned out and LSE (p_sink = exp(sink - lse)). Every backend forms D = dout . out from
    out as stored in the dtype; that rounding moves dsinks, a sum over every row, by more than the
    low-precision reference shows (it differentiates the softmax instead), and it is the
    algorithm's, not the kernel's. Dense out (b, s, h, dv) with lse (b, h, s), or varlen
    (total, h, dv) with (h, total)."""
    d = (out.detach().double() * dout.double()).sum(-1)
    d = d.permute(0, 2, 1) if d.dim() == 3 else d.t()
    shape = (1, -1, 1) if d.dim() == 3 else (-1, 1)
    p_sink = torch.exp(sinks.detach().double().view(shape) - lse.detach().double())
    return -(p_sink * d).sum(dim=tuple(i for i in range(d.dim()) if i != d.dim() - 2))


def check_grads(out, out_ref, out_lowp, inputs, inputs_ref, inputs_lowp, names, generator,
                factor: float = GRAD_FACTOR, lse=None) -> None:
    """The 3x rule for every gradient; dsinks (needs lse) is held to it against the exact
    dsinks of the returned out (dsinks_of_returned_out), the error scale still that of the
    low-precision reference against the exact gradient."""
    g = randn(out.shape, out.dtype, out.device, generator)
    grads = torch.autograd.grad(out, inputs, g)
    grads_ref = torch.autograd.grad(out_ref, inputs_ref, g.to(out_ref.dtype))
    grads_lowp = torch.autograd.grad(out_lowp, inputs_lowp, g)
    # Where exact math makes a gradient vanish (e.g. dk with a single key: every softmax row is
    # exactly 1, so dS = 0), the low-precision reference can be exactly 0 too while the kernel
    # keeps fp32 rounding residue of its reductions. The floor allows that residue, relative to
    # the largest gradient entry of the problem: about 100 fp32 ulps, far below one fp16/bf16 ulp.
    scale = max(r.abs().max().item() for r in grads_ref if r.numel())
    floor = 1e-5 * max(1.0, scale)
    for name, x, a, r, lp in zip(names, inputs, grads, grads_ref, grads_lowp):
        want_dtype = torch.float32 if name == "dsinks" else out.dtype
        assert a.dtype == want_dtype, f"{name}: dtype {a.dtype}"
        if name == "dsinks":
            assert lse is not None, "dsinks needs the forward's lse"
            stored = dsinks_of_returned_out(out, lse, x, g).to(r.dtype)
            err, err_lowp = max_err(a, stored), max_err(lp, r)
            assert err <= factor * err_lowp + floor, (
                f"dsinks: max error {err:.3e} against the returned out's > {factor}x the "
                f"low-precision reference's {err_lowp:.3e} (+{floor:g}); the returned out's own "
                f"rounding moved dsinks by {max_err(stored, r):.3e}")
        else:
            assert_close_2x(a, r, lp, name, factor=factor, floor=floor)


def run_dense(device, dtype, b: int, seqlen_q: int, seqlen_k: int, h: int, h_k: int, d: int,
              causal: bool = False, window_size: Sequence[int] = (-1, -1), softcap: float = 0.0,
              alibi: Optional[str] = None, softmax_scale: Optional[float] = None,
              dropout_p: float = 0.0, deterministic: bool = False, backward: bool = True,
              api: str = "func", seed: int = 0, sinks: bool = False,
              dv: Optional[int] = None) -> None:
    """One dense case through flash_attn_func (api="func"), flash_attn_kvpacked_func
    ("kvpacked") or flash_attn_qkvpacked_func ("qkvpacked"); with sinks (checked with their
    gradient) and v of head dim dv (func only) when asked."""
    gen = seeded_generator(seed)
    dv = dv or d
    q = randn((b, seqlen_q, h, d), dtype, device, gen)
    k = randn((b, seqlen_k, h_k, d), dtype, device, gen)
    v = randn((b, seqlen_k, h_k, dv), dtype, device, gen)
    slopes = _slopes(alibi, h, b, device)
    sink = _sinks(sinks, h, device, gen)
    sink_ref, sink_lowp = _sink_refs(sink, dtype)
    opts = dict(causal=causal, window_size=window_size, softcap=softcap, alibi_slopes=slopes,
                softmax_scale=softmax_scale)
    if api == "qkvpacked":
        assert seqlen_q == seqlen_k and h == h_k
        qkv = _leaf(torch.stack([q, k, v], dim=2))
        out, lse, s_dmask = flashattn.flash_attn_qkvpacked_func(
            qkv, dropout_p, return_attn_probs=True, deterministic=deterministic, sinks=sink,
            **opts)
        inputs, names = (qkv,), ("dqkv",)
        qkv_ref, qkv_lowp = _leaf(qkv, ref_dtype(dtype)), _leaf(qkv)
        refs = qkv_ref.unbind(2), qkv_lowp.unbind(2)
        inputs_ref, inputs_lowp = (qkv_ref,), (qkv_lowp,)
    elif api == "kvpacked":
        q = _leaf(q)
        kv = _leaf(torch.stack([k, v], dim=2))
        out, lse, s_dmask = flashattn.flash_attn_kvpacked_func(
            q, kv, dropout_p, return_attn_probs=True, deterministic=deterministic, sinks=sink,
            **opts)
        inputs, names = (q, kv), ("dq", "dkv")
        q_ref, kv_ref = _leaf(q, ref_dtype(dtype)), _leaf(kv, ref_dtype(dtype))
        q_lowp, kv_lowp = _leaf(q), _leaf(kv)
        refs = (q_ref, *kv_ref.unbind(2)), (q_lowp, *kv_lowp.unbind(2))
        inputs_ref, inputs_lowp = (q_ref, kv_ref), (q_lowp, kv_lowp)
    else:
        q, k, v = _leaf(q), _leaf(k), _leaf(v)
        out, lse, s_dmask = flashattn.flash_attn_func(
            q, k, v, dropout_p, return_attn_probs=True, deterministic=deterministic, sinks=sink,
            **opts)
        inputs, names = (q, k, v), ("dq", "dk", "dv")
        inputs_ref = tuple(_leaf(x, ref_dtype(dtype)) for x in (q, k, v))
        inputs_lowp = tuple(_leaf(x) for x in (q, k, v))
        refs = inputs_ref, inputs_lowp
    if sink is not None:
        inputs, names = inputs + (sink,), names + ("dsinks",)
        inputs_ref, inputs_lowp = inputs_ref + (sink_ref,), inputs_lowp + (sink_lowp,)

    assert out.shape == (b, seqlen_q, h, dv) and out.dtype == dtype and out.device == q.device
    assert lse.shape == (b, h, seqlen_q) and lse.dtype == torch.float32
    keep = None
    if dropout_p > 0:
        rq, rk = (seqlen_q + 127) // 128 * 128, (seqlen_k + 127) // 128 * 128
        assert s_dmask.shape == (b, h, rq, rk)
        # The probabilities come back negated where dropout dropped them.
        keep = ~torch.signbit(s_dmask[:, :, :seqlen_q, :seqlen_k])
    else:
        assert s_dmask.numel() == 0
    ref_opts = dict(opts, dropout_p=dropout_p, keep_mask=keep)
    out_ref, lse_ref = attention_ref(*refs[0], upcast=True, sinks=sink_ref, **ref_opts)
    out_lowp, lse_lowp = attention_ref(*refs[1], upcast=False, sinks=sink_lowp, **ref_opts)
    assert_close_2x(out, out_ref, out_lowp, "out")
    assert_close_2x(lse, lse_ref, lse_lowp, "softmax_lse")
    if dropout_p > 0 and seqlen_q * seqlen_k * b * h >= 10000:
        # The drop rate over entries the mask leaves visible (masked entries have probability 0,
        # and whether they carry a "dropped" sign is unspecified).
        visible = visible_mask(seqlen_q, seqlen_k, causal, window_size, q.device)
        rate = 1.0 - keep[visible.expand_as(keep)].float().mean().item()
        assert abs(rate - dropout_p) < 0.05, f"dropped {rate:.3f} of entries, p = {dropout_p}"
    if backward:
        if deterministic:
            g = torch.ones_like(out)
            first = torch.autograd.grad(out, inputs, g, retain_graph=True)
            second = torch.autograd.grad(out, inputs, g, retain_graph=True)
            for name, a, c in zip(names, first, second):
                assert torch.equal(a, c), f"{name}: deterministic backward is not bitwise repeatable"
        check_grads(out, out_ref, out_lowp, inputs, inputs_ref, inputs_lowp, names, gen, lse=lse)


def run_varlen(device, dtype, seqlens_q: List[int], seqlens_k: List[int], h: int, h_k: int,
               d: int, causal: bool = False, window_size: Sequence[int] = (-1, -1),
               softcap: float = 0.0, alibi: Optional[str] = None, deterministic: bool = False,
               backward: bool = True, api: str = "func", seed: int = 0, sinks: bool = False,
               dv: Optional[int] = None) -> None:
    """One varlen case through flash_attn_varlen_func / _kvpacked_func / _qkvpacked_func; with
    sinks and v of head dim dv (func only) when asked."""
    gen = seeded_generator(seed)
    dv = dv or d
    b = len(seqlens_q)
    cu_q, cu_k = cu_seqlens_of(seqlens_q), cu_seqlens_of(seqlens_k)
    total_q, total_k = cu_q[-1], cu_k[-1]
    max_q, max_k = max(seqlens_q), max(seqlens_k)
    q = randn((total_q, h, d), dtype, device, gen)
    k = randn((total_k, h_k, d), dtype, device, gen)
    v = randn((total_k, h_k, dv), dtype, device, gen)
    cu_q_t = torch.tensor(cu_q, dtype=torch.int32, device=device)
    cu_k_t = torch.tensor(cu_k, dtype=torch.int32, device=device)
    slopes = _slopes(alibi, h, b, device)
    sink = _sinks(sinks, h, device, gen)
    sink_ref, sink_lowp = _sink_refs(sink, dtype)
    opts = dict(causal=causal, window_size=window_size, softcap=softcap, alibi_slopes=slopes)
    if api == "qkvpacked":
        assert seqlens_q == seqlens_k and h == h_k
        qkv = _leaf(torch.stack([q, k, v], dim=1))
        out, lse, _ = flashattn.flash_attn_varlen_qkvpacked_func(
            qkv, cu_q_t, max_q, deterministic=deterministic, return_attn_probs=True, sinks=sink,
            **opts)
        inputs, names = (qkv,), ("dqkv",)
        qkv_ref, qkv_lowp = _leaf(qkv, ref_dtype(dtype)), _leaf(qkv)
        refs = qkv_ref.unbind(1), qkv_lowp.unbind(1)
        inputs_ref, inputs_lowp = (qkv_ref,), (qkv_lowp,)
    elif api == "kvpacked":
        q = _leaf(q)
        kv = _leaf(torch.stack([k, v], dim=1))
        out, lse, _ = flashattn.flash_attn_varlen_kvpacked_func(
            q, kv, cu_q_t, cu_k_t, max_q, max_k, deterministic=deterministic,
            return_attn_probs=True, sinks=sink, **opts)
        inputs, names = (q, kv), ("dq", "dkv")
        q_ref, kv_ref = _leaf(q, ref_dtype(dtype)), _leaf(kv, ref_dtype(dtype))
        q_lowp, kv_lowp = _leaf(q), _leaf(kv)
        refs = (q_ref, *kv_ref.unbind(1)), (q_lowp, *kv_lowp.unbind(1))
        inputs_ref, inputs_lowp = (q_ref, kv_ref), (q_lowp, kv_lowp)
    else:
        q, k, v = _leaf(q), _leaf(k), _leaf(v)
        out, lse, _ = flashattn.flash_attn_varlen_func(
            q, k, v, cu_q_t, cu_k_t, max_q, max_k, deterministic=deterministic,
            return_attn_probs=True, sinks=sink, **opts)
        inputs, names = (q, k, v), ("dq", "dk", "dv")
        inputs_ref = tuple(_leaf(x, ref_dtype(dtype)) for x in (q, k, v))
        inputs_lowp = tuple(_leaf(x) for x in (q, k, v))
        refs = inputs_ref, inputs_lowp
    if sink is not None:
        inputs, names = inputs + (sink,), names + ("dsinks",)
        inputs_ref, inputs_lowp = inputs_ref + (sink_ref,), inputs_lowp + (sink_lowp,)
    assert out.shape == (total_q, h, dv) and out.dtype == dtype
    assert lse.shape == (h, total_q) and lse.dtype == torch.float32
    out_ref, lse_ref = attention_ref_varlen(*refs[0], cu_q, cu_k, upcast=True, sinks=sink_ref,
                                            **opts)
    out_lowp, lse_lowp = attention_ref_varlen(*refs[1], cu_q, cu_k, upcast=False,
                                              sinks=sink_lowp, **opts)
    assert_close_2x(out, out_ref, out_lowp, "out")
    assert_close_2x(lse, lse_ref, lse_lowp, "softmax_lse")
    if backward:
        check_grads(out, out_ref, out_lowp, inputs, inputs_ref, inputs_lowp, names, gen, lse=lse)


def to_paged(k: torch.Tensor, v: torch.Tensor, page_size: int, generator: torch.Generator,
             extra_blocks: int = 3):
    """Scatters dense caches (b, s, h_k, d) into randomly permuted pages of one shared table,
    with a few unused pages of noise.

    Returns (k_paged, v_paged (num_blocks, page_size, h_k, d), block_table (b, blocks) int32)."""
    b, s, h_k, _ = k.shape
    blocks_per_seq = (s + page_size - 1) // page_size
    num_blocks = b * blocks_per_seq + extra_blocks
    perm = torch.randperm(num_blocks, generator=generator)[: b * blocks_per_seq]

    def scatter(x: torch.Tensor) -> torch.Tensor:
        hd = x.shape[-1]  # k's head dim, or v's (which may differ)
        padded = torch.zeros(b, blocks_per_seq * page_size, h_k, hd, dtype=x.dtype,
                             device=x.device)
        padded[:, :s] = x
        paged = torch.randn(num_blocks, page_size, h_k, hd, generator=generator).to(x.device,
                                                                                    x.dtype)
        paged[perm.to(x.device)] = padded.view(b * blocks_per_seq, page_size, h_k, hd)
        return paged

    table = perm.view(b, blocks_per_seq).to(dtype=torch.int32, device=k.device)
    return scatter(k), scatter(v), table


def dense_from_paged(paged: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    """(b, blocks_per_seq * page_size, h_k, d) view of what a paged cache holds, in order."""
    b, blocks = block_table.shape
    pages = paged[block_table.long().flatten()]
    return pages.view(b, blocks * paged.shape[1], *paged.shape[2:])


def apply_rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     positions: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotary embedding of x (s, h, d) at integer positions (s,), tables (seqlen_ro, rd / 2)."""
    rd = cos.shape[-1] * 2
    c = cos[positions].unsqueeze(1).to(x.dtype)
    s = sin[positions].unsqueeze(1).to(x.dtype)
    rot, rest = x[..., :rd], x[..., rd:]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., : rd // 2], rot[..., rd // 2:]
    o1, o2 = x1 * c - x2 * s, x1 * s + x2 * c
    if interleaved:
        rotated = torch.stack([o1, o2], dim=-1).flatten(-2)
    else:
        rotated = torch.cat([o1, o2], dim=-1)
    return torch.cat([rotated, rest], dim=-1)


def run_kvcache(device, dtype, b: int, seqlen_q: int, seqlen_new: int, cache_len: int, h: int,
                h_k: int, d: int, causal: bool = False, window_size: Sequence[int] = (-1, -1),
                softcap: float = 0.0, alibi: Optional[str] = None, rotary: Optional[str] = None,
                rotary_dim: Optional[int] = None, page_size: Optional[int] = None,
                batch_idx: bool = False, leftpad: bool = False, num_splits: int = 0,
                int_seqlens: bool = False, seed: int = 0, sinks: bool = False,
                dv: Optional[int] = None) -> None:
    """One flash_attn_with_kvcache case: append seqlen_new tokens (optionally rotated) into a
    cache of capacity cache_len, attend, and check out, LSE and the updated cache; with sinks
    and a v cache of head dim dv when asked."""
    gen = seeded_generator(seed)
    dv = dv or d
    b_cache = b + 2 if batch_idx else b
    q = randn((b, seqlen_q, h, d), dtype, device, gen)
    k_cache = randn((b_cache, cache_len, h_k, d), dtype, device, gen)
    v_cache = randn((b_cache, cache_len, h_k, dv), dtype, device, gen)
    k_new = randn((b, seqlen_new, h_k, d), dtype, device, gen) if seqlen_new else None
    v_new = randn((b, seqlen_new, h_k, dv), dtype, device, gen) if seqlen_new else None
    if int_seqlens:
        seqlens = [cache_len - seqlen_new - 1] * b
    else:
        seqlens = torch.randint(0, cache_len - seqlen_new + 1, (b,), generator=gen).tolist()
    pads = [0] * b
    if leftpad:
        pads = [int(torch.randint(0, s + 1, (1,), generator=gen)) for s in seqlens]
    rows = list(range(b))
    if batch_idx:
        rows = torch.randperm(b_cache, generator=gen)[:b].tolist()
    rd = rotary_dim or d
    cos = sin = None
    if rotary is not None:
        angle = torch.rand(cache_len, rd // 2, generator=gen) * 6.28
        cos, sin = angle.cos().to(dtype=dtype, device=device), angle.sin().to(dtype=dtype, device=device)
    slopes = _slopes(alibi, h, b, device)
    sink = _sinks(sinks, h, device, gen)
    if sink is not None:
        sink = sink.detach()  # no backward through the KV cache

    k_dense, v_dense = k_cache.clone(), v_cache.clone()
    kc_arg, vc_arg, block_table = k_cache.clone(), v_cache.clone(), None
    if page_size is not None:
        assert not batch_idx
        kc_arg, vc_arg, block_table = to_paged(k_cache, v_cache, page_size, gen)

    seqlens_t = torch.tensor(seqlens, dtype=torch.int32, device=device)
    out, lse = call_kvcache(
        q, kc_arg, vc_arg, k_new, v_new, cos, sin,
        seqlens[0] if int_seqlens else seqlens_t,
        torch.tensor(rows, dtype=torch.int32, device=device) if batch_idx else None,
        torch.tensor(pads, dtype=torch.int32, device=device) if leftpad else None,
        block_table, causal, window_size, softcap, rotary == "interleaved", slopes, num_splits,
        sink)

    # Reference: rotate and append on a copy, then attend per sequence.
    ref_dt = ref_dtype(dtype)
    outs_ref, outs_lowp, lses_ref, lses_lowp = [], [], [], []
    for i in range(b):
        r, cs, lp = rows[i], seqlens[i], pads[i]
        if seqlen_new:
            kn = k_new[i]
            if rotary is not None:
                pos = torch.arange(cs, cs + seqlen_new, device=device)
                kn = apply_rotary_ref(kn.to(ref_dt), cos.to(ref_dt), sin.to(ref_dt), pos,
                                      rotary == "interleaved").to(dtype)
            k_dense[r, cs:cs + seqlen_new] = kn
            v_dense[r, cs:cs + seqlen_new] = v_new[i]
        end = cs + seqlen_new
        keys, vals = k_dense[r, lp:end].unsqueeze(0), v_dense[r, lp:end].unsqueeze(0)
        qi = q[i]
        if rotary is not None and seqlen_new:
            local = causal or window_size[0] >= 0 or window_size[1] >= 0
            pos = (torch.arange(cs, cs + seqlen_q, device=device) if local
                   else torch.full((seqlen_q,), cs, device=device))
            qi = apply_rotary_ref(qi.to(ref_dt), cos.to(ref_dt), sin.to(ref_dt), pos,
                                  rotary == "interleaved").to(dtype)
        sl = None if slopes is None else (slopes if slopes.dim() == 1 else slopes[i])
        opts = dict(causal=causal, window_size=window_size, softcap=softcap, alibi_slopes=sl,
                    sinks=sink)
        o, l_ = attention_ref(qi.unsqueeze(0), keys, vals, upcast=True, **opts)
        ol, ll = attention_ref(qi.unsqueeze(0), keys, vals, upcast=False, **opts)
        outs_ref.append(o)
        outs_lowp.append(ol)
        lses_ref.append(l_)
        lses_lowp.append(ll)
    assert_close_2x(out, torch.cat(outs_ref), torch.cat(outs_lowp), "out")
    assert_close_2x(lse, torch.cat(lses_ref), torch.cat(lses_lowp), "softmax_lse")

    # The cache after the call: the appended rows hold the (rotated) new keys, others untouched.
    k_after = dense_from_paged(kc_arg, block_table)[:, :cache_len] if page_size else kc_arg
    v_after = dense_from_paged(vc_arg, block_table)[:, :cache_len] if page_size else vc_arg
    rows_touched = rows if not page_size else list(range(b))
    for name, after, expect in (("k_cache", k_after, k_dense), ("v_cache", v_after, v_dense)):
        if page_size:
            expect = expect[:b]
        for i, r in enumerate(rows_touched):
            cs = seqlens[i]
            untouched = torch.ones(cache_len, dtype=torch.bool, device=device)
            untouched[cs:cs + seqlen_new] = False
            assert torch.equal(after[r][untouched], expect[r][untouched]), \
                f"{name}: rows outside the appended range changed"
            got, want = after[r][~untouched], expect[r][~untouched]
            if name == "k_cache" and rotary is not None:
                # The rotation rounds to the dtype in a different order than the reference.
                tol = 2 * torch.finfo(dtype).eps * want.abs().max().item() + 1e-6
                assert (got.double() - want.double()).abs().max().item() <= tol, \
                    f"{name}: appended keys differ from the rotated new keys"
            else:
                assert torch.equal(got, want), f"{name}: appended rows are not the new tokens"


def call_kvcache(q, k_cache, v_cache, k, v, cos, sin, cache_seqlens, cache_batch_idx,
                 cache_leftpad, block_table, causal, window_size, softcap, interleaved, slopes,
                 num_splits, sinks=None):
    return flashattn.flash_attn_with_kvcache(
        q, k_cache, v_cache, k=k, v=v, rotary_cos=cos, rotary_sin=sin,
        cache_seqlens=cache_seqlens, cache_batch_idx=cache_batch_idx,
        cache_leftpad=cache_leftpad, block_table=block_table, causal=causal,
        window_size=window_size, softcap=softcap, rotary_interleaved=interleaved,
        alibi_slopes=slopes, num_splits=num_splits, return_softmax_lse=True, sinks=sinks)
