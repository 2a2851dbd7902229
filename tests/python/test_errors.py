"""Bad arguments raise flashattn.InvalidArgumentError, both a ValueError and a RuntimeError (the
type flash_attn raises), or NotImplementedError for valid requests with no kernel, carrying a
message that names the problem, and never crash; the library's own validation messages come
through unchanged."""
import re

import pytest

torch = pytest.importorskip("torch")

import flashattn  # noqa: E402
from fa_testing import HAS_CUDA, requires_cuda, skip_unless_gpu_kernel  # noqa: E402

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=requires_cuda)]


def _dtype(device):
    return torch.bfloat16 if device == "cuda" else torch.float32


def _qkv(device, b=2, s=16, h=4, h_k=4, d=64, dtype=None):
    dtype = dtype or _dtype(device)
    return (torch.randn(b, s, h, d, device=device, dtype=dtype),
            torch.randn(b, s, h_k, d, device=device, dtype=dtype),
            torch.randn(b, s, h_k, d, device=device, dtype=dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_wrong_dtype(device):
    q, k, v = _qkv(device)
    with pytest.raises(ValueError, match="dtype"):
        flashattn.flash_attn_func(q.to(torch.int32), k.to(torch.int32), v.to(torch.int32))
    with pytest.raises(ValueError, match="must share one dtype"):
        flashattn.flash_attn_func(q, k.double(), v)


@requires_cuda
def test_fp32_on_gpu_is_rejected():
    q, k, v = _qkv("cuda", dtype=torch.float32)
    with pytest.raises(ValueError, match="float32"):
        flashattn.flash_attn_func(q, k, v)


@requires_cuda
def test_device_mismatch():
    q, k, v = _qkv("cuda")
    with pytest.raises(ValueError, match="one device"):
        flashattn.flash_attn_func(q, k.cpu(), v)
    slopes = torch.ones(4)
    with pytest.raises(ValueError, match="alibi_slopes"):
        flashattn.flash_attn_func(q, k, v, alibi_slopes=slopes)


@pytest.mark.parametrize("device", DEVICES)
def test_shapes(device):
    q, k, v = _qkv(device)
    with pytest.raises(ValueError, match="shape"):
        flashattn.flash_attn_func(q[0], k[0], v[0])  # rank 3
    with pytest.raises(ValueError, match="batch"):
        flashattn.flash_attn_func(q, k[:1], v[:1])
    with pytest.raises(ValueError, match="one shape"):
        flashattn.flash_attn_func(q, k, v[:, :8])
    with pytest.raises(ValueError, match="head dim"):
        flashattn.flash_attn_func(q, k[..., :32], v[..., :32])
    q3, k3, v3 = _qkv(device, h=6, h_k=4)
    with pytest.raises(ValueError, match="h: 6 is not a multiple of h_k = 4"):
        flashattn.flash_attn_func(q3, k3, v3)
    # Head dims past 256 run on the CPU backend only (MLA decode's 576 / 512), up to 576.
    big = 264 if device == "cuda" else 584
    qb, kb, vb = _qkv(device, d=big)
    with pytest.raises(ValueError, match=f"d: {big} is out of range"):
        flashattn.flash_attn_func(qb, kb, vb)


@pytest.mark.parametrize("device", DEVICES)
def test_options(device):
    q, k, v = _qkv(device)
    with pytest.raises(ValueError, match="window_size_left"):
        flashattn.flash_attn_func(q, k, v, window_size=(-3, 0))
    with pytest.raises(ValueError, match="p_dropout"):
        flashattn.flash_attn_func(q, k, v, dropout_p=1.0)
    with pytest.raises(ValueError, match="softcap"):
        flashattn.flash_attn_func(q, k, v, dropout_p=0.1, softcap=2.0)
    with pytest.raises(ValueError, match="window_size"):
        flashattn.flash_attn_func(q, k, v, window_size=(1, 2, 3))
    with pytest.raises(ValueError, match="alibi_slopes must be float32"):
        flashattn.flash_attn_func(q, k, v, alibi_slopes=torch.ones(4, device=device).half())
    with pytest.raises(ValueError, match="alibi_slopes must have shape"):
        flashattn.flash_attn_func(q, k, v, alibi_slopes=torch.ones(3, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_strides(device):
    if device == "cuda":
        skip_unless_gpu_kernel(64, torch.bfloat16)
    q, k, v = _qkv(device)
    ops = torch.ops.flashattn
    # The op itself needs a contiguous last dimension ...
    qt = q.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert qt.stride(-1) != 1
    with pytest.raises(ValueError, match="contiguous last dimension"):
        ops.fwd(qt, k, v, None, 0.0, 0.125, False, -1, -1, 0.0, False, False)
    # ... while the public function copies such inputs, as flash_attn does.
    torch.testing.assert_close(flashattn.flash_attn_func(qt, k, v),
                               flashattn.flash_attn_func(q, k, v), atol=0, rtol=0)
    # Transposed storage (b, h, s, d) with a contiguous last dim runs as is.
    q_bhsd = q.transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(flashattn.flash_attn_func(q_bhsd, k, v),
                               flashattn.flash_attn_func(q, k, v), atol=0, rtol=0)


@requires_cuda
def test_misaligned_stride_on_gpu():
    skip_unless_gpu_kernel(64, torch.bfloat16)
    # Rows of 68 elements: the head stride of a (.., 64) slice is not a multiple of 8.
    big = torch.randn(2, 16, 4, 68, device="cuda", dtype=torch.bfloat16)
    q = big[..., :64]
    with pytest.raises(ValueError, match="multiple of 8"):
        flashattn.flash_attn_func(q, q, q)


@pytest.mark.parametrize("device", DEVICES)
def test_varlen_errors(device):
    dtype = _dtype(device)
    q = torch.randn(30, 4, 64, device=device, dtype=dtype)
    cu = torch.tensor([0, 10, 30], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="cu_seqlens_q must be int32"):
        flashattn.flash_attn_varlen_func(q, q, q, cu.long(), cu, 20, 20)
    with pytest.raises(ValueError, match="batch \\+ 1"):
        flashattn.flash_attn_varlen_func(q, q, q, cu, cu[:2], 20, 20)
    with pytest.raises(ValueError, match="shape"):
        flashattn.flash_attn_varlen_func(q[None], q[None], q[None], cu, cu, 20, 20)
    if device == "cpu":  # values of host index arrays are checked by the library
        with pytest.raises(ValueError, match="seqlen_q must be the maximum"):
            flashattn.flash_attn_varlen_func(q, q, q, cu, cu, 5, 20)
        bad = torch.tensor([0, 12, 31], dtype=torch.int32)
        with pytest.raises(ValueError, match="cu_seqlens"):
            flashattn.flash_attn_varlen_func(q, q, q, bad, bad, 20, 20)


@pytest.mark.parametrize("device", DEVICES)
def test_kvcache_errors(device):
    dtype = _dtype(device)
    q = torch.randn(2, 1, 4, 64, device=device, dtype=dtype)
    kc = torch.randn(2, 32, 4, 64, device=device, dtype=dtype)
    kn = torch.randn(2, 1, 4, 64, device=device, dtype=dtype)
    with pytest.raises(ValueError, match="cache_seqlens is required"):
        flashattn.flash_attn_with_kvcache(q, kc, kc.clone(), kn, kn)
    with pytest.raises(ValueError, match="together"):
        flashattn.flash_attn_with_kvcache(q, kc, kc.clone(), kn, None, cache_seqlens=3)
    kt = kc.transpose(-1, -2).contiguous().transpose(-1, -2)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        flashattn.flash_attn_with_kvcache(q, kt, kc, cache_seqlens=3)
    if device == "cpu":
        seqlens = torch.tensor([32, 3], dtype=torch.int32)  # 32 + 1 new > 32 slots
        with pytest.raises(ValueError, match="cache_seqlens\\[0\\]"):
            flashattn.flash_attn_with_kvcache(q, kc, kc.clone(), kn, kn, cache_seqlens=seqlens)


def test_invalid_argument_is_value_and_runtime_error():
    # flash_attn raises RuntimeError for every failed check; code written against it catches that.
    assert issubclass(flashattn.InvalidArgumentError, ValueError)
    assert issubclass(flashattn.InvalidArgumentError, RuntimeError)
    q, k, v = _qkv("cpu", h=6, h_k=4)
    with pytest.raises(RuntimeError, match="h: 6 is not a multiple of h_k = 4") as info:
        flashattn.flash_attn_func(q, k, v)
    assert type(info.value) is flashattn.InvalidArgumentError
    with pytest.raises(RuntimeError, match="must share one dtype"):  # the adapter's own checks
        flashattn.flash_attn_func(q, k.double(), v)


def _paged_cache(device, b=3, page=16, blocks=4, h_k=2, d=64):
    dtype = _dtype(device)
    num_blocks = b * blocks + 2
    k_cache = torch.randn(num_blocks, page, h_k, d, device=device, dtype=dtype)
    v_cache = torch.randn(num_blocks, page, h_k, d, device=device, dtype=dtype)
    table = torch.randperm(num_blocks)[: b * blocks].view(b, blocks).to(device, torch.int32)
    return k_cache, v_cache, table


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("new_keys", [0, 1, 3])
def test_paged_kvcache_beyond_block_table_raises(device, new_keys):
    """cache_seqlens (+ the appended keys) past block_table.shape[1] * page_block_size raises
    naming block_table, the sequence and the capacity, and writes nothing (flash_attn's issue
    2709; it raises RuntimeError). On the GPU the call checks the device values before any
    write (docs/kvcache.md)."""
    if device == "cuda":
        skip_unless_gpu_kernel(64, torch.bfloat16)
    k_cache, v_cache, table = _paged_cache(device)  # capacity 4 pages x 16 = 64 keys
    q = torch.randn(3, 1, 4, 64, device=device, dtype=k_cache.dtype)
    kn = torch.randn(3, new_keys, 2, 64, device=device, dtype=k_cache.dtype) if new_keys else None
    vn = torch.randn_like(kn) if new_keys else None
    k_before, v_before = k_cache.clone(), v_cache.clone()
    for length in (64 - new_keys + 1, 64 + 1, 1 << 20):
        seqlens = torch.tensor([5, length, 9], dtype=torch.int32, device=device)
        expected = re.escape(f"block_table: sequence 1 needs cache_seqlens[1] + seqlen_knew = "
                             f"{length} + {new_keys} = {length + new_keys} keys, more than the "
                             f"paged capacity of 64")
        with pytest.raises(RuntimeError, match=expected):
            flashattn.flash_attn_with_kvcache(q, k_cache, v_cache, kn, vn, cache_seqlens=seqlens,
                                              block_table=table)
        with pytest.raises(ValueError, match=expected):
            flashattn.flash_attn_with_kvcache(q, k_cache, v_cache, kn, vn, cache_seqlens=seqlens,
                                              block_table=table, causal=True)
        assert torch.equal(k_cache, k_before) and torch.equal(v_cache, v_before), \
            "a rejected call appended to the cache"
    # One length for all sequences (an int) is checked the same way.
    with pytest.raises(RuntimeError, match="block_table: every sequence needs cache_seqlen"):
        flashattn.flash_attn_with_kvcache(q, k_cache, v_cache, kn, vn,
                                          cache_seqlens=64 - new_keys + 1, block_table=table)
    assert torch.equal(k_cache, k_before) and torch.equal(v_cache, v_before)
    # Exactly full after the append is fine.
    seqlens = torch.tensor([5, 64 - new_keys, 9], dtype=torch.int32, device=device)
    out = flashattn.flash_attn_with_kvcache(q, k_cache, v_cache, kn, vn, cache_seqlens=seqlens,
                                            block_table=table)
    assert out.shape == q.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("device", DEVICES)
def test_kvcache_device_index_values_raise(device):
    """The other index values flash_attn_with_kvcache reads (docs/kvcache.md's table): a bad one
    raises naming it, and nothing is appended."""
    if device == "cuda":
        skip_unless_gpu_kernel(64, torch.bfloat16)
    dtype = _dtype(device)
    q = torch.randn(2, 1, 4, 64, device=device, dtype=dtype)
    k_cache = torch.randn(3, 32, 2, 64, device=device, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    kn, vn = (torch.randn(2, 1, 2, 64, device=device, dtype=dtype) for _ in range(2))
    i32 = lambda *x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
    k_before = k_cache.clone()
    bad = [
        (dict(cache_seqlens=i32(4, -1)), "cache_seqlens[1]: -1 is negative"),
        (dict(cache_seqlens=i32(4, 32)), "cache_seqlens[1]: 32 + seqlen_knew 1 exceeds"),
        (dict(cache_seqlens=i32(4, 7), cache_batch_idx=i32(0, 3)), "cache_batch_idx[1]: 3 is"),
        (dict(cache_seqlens=i32(4, 7), cache_leftpad=i32(0, 8)), "cache_leftpad[1]: 8 is"),
    ]
    for kwargs, message in bad:
        with pytest.raises(RuntimeError, match=re.escape(message)):
            flashattn.flash_attn_with_kvcache(q, k_cache, v_cache, kn, vn, **kwargs)
        assert torch.equal(k_cache, k_before), "a rejected call appended to the cache"
    k_paged, v_paged, table = _paged_cache(device, b=2)
    table[1, 1] = k_paged.shape[0]
    with pytest.raises(RuntimeError, match=r"block_table\[1\]\[1\]: \d+ is out of range"):
        flashattn.flash_attn_with_kvcache(q, k_paged, v_paged, kn, vn, cache_seqlens=i32(4, 20),
                                          block_table=table)


@requires_cuda
def test_head_dim_not_built_is_not_implemented():
    info = flashattn.build_info()
    missing = [d for d in (32, 64, 96, 128, 192, 256) if d not in info["head_dims"]]
    if not missing:
        pytest.skip("every head dim kernel is built")
    q, k, v = _qkv("cuda", d=missing[-1])
    with pytest.raises(NotImplementedError, match="flashattn"):
        flashattn.flash_attn_func(q, k, v)


@pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour without a GPU")
def test_no_crash_without_gpu():
    # Without a GPU every call runs on the CPU backend; a CUDA tensor cannot even be made.
    q, k, v = _qkv("cpu")
    assert flashattn.flash_attn_func(q, k, v).shape == q.shape


@pytest.mark.parametrize("device", DEVICES)
def test_sinks_and_value_head_dim_errors(device):
    q, k, v = _qkv(device)
    with pytest.raises(ValueError, match="sinks must be float32"):
        flashattn.flash_attn_func(q, k, v, sinks=torch.zeros(4, device=device).double())
    with pytest.raises(ValueError, match=re.escape("sinks must have shape (nheads,) = (4,)")):
        flashattn.flash_attn_func(q, k, v, sinks=torch.zeros(3, device=device))
    with pytest.raises(ValueError, match="sinks must have shape"):
        flashattn.flash_attn_func(q, k, v, sinks=torch.zeros(1, 4, device=device))
    with pytest.raises(ValueError, match="one shape but for the head dim"):
        flashattn.flash_attn_func(q, k, v[:, :, :2, :32])
    # The KV cache: new values have the value cache's head dim.
    kc, vc = k[:, :, :2], torch.randn(2, 16, 2, 32, device=device, dtype=q.dtype)
    kn, vn = k[:, :1, :2], torch.randn(2, 1, 2, 64, device=device, dtype=q.dtype)
    with pytest.raises(ValueError, match="v_cache's head dim"):
        flashattn.flash_attn_with_kvcache(q[:, :1], kc, vc, kn, vn, cache_seqlens=3)


@requires_cuda
def test_value_head_dim_is_not_implemented_on_gpu():
    """The GPU kernels do not take a V head dim of their own yet: NotImplementedError naming it,
    with or without sinks, never a wrong answer (tests/cpp/gpu/test_gpu_sinks_dv.cu checks that
    nothing is written). Sinks alone run (tests/python/test_gpu_attention.py)."""
    skip_unless_gpu_kernel(64, torch.bfloat16)
    q, k, v = _qkv("cuda")
    sinks = torch.zeros(4, device="cuda")
    with pytest.raises(NotImplementedError, match="dv"):
        flashattn.flash_attn_func(q, k, v[..., :32])
    with pytest.raises(NotImplementedError, match="dv"):
        flashattn.flash_attn_func(q, k, v[..., :32], sinks=sinks)
