"""FP8 (float8_e4m3fn) attention through the Python functions, on the CPU backend.

The output is checked against an emulation of the FP8 kernel written here in torch (float64),
independently of the library: dequantize (x * descales), scores, row max m, the probabilities
quantized as e4m3(256 exp(s - m)) with torch's own float8 cast, normalized by the unquantized
row sum (docs/fp8.md). Then every unsupported combination is a clear error.
"""
import math

import pytest

torch = pytest.importorskip("torch")

from fa_testing import HAS_CUDA, flashattn  # noqa: E402

FP8 = torch.float8_e4m3fn


def quantize(x, scale):
    return (x / scale).to(FP8)


def emulate(q8, k8, v8, qd, kd, vd, causal, out_dtype=torch.bfloat16):
    """q8 (s_q, h, d), k8/v8 (s_k, h_k, d): one sequence; qd (s_q, h), kd/vd (s_k, h_k) the
    per-row factor each row's elements are multiplied by. Returns (out, lse) in (s_q, h, dv), (h, s_q)."""
    s_q, h, d = q8.shape
    s_k, h_k, _ = k8.shape
    g = h // h_k
    q = q8.double() * qd.double()[..., None]
    k = (k8.double() * kd.double()[..., None]).repeat_interleave(g, dim=1)
    v = (v8.double() * vd.double()[..., None]).repeat_interleave(g, dim=1)
    s = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(d)
    if causal:
        i = torch.arange(s_q)[:, None]
        j = torch.arange(s_k)[None, :]
        s = s.masked_fill(j > i + s_k - s_q, float("-inf"))
    m = s.amax(-1, keepdim=True)
    e = torch.exp(s - m)
    l = e.sum(-1, keepdim=True)
    p_hat = (256 * e).float().to(FP8).double()  # values <= 256: saturation plays no part
    o = torch.einsum("hij,jhd->ihd", p_hat / (256 * l), v)
    lse = (m + torch.log(l)).squeeze(-1)
    return o.to(out_dtype), lse.float()


