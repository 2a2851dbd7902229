"""GPU forward and backward against the fp32 reference (flash_attn's 2x rule): dense, packed and
varlen calls across head dims (padded ones too), sequence-length shapes, causal/window masks,
softcap, ALiBi, GQA/MQA and deterministic backward. Dropout, paged KV, split-KV and the KV cache
run too, and skip while the library reports them NotImplemented for the GPU."""
import pytest

torch = pytest.importorskip("torch")

from attn_cases import run_dense, run_kvcache, run_varlen  # noqa: E402
from fa_testing import call_or_skip_not_implemented, requires_cuda, skip_unless_gpu_kernel  # noqa: E402

pytestmark = requires_cuda
CUDA = torch.device("cuda")
DTYPES = [torch.float16, torch.bfloat16]
SEQLENS = [(1, 239), (113, 203), (128, 217), (256, 256), (239, 1), (3, 799), (1023, 1025)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [40, 59, 64, 96, 128, 256])
@pytest.mark.parametrize("seqlens", SEQLENS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("h_k", [6, 2])
def test_dense(dtype, d, seqlens, causal, h_k):
    skip_unless_gpu_kernel(d, dtype)
    run_dense(CUDA, dtype, 2, seqlens[0], seqlens[1], 6, h_k, d, causal=causal)


FEATURES = {
    "window": dict(window_size=(37, 11)),
    "window_left_only": dict(window_size=(64, -1)),
    "causal_window": dict(causal=True, window_size=(48, -1)),
    "softcap": dict(softcap=2.5),
    "softcap_causal": dict(softcap=10.0, causal=True),
    "alibi_h": dict(alibi="h"),
    "alibi_bh_causal": dict(alibi="bh", causal=True),
    "alibi_softcap_window": dict(alibi="h", softcap=5.0, window_size=(20, 20)),
    "scale": dict(softmax_scale=0.07),
    "deterministic": dict(deterministic=True),
    "deterministic_causal_gqa": dict(deterministic=True, causal=True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("seqlens", [(113, 203), (256, 256), (512, 300)])
@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_dense_features(dtype, d, seqlens, feature):
    skip_unless_gpu_kernel(d, dtype)
    h_k = 2 if "gqa" in feature else 4
    run_dense(CUDA, dtype, 2, seqlens[0], seqlens[1], 4, h_k, d, **FEATURES[feature])


@pytest.mark.parametrize("dtype", DTYPES)
def test_mqa(dtype):
    skip_unless_gpu_kernel(64, dtype)
    run_dense(CUDA, dtype, 3, 200, 333, 8, 1, 64, causal=True)


@pytest.mark.parametrize("api", ["kvpacked", "qkvpacked"])
@pytest.mark.parametrize("d", [64, 72])
def test_packed(api, d):
    skip_unless_gpu_kernel(d, torch.bfloat16)
    run_dense(CUDA, torch.bfloat16, 2, 257, 257, 4, 4, d, causal=True, api=api)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_dropout(dtype, causal):
    skip_unless_gpu_kernel(64, dtype)
    call_or_skip_not_implemented(run_dense, CUDA, dtype, 2, 128, 200, 4, 2, 64, causal=causal,
                                 dropout_p=0.17)


def test_dropout_reproducible_with_seed():
    """Same torch seed -> same dropout mask; the next call draws a different one."""
    skip_unless_gpu_kernel(64, torch.bfloat16)
    import flashattn
    q = torch.randn(1, 64, 2, 64, device=CUDA, dtype=torch.bfloat16)
    torch.manual_seed(5)
    first = call_or_skip_not_implemented(flashattn.flash_attn_func, q, q, q, 0.3,
                                         return_attn_probs=True)
    second = flashattn.flash_attn_func(q, q, q, 0.3, return_attn_probs=True)
    torch.manual_seed(5)
    again = flashattn.flash_attn_func(q, q, q, 0.3, return_attn_probs=True)
    assert torch.equal(first[0], again[0]) and torch.equal(first[2], again[2])
    assert not torch.equal(torch.signbit(first[2]), torch.signbit(second[2]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [59, 64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("feature", ["none", "window", "softcap", "alibi_bh", "gqa"])
def test_varlen(dtype, d, causal, feature):
    skip_unless_gpu_kernel(d, dtype)
    opts = {"none": {}, "window": dict(window_size=(30, 5)), "softcap": dict(softcap=3.0),
            "alibi_bh": dict(alibi="bh"), "gqa": {}}[feature]
    h_k = 2 if feature == "gqa" else 4
    run_varlen(CUDA, dtype, [130, 0, 1, 257, 64], [200, 7, 1, 257, 0], 4, h_k, d, causal=causal,
               **opts)


@pytest.mark.parametrize("api", ["kvpacked", "qkvpacked"])
def test_varlen_packed(api):
    skip_unless_gpu_kernel(64, torch.float16)
    run_varlen(CUDA, torch.float16, [100, 3, 200], [100, 3, 200], 4, 4, 64, causal=True, api=api)


def test_varlen_deterministic():
    skip_unless_gpu_kernel(128, torch.bfloat16)
    import flashattn
    cu = torch.tensor([0, 300, 301, 700], dtype=torch.int32, device=CUDA)
    q, k, v = (torch.randn(700, 4, 128, device=CUDA, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    out = flashattn.flash_attn_varlen_func(q, k, v, cu, cu, 400, 400, causal=True,
                                           deterministic=True)
    g = torch.randn_like(out)
    first = torch.autograd.grad(out, (q, k, v), g, retain_graph=True)
    second = torch.autograd.grad(out, (q, k, v), g)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("page_size", [16, 256])
def test_varlen_paged(page_size):
    """flash_attn_varlen_func with block_table: keys read through a page table."""
    skip_unless_gpu_kernel(64, torch.bfloat16)
    import flashattn
    from attn_cases import to_paged
    from attn_ref import assert_close_2x, attention_ref_varlen
    from fa_testing import seeded_generator
    gen = seeded_generator(3)
    seqlens_q, seqlens_k = [5, 40, 1], [300, 77, 513]
    b, h, h_k, d = 3, 4, 2, 64
    max_k = max(seqlens_k)
    k_dense = torch.randn(b, max_k, h_k, d, generator=gen).to(CUDA, torch.bfloat16)
    v_dense = torch.randn(b, max_k, h_k, d, generator=gen).to(CUDA, torch.bfloat16)
    k_paged, v_paged, table = to_paged(k_dense, v_dense, page_size, gen)
    cu_q = [0, 5, 45, 46]
    cu_k = [0, 300, 377, 890]
    q = torch.randn(46, h, d, generator=gen).to(CUDA, torch.bfloat16)
    t = lambda x: torch.tensor(x, dtype=torch.int32, device=CUDA)  # noqa: E731
    out = call_or_skip_not_implemented(
        flashattn.flash_attn_varlen_func, q, k_paged, v_paged, t(cu_q), t(cu_k), max(seqlens_q),
        max_k, causal=True, block_table=table)
    k_flat = torch.cat([k_dense[i, :seqlens_k[i]] for i in range(b)])
    v_flat = torch.cat([v_dense[i, :seqlens_k[i]] for i in range(b)])
    ref, _ = attention_ref_varlen(q, k_flat, v_flat, cu_q, cu_k, causal=True, upcast=True)
    lowp, _ = attention_ref_varlen(q, k_flat, v_flat, cu_q, cu_k, causal=True, upcast=False)
    assert_close_2x(out, ref, lowp, "out")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seqlen_new", [0, 1, 5])
@pytest.mark.parametrize("rotary", [None, "interleaved", "halves"])
@pytest.mark.parametrize("causal", [False, True])
def test_kvcache(dtype, seqlen_new, rotary, causal):
    skip_unless_gpu_kernel(128, dtype)
    if rotary is not None and seqlen_new == 0:
        pytest.skip("rotary needs new keys")
    call_or_skip_not_implemented(run_kvcache, CUDA, dtype, 3, 1 if seqlen_new <= 1 else 4,
                                 seqlen_new, 600, 8, 2, 128, causal=causal, rotary=rotary,
                                 rotary_dim=64 if rotary == "halves" else None)


@pytest.mark.parametrize("variant", ["paged16", "paged256", "batch_idx", "leftpad", "splits",
                                     "splits_heuristic", "int_seqlens", "alibi_softcap",
                                     "window", "head_dim_40"])
def test_kvcache_variants(variant):
    opts = {
        "paged16": dict(page_size=16),
        "paged256": dict(page_size=256),
        "batch_idx": dict(batch_idx=True),
        "leftpad": dict(leftpad=True, causal=True),
        "splits": dict(num_splits=4),
        "splits_heuristic": dict(num_splits=0),
        "int_seqlens": dict(int_seqlens=True),
        "alibi_softcap": dict(alibi="h", softcap=3.0),
        "window": dict(window_size=(100, 0)),
        "head_dim_40": dict(rotary="interleaved"),
    }[variant]
    d = 40 if variant == "head_dim_40" else 64
    skip_unless_gpu_kernel(d, torch.bfloat16)
    call_or_skip_not_implemented(run_kvcache, CUDA, torch.bfloat16, 2, 2, 3, 700, 4, 2, d, **opts)


# ---------------------------------------------------------------------------------- sinks --
# Attention sinks on the GPU (the SM80 path, forward and backward; dsinks through autograd),
# against attention_ref with the sink as one more softmax column (tests/python/attn_ref.py).

SINK_FEATURES = {
    "plain": dict(),
    "causal": dict(causal=True),
    "no_key_rows": dict(causal=True),  # s_q > s_k: the first rows see no key
    "window": dict(window_size=(37, 11)),
    "softcap": dict(softcap=2.5, causal=True),
    "alibi_bh": dict(alibi="bh", causal=True),
    "dropout": dict(dropout_p=0.17, causal=True),
    "deterministic_gqa": dict(deterministic=True, causal=True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("feature", sorted(SINK_FEATURES))
def test_dense_sinks(dtype, feature):
    skip_unless_gpu_kernel(64, dtype)
    s_q, s_k = (300, 113) if feature == "no_key_rows" else (113, 203)
    h_k = 2 if "gqa" in feature else 4
    run_dense(CUDA, dtype, 2, s_q, s_k, 4, h_k, 64, sinks=True, **SINK_FEATURES[feature])


@pytest.mark.parametrize("api", ["kvpacked", "qkvpacked"])
def test_packed_sinks(api):
    skip_unless_gpu_kernel(128, torch.bfloat16)
    run_dense(CUDA, torch.bfloat16, 2, 257, 257, 4, 4, 128, causal=True, api=api, sinks=True)


@pytest.mark.parametrize("feature", ["none", "window", "softcap", "alibi_bh"])
def test_varlen_sinks(feature):
    skip_unless_gpu_kernel(64, torch.bfloat16)
    opts = {"none": {}, "window": dict(window_size=(30, 5)), "softcap": dict(softcap=3.0),
            "alibi_bh": dict(alibi="bh")}[feature]
    run_varlen(CUDA, torch.bfloat16, [130, 0, 1, 257, 64], [200, 7, 1, 257, 0], 4, 2, 64,
               causal=True, sinks=True, **opts)


@pytest.mark.parametrize("variant", ["attend", "append", "rotary", "paged16", "batch_idx",
                                     "leftpad", "splits", "alibi_softcap", "window"])
def test_kvcache_sinks(variant):
    opts = {
        "attend": dict(seqlen_new=0),
        "append": dict(),
        "rotary": dict(rotary="interleaved", causal=True),
        "paged16": dict(page_size=16),
        "batch_idx": dict(batch_idx=True),
        "leftpad": dict(leftpad=True, causal=True),
        "splits": dict(num_splits=4),
        "alibi_softcap": dict(alibi="h", softcap=3.0),
        "window": dict(window_size=(100, 0)),
    }[variant]
    seqlen_new = opts.pop("seqlen_new", 3)
    skip_unless_gpu_kernel(64, torch.bfloat16)
    run_kvcache(CUDA, torch.bfloat16, 2, 2, seqlen_new, 700, 4, 2, 64, sinks=True, **opts)


def test_kvcache_decode_sinks_gqa():
    """Decode (one query) with GQA: the KV-cache path does not pack the query heads of a KV head
    into rows when there are sinks (they are per query head)."""
    skip_unless_gpu_kernel(128, torch.bfloat16)
    run_kvcache(CUDA, torch.bfloat16, 3, 1, 1, 600, 8, 2, 128, sinks=True)


def test_minus_inf_sinks_are_no_sinks():
    """Sinks of -inf give exactly the outputs, LSE and gradients of no sinks."""
    skip_unless_gpu_kernel(64, torch.bfloat16)
    import flashattn
    gen = torch.Generator(device="cpu").manual_seed(7)
    q, k, v = (torch.randn(2, 97, 4, 64, generator=gen).to(CUDA, torch.bfloat16)
               .requires_grad_() for _ in range(3))
    sinks = torch.full((4,), float("-inf"), device=CUDA, requires_grad=True)
    out_s, lse_s, _ = flashattn.flash_attn_func(q, k, v, causal=True, return_attn_probs=True,
                                                sinks=sinks)
    out, lse, _ = flashattn.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert torch.equal(out_s, out) and torch.equal(lse_s, lse)
    g = torch.randn_like(out)
    grads_s = torch.autograd.grad(out_s, (q, k, v, sinks), g)
    grads = torch.autograd.grad(out, (q, k, v), g)
    for a, b in zip(grads_s[:3], grads):
        assert torch.equal(a, b)
    assert torch.equal(grads_s[3], torch.zeros_like(sinks))
