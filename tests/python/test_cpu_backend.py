"""CPU tensors through the same ops: forward and backward on the CPU backend (fp32 and bf16,
small shapes), every feature the backend has, including dropout, paged KV and the KV cache,
attention sinks (with their gradient) and v with a head dim of its own."""
import pytest

torch = pytest.importorskip("torch")

import flashattn  # noqa: E402
from attn_cases import run_dense, run_kvcache, run_varlen  # noqa: E402

CPU = torch.device("cpu")
DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [16, 37, 64])
@pytest.mark.parametrize("seqlens", [(1, 17), (23, 41), (64, 64), (41, 7)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("h_k", [4, 2])
def test_dense(dtype, d, seqlens, causal, h_k):
    run_dense(CPU, dtype, 2, seqlens[0], seqlens[1], 4, h_k, d, causal=causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("feature", ["window", "causal_window", "softcap", "alibi_h", "alibi_bh",
                                     "mqa", "scale", "deterministic"])
def test_dense_features(dtype, feature):
    opts = {
        "window": dict(window_size=(5, 3)),
        "causal_window": dict(causal=True, window_size=(7, -1)),
        "softcap": dict(softcap=1.5),
        "alibi_h": dict(alibi="h", causal=True),
        "alibi_bh": dict(alibi="bh"),
        "mqa": dict(),
        "scale": dict(softmax_scale=0.3),
        "deterministic": dict(deterministic=True),
    }[feature]
    h_k = 1 if feature == "mqa" else 2
    run_dense(CPU, dtype, 2, 29, 45, 4, h_k, 32, **opts)


@pytest.mark.parametrize("api", ["kvpacked", "qkvpacked"])
def test_packed(api):
    run_dense(CPU, torch.float32, 2, 33, 33, 3, 3, 24, causal=True, api=api)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_dropout(dtype, causal):
    run_dense(CPU, dtype, 2, 40, 50, 4, 2, 32, causal=causal, dropout_p=0.17)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("feature", ["none", "window", "softcap", "alibi_bh"])
def test_varlen(dtype, causal, feature):
    opts = {"none": {}, "window": dict(window_size=(4, 2)), "softcap": dict(softcap=2.0),
            "alibi_bh": dict(alibi="bh")}[feature]
    run_varlen(CPU, dtype, [5, 0, 17, 33], [9, 4, 17, 20], 4, 2, 24, causal=causal, **opts)


@pytest.mark.parametrize("api", ["kvpacked", "qkvpacked"])
def test_varlen_packed(api):
    run_varlen(CPU, torch.float32, [7, 12, 1], [7, 12, 1], 2, 2, 16, causal=True, api=api)


@pytest.mark.parametrize("seqlen_new", [0, 1, 4])
@pytest.mark.parametrize("rotary", [None, "interleaved", "halves"])
@pytest.mark.parametrize("causal", [False, True])
def test_kvcache(seqlen_new, rotary, causal):
    if rotary is not None and seqlen_new == 0:
        pytest.skip("rotary needs new keys")
    run_kvcache(CPU, torch.float32, 3, 2, seqlen_new, 40, 4, 2, 32, causal=causal, rotary=rotary,
                rotary_dim=16 if rotary == "halves" else None)


@pytest.mark.parametrize("variant", ["paged", "batch_idx", "leftpad", "splits", "int_seqlens",
                                     "alibi_softcap", "window"])
def test_kvcache_variants(variant):
    opts = {
        "paged": dict(page_size=8),
        "batch_idx": dict(batch_idx=True),
        "leftpad": dict(leftpad=True, causal=True),
        "splits": dict(num_splits=3),
        "int_seqlens": dict(int_seqlens=True),
        "alibi_softcap": dict(alibi="h", softcap=3.0),
        "window": dict(window_size=(6, 0)),
    }[variant]
    run_kvcache(CPU, torch.bfloat16, 2, 3, 2, 48, 4, 4, 32, **opts)


# ------------------------------------------------------------- sinks and dv != d --
# Attention sinks (with their gradient) and v of a head dim of its own, against attention_ref
# with the sink as one more softmax column (tests/python/attn_ref.py).

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("feature", ["plain", "causal", "window", "softcap", "alibi_bh", "mqa",
                                     "scale", "dropout", "deterministic", "no_key_rows"])
def test_dense_sinks(dtype, feature):
    opts = {
        "plain": dict(),
        "causal": dict(causal=True),
        "window": dict(window_size=(5, 3)),
        "softcap": dict(softcap=1.5),
        "alibi_bh": dict(alibi="bh", causal=True),
        "mqa": dict(),
        "scale": dict(softmax_scale=0.3),
        "dropout": dict(dropout_p=0.17, causal=True),
        "deterministic": dict(deterministic=True),
        "no_key_rows": dict(causal=True),
    }[feature]
    h_k = 1 if feature == "mqa" else 2
    s_q, s_k = (45, 7) if feature == "no_key_rows" else (29, 45)  # causal rows 0..37 see no key
    run_dense(CPU, dtype, 2, s_q, s_k, 4, h_k, 32, sinks=True, **opts)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dv", [16, 24, 48])
@pytest.mark.parametrize("sinks", [False, True])
def test_dense_value_head_dim(dtype, dv, sinks):
    run_dense(CPU, dtype, 2, 33, 41, 4, 2, 32, causal=True, sinks=sinks, dv=dv)


@pytest.mark.parametrize("api", ["kvpacked", "qkvpacked"])
def test_packed_sinks(api):
    run_dense(CPU, torch.float32, 2, 33, 33, 3, 3, 24, causal=True, api=api, sinks=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("feature", ["none", "window", "softcap", "alibi_bh"])
@pytest.mark.parametrize("dv", [None, 40])
def test_varlen_sinks(dtype, feature, dv):
    opts = {"none": {}, "window": dict(window_size=(4, 2)), "softcap": dict(softcap=2.0),
            "alibi_bh": dict(alibi="bh")}[feature]
    run_varlen(CPU, dtype, [5, 0, 17, 33], [9, 4, 17, 20], 4, 2, 24, causal=True, sinks=True,
               dv=dv, **opts)


def test_varlen_value_head_dim_without_sinks():
    run_varlen(CPU, torch.float32, [7, 12, 1], [7, 12, 1], 2, 2, 16, dv=8)


@pytest.mark.parametrize("api", ["kvpacked", "qkvpacked"])
def test_varlen_packed_sinks(api):
    run_varlen(CPU, torch.float32, [7, 12, 1], [7, 12, 1], 2, 2, 16, causal=True, api=api,
               sinks=True)


@pytest.mark.parametrize("variant", ["attend", "append", "rotary", "paged", "batch_idx",
                                     "leftpad", "splits", "alibi_softcap", "window"])
@pytest.mark.parametrize("dv", [None, 16])
def test_kvcache_sinks(variant, dv):
    opts = {
        "attend": dict(seqlen_new=0),
        "append": dict(),
        "rotary": dict(rotary="interleaved", causal=True),
        "paged": dict(page_size=8, rotary="halves", rotary_dim=16),
        "batch_idx": dict(batch_idx=True),
        "leftpad": dict(leftpad=True, causal=True),
        "splits": dict(num_splits=3),
        "alibi_softcap": dict(alibi="h", softcap=3.0),
        "window": dict(window_size=(6, 0)),
    }[variant]
    seqlen_new = opts.pop("seqlen_new", 2)
    run_kvcache(CPU, torch.bfloat16, 2, 3, seqlen_new, 48, 4, 2, 32, sinks=True, dv=dv, **opts)


def test_kvcache_value_head_dim_without_sinks():
    run_kvcache(CPU, torch.float32, 3, 1, 1, 40, 8, 2, 64, dv=32, causal=True)


@pytest.mark.parametrize("page_size", [None, 64])
def test_kvcache_mla_576_512(page_size):
    """MLA decode (DeepSeek): k of 576 dims (512 latent + 64 rope), v of 512, one kv head for 16
    query heads; head dims past 256 run on the CPU backend."""
    run_kvcache(CPU, torch.bfloat16, 2, 1, 1, 130, 16, 1, 576, dv=512, page_size=page_size)


def test_kvcache_mla_v_as_a_view_of_k():
    """The latent cache served as both: v_cache = k_cache[..., :512] (read-only, no append) gives
    what a separate copy of those columns gives."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 1, 16, 576, generator=g).to(torch.bfloat16)
    k_cache = torch.randn(2, 90, 1, 576, generator=g).to(torch.bfloat16)
    seqlens = torch.tensor([90, 37], dtype=torch.int32)
    view = flashattn.flash_attn_with_kvcache(q, k_cache, k_cache[..., :512], cache_seqlens=seqlens)
    copy = flashattn.flash_attn_with_kvcache(q, k_cache, k_cache[..., :512].contiguous(),
                                             cache_seqlens=seqlens)
    assert view.shape == (2, 1, 16, 512)
    torch.testing.assert_close(view, copy, rtol=0, atol=0)


def test_sinks_without_grad_and_minus_inf_sinks():
    """A sinks tensor that does not require grad still works under autograd (q, k, v get their
    gradients), and sinks of -inf are no sinks at all."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 19, 4, 16, generator=g, dtype=torch.float64).float()
               .requires_grad_() for _ in range(3))
    sinks = torch.full((4,), float("-inf"))
    out = flashattn.flash_attn_func(q, k, v, causal=True, sinks=sinks)
    ref = flashattn.flash_attn_func(q, k, v, causal=True)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    grads_ref = torch.autograd.grad(ref.sum(), (q, k, v))
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_sinks_gradient_matches_finite_differences():
    """The sinks' gradient through the public function and autograd, against central differences
    of the forward in fp32 (the C++ tests check it in fp64 against the reference)."""
    g = torch.Generator().manual_seed(11)
    q, k = (torch.randn(1, 9, 2, 8, generator=g) for _ in range(2))
    v = torch.randn(1, 9, 2, 5, generator=g)
    sinks = torch.tensor([0.5, -1.0], requires_grad=True)
    w = torch.randn(1, 9, 2, 5, generator=g)

    def loss(s):
        return (flashattn.flash_attn_func(q, k, v, causal=True, sinks=s) * w).sum()

    (grad,) = torch.autograd.grad(loss(sinks), (sinks,))
    eps = 1e-2
    for h in range(2):
        step = torch.zeros(2)
        step[h] = eps
        with torch.no_grad():
            fd = (loss(sinks + step) - loss(sinks - step)) / (2 * eps)
        assert abs(fd.item() - grad[h].item()) < 2e-3, (h, fd.item(), grad[h].item())