def bf16_close(a, b):
    # Both round the same double values to the output type; allow one ulp for summation order.
    a, b = a.float(), b.float()
    assert torch.all((a - b).abs() <= b.abs() * 2 ** -7 + 1e-6), (a - b).abs().max()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_per_head_descales(causal, out_dtype):
    torch.manual_seed(0)
    b, s_q, s_k, h, h_k, d = 2, 37, 53, 4, 2, 32
    q = torch.randn(b, s_q, h, d) * 3
    k = torch.randn(b, s_k, h_k, d)
    v = torch.randn(b, s_k, h_k, d) * 0.5
    # FlashAttention-3's convention: one factor per (batch, kv head), amax / 448.
    qd = q.unflatten(2, (h_k, h // h_k)).abs().amax(dim=(1, 3, 4)) / 448
    kd = k.abs().amax(dim=(1, 3)) / 448
    vd = v.abs().amax(dim=(1, 3)) / 448
    q8 = quantize(q, qd.repeat_interleave(h // h_k, dim=1)[:, None, :, None])
    k8 = quantize(k, kd[:, None, :, None])
    v8 = quantize(v, vd[:, None, :, None])
    out, lse, _ = flashattn.flash_attn_func(q8, k8, v8, causal=causal, return_attn_probs=True,
                                            q_descale=qd, k_descale=kd, v_descale=vd,
                                            out_dtype=out_dtype)
    assert out.dtype == out_dtype and out.shape == (b, s_q, h, d)
    for i in range(b):
        o_ref, lse_ref = emulate(q8[i], k8[i], v8[i],
                                 qd[i].repeat_interleave(h // h_k)[None].expand(s_q, h),
                                 kd[i][None].expand(s_k, h_k), vd[i][None].expand(s_k, h_k),
                                 causal, out_dtype)
        bf16_close(out[i], o_ref)
        torch.testing.assert_close(lse[i], lse_ref, rtol=1e-5, atol=1e-5)
    # And near the unquantized attention (the e4m3 error, not a wrong formula).
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.repeat_interleave(2, 2).transpose(1, 2),
        v.repeat_interleave(2, 2).transpose(1, 2), is_causal=False).transpose(1, 2)
    if not causal:
        assert (out.float() - ref).abs().max() < 0.1 * v.abs().max()


def test_per_block_descales_varlen():
    torch.manual_seed(1)
    lens_q, lens_k, h, h_k, d, bm, bn = [5, 0, 23], [17, 9, 30], 4, 2, 16, 4, 8
    cu_q = torch.tensor([0, 5, 5, 28], dtype=torch.int32)
    cu_k = torch.tensor([0, 17, 26, 56], dtype=torch.int32)
    q8 = (torch.randn(28, h, d) * 4).to(FP8)
    k8 = (torch.randn(56, h_k, d) * 4).to(FP8)
    v8 = (torch.randn(56, h_k, d) * 4).to(FP8)
    nq, nk = math.ceil(23 / bm), math.ceil(30 / bn)
    qb = torch.rand(3, h, nq) + 0.1
    kb = torch.rand(3, h_k, nk) + 0.1
    vb = torch.rand(3, h_k, nk) + 0.1
    kd = torch.rand(3, h_k) + 0.5
    out = flashattn.flash_attn_varlen_func(
        q8, k8, v8, cu_q, cu_k, 23, 30, causal=True, k_descale=kd, q_block_descale=qb,
        k_block_descale=kb, v_block_descale=vb, descale_block=(bm, bn))
    assert out.dtype == torch.bfloat16
    for i in range(3):
        sq, sk = lens_q[i], lens_k[i]
        if sq == 0:
            continue
        rq, rk = torch.arange(sq), torch.arange(sk)
        qf = qb[i][:, rq // bm].T                       # (s_q, h)
        kf = (kb[i][:, rk // bn] * kd[i][:, None]).T    # (s_k, h_k)
        vf = vb[i][:, rk // bn].T
        o_ref, _ = emulate(q8[cu_q[i]:cu_q[i + 1]], k8[cu_k[i]:cu_k[i + 1]],
                           v8[cu_k[i]:cu_k[i + 1]], qf, kf, vf, True)
        bf16_close(out[cu_q[i]:cu_q[i + 1]], o_ref)


def test_packed_fp8_without_descales():
    qkv = torch.randn(1, 9, 3, 2, 16).to(FP8)
    out = flashattn.flash_attn_qkvpacked_func(qkv)
    o_ref, _ = emulate(qkv[0, :, 0], qkv[0, :, 1], qkv[0, :, 2], torch.ones(9, 2),
                       torch.ones(9, 2), torch.ones(9, 2), False)
    bf16_close(out[0], o_ref)


def _qkv8(b=1, s=8, h=2, d=16):
    return tuple(torch.randn(b, s, h, d).to(FP8) for _ in range(3))


def test_errors_are_clear():
    q8, k8, v8 = _qkv8()
    qb16 = torch.randn(1, 8, 2, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="all be float8_e4m3fn"):
        flashattn.flash_attn_func(qb16, k8, v8)
    with pytest.raises(ValueError, match="float8_e4m3fn inputs only"):
        flashattn.flash_attn_func(qb16, qb16, qb16, q_descale=torch.ones(1, 2))
    with pytest.raises(ValueError, match="dropout"):
        flashattn.flash_attn_func(q8, k8, v8, dropout_p=0.1)
    with pytest.raises(ValueError, match="descale_block"):
        flashattn.flash_attn_func(q8, k8, v8, k_block_descale=torch.ones(1, 2, 1))
    with pytest.raises(flashattn.InvalidArgumentError, match="k_descale"):
        flashattn.flash_attn_func(q8, k8, v8, k_descale=torch.ones(2, 1))  # (h_k, b)
    with pytest.raises(flashattn.InvalidArgumentError, match="v_descale"):
        flashattn.flash_attn_func(q8, k8, v8, v_descale=torch.ones(1, 2, dtype=torch.float64))
    with pytest.raises(flashattn.InvalidArgumentError, match=r"q_descale\[0\]\[1\]"):
        flashattn.flash_attn_func(q8, k8, v8, q_descale=torch.tensor([[1.0, -1.0]]))
    with pytest.raises(flashattn.InvalidArgumentError, match="out_dtype"):
        flashattn.flash_attn_func(q8, k8, v8, out_dtype=torch.float32)
    with pytest.raises(flashattn.InvalidArgumentError, match="v_block_descale"):
        flashattn.flash_attn_func(q8, k8, v8, v_block_descale=torch.ones(1, 2, 3),
                                  descale_block=(4, 4))  # 8 rows in blocks of 4: 2 factors
    with pytest.raises(NotImplementedError, match="float8_e4m3fn"):
        flashattn.flash_attn_with_kvcache(q8, k8, v8)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_fp8_runs_or_names_what_is_missing():
    # Dense fp8 CUDA inputs run the Hopper FP8 kernel, matching the CPU backend's emulation of it
    # within the e4m3 rounding of P; without a Hopper GPU (or FP8 kernels in the build) the call
    # raises NotImplementedError naming fp8, never converting to another dtype.
    q8, k8, v8 = _qkv8()
    q8, k8, v8 = (torch.cat([x] * 4, dim=-1) for x in (q8, k8, v8))  # d % 16 == 0
    ref = flashattn.flash_attn_func(q8, k8, v8, causal=True)
    try:
        out = flashattn.flash_attn_func(q8.cuda(), k8.cuda(), v8.cuda(), causal=True)
    except NotImplementedError as e:
        assert "fp8" in str(e)
        return
    assert out.dtype == torch.bfloat16 and out.is_cuda
    vmax = v8.float().abs().max().item()
    assert (out.cpu().float() - ref.float()).abs().max().item() <= 2 ** -3 * vmax
    q8v = q8.reshape(-1, *q8.shape[2:])
    cu = torch.tensor([0, q8.shape[1]], dtype=torch.int32)
    with pytest.raises(NotImplementedError, match="varlen"):
        flashattn.flash_attn_varlen_func(q8v.cuda(), q8v.cuda(), q8v.cuda(), cu.cuda(), cu.cuda(),
                                         q8.shape[1], q8.shape[1])
