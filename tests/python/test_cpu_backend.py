"""CPU tensors through the same ops: forward and backward on the CPU backend (fp32 and bf16,
small shapes), every feature the backend has, including dropout, paged KV and the KV cache."""
import pytest

torch = pytest.importorskip("torch")

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
