"""torch.compile(fullgraph=True) forward+backward (no graph breaks), CUDA graph capture and
replay, and torch.library.opcheck of the custom ops (schemas and fake implementations)."""
import pytest

torch = pytest.importorskip("torch")

import flashattn  # noqa: E402
from fa_testing import HAS_CUDA, requires_cuda, skip_unless_gpu_kernel  # noqa: E402

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=requires_cuda)]


def _dtype(device):
    return torch.bfloat16 if device == "cuda" else torch.float32


def _inputs(device, b=2, s_q=96, s_k=130, h=4, h_k=2, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g).to(device, _dtype(device))  # noqa: E731
    return (make(b, s_q, h, d).requires_grad_(), make(b, s_k, h_k, d).requires_grad_(),
            make(b, s_k, h_k, d).requires_grad_())


def _fwd_bwd(fn, q, k, v, g):
    out = fn(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), g)
    return (out,) + grads


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_dense(device):
    if device == "cuda":
        skip_unless_gpu_kernel(64, torch.bfloat16)
    torch._dynamo.reset()
    q, k, v = _inputs(device)

    def attn(q, k, v):
        # Some surrounding math so the graph is more than the op.
        return flashattn.flash_attn_func(q * 1.5, k, v, causal=True, window_size=(40, -1),
                                         softcap=4.0).float().sin()

    g = torch.randn(q.shape, device=device)
    eager = _fwd_bwd(attn, q, k, v, g)
    # aot_eager runs the traced graphs (fake implementations, functionalized backward) with the
    # same kernels as eager, so results must match bit for bit.
    traced = _fwd_bwd(torch.compile(attn, fullgraph=True, backend="aot_eager"), q, k, v, g)
    for a, b in zip(eager, traced):
        assert torch.equal(a, b)
    if device == "cuda":
        # Inductor fuses and re-rounds the surrounding elementwise math (sin, the scaling).
        torch._dynamo.reset()
        fused = _fwd_bwd(torch.compile(attn, fullgraph=True), q, k, v, g)
        for a, b in zip(eager, fused):
            torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_varlen_and_lse(device):
    if device == "cuda":
        skip_unless_gpu_kernel(64, torch.bfloat16)
    torch._dynamo.reset()
    dtype = _dtype(device)
    cu = torch.tensor([0, 17, 17, 90], dtype=torch.int32, device=device)
    q, k, v = (torch.randn(90, 4, 64, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))

    def attn(q, k, v):
        out, lse, _ = flashattn.flash_attn_varlen_func(q, k, v, cu, cu, 73, 73, causal=True,
                                                       return_attn_probs=True)
        return out, lse

    compiled = torch.compile(attn, fullgraph=True, backend="aot_eager")
    out_e, lse_e = attn(q, k, v)
    out_c, lse_c = compiled(q, k, v)
    assert torch.equal(out_e, out_c) and torch.equal(lse_e, lse_c)
    g = torch.randn_like(out_e)
    ge = torch.autograd.grad(out_e, (q, k, v), g)
    gc = torch.autograd.grad(out_c, (q, k, v), g)
    for a, b in zip(ge, gc):
        assert torch.equal(a, b)


def test_compile_kvcache_cpu():
    torch._dynamo.reset()
    q = torch.randn(2, 1, 4, 32)
    k_cache, v_cache = torch.randn(2, 20, 2, 32), torch.randn(2, 20, 2, 32)
    k_new, v_new = torch.randn(2, 1, 2, 32), torch.randn(2, 1, 2, 32)
    seqlens = torch.tensor([3, 11], dtype=torch.int32)

    def step(q, kc, vc, kn, vn):
        return flashattn.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=seqlens,
                                                 causal=True)

    kc_e, vc_e = k_cache.clone(), v_cache.clone()
    out_e = step(q, kc_e, vc_e, k_new, v_new)
    kc_c, vc_c = k_cache.clone(), v_cache.clone()
    out_c = torch.compile(step, fullgraph=True, backend="aot_eager")(q, kc_c, vc_c, k_new, v_new)
    assert torch.equal(out_e, out_c)
    assert torch.equal(kc_e, kc_c) and torch.equal(vc_e, vc_c)  # the in-place append survived


@requires_cuda
def test_cuda_graph_forward_backward():
    """Capture forward+backward (outputs and the backward's scratch come from torch's allocator
    and the library's stream-ordered allocations on the capture stream), replay with new data."""
    skip_unless_gpu_kernel(64, torch.bfloat16)
    q, k, v = _inputs("cuda", s_q=256, s_k=256, h=4, h_k=4)
    static = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    static_g = torch.randn(q.shape, device="cuda", dtype=q.dtype)

    def step():
        out = flashattn.flash_attn_func(*static, causal=True)
        return (out,) + torch.autograd.grad(out, static, static_g)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up outside capture, as torch requires
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for seed in (1, 2):
        fresh = _inputs("cuda", s_q=256, s_k=256, h=4, h_k=4, seed=seed)
        for dst, src in zip(static, fresh):
            dst.data.copy_(src.data)
        static_g.copy_(torch.randn_like(static_g))
        graph.replay()
        torch.cuda.synchronize()
        eager = step()
        for a, b in zip(captured, eager):
            assert torch.equal(a, b), "graph replay differs from eager on the same inputs"


@requires_cuda
def test_cuda_graph_varlen_forward():
    skip_unless_gpu_kernel(128, torch.float16)
    cu = torch.tensor([0, 100, 350], dtype=torch.int32, device="cuda")
    q = torch.randn(350, 8, 128, device="cuda", dtype=torch.float16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        flashattn.flash_attn_varlen_func(q, q, q, cu, cu, 250, 250)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = flashattn.flash_attn_varlen_func(q, q, q, cu, cu, 250, 250, causal=True)
    q.copy_(torch.randn_like(q))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, flashattn.flash_attn_varlen_func(q, q, q, cu, cu, 250, 250,
                                                             causal=True))


@requires_cuda
def test_cuda_graph_dropout_is_refused():
    """Dropout under capture would replay one mask forever: the library refuses it clearly."""
    skip_unless_gpu_kernel(64, torch.bfloat16)
    q = torch.randn(1, 64, 2, 64, device="cuda", dtype=torch.bfloat16)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises((NotImplementedError, RuntimeError)):
        with torch.cuda.graph(graph):
            flashattn.flash_attn_func(q, q, q, dropout_p=0.1)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    """Schemas, fake implementations and dispatch agree with the real kernels."""
    if device == "cuda":
        skip_unless_gpu_kernel(64, torch.bfloat16)
    dtype = _dtype(device)
    q, k, v = (t.detach() for t in _inputs(device, s_q=33, s_k=47))
    ops = torch.ops.flashattn
    fwd_args = (q, k, v, None, 0.0, 0.125, True, -1, -1, 0.0, False)
    torch.library.opcheck(ops.fwd.default, fwd_args)
    out, lse, _, rng = ops.fwd(*fwd_args)
    dout = torch.randn_like(out)
    torch.library.opcheck(ops.bwd.default, (dout, q, k, v, out, lse, None, 0.0, 0.125, True, -1,
                                            -1, 0.0, False, rng))
    cu = torch.tensor([0, 10, 33], dtype=torch.int32, device=device)
    cuk = torch.tensor([0, 20, 47], dtype=torch.int32, device=device)
    qv, kv, vv = q[0], k[0], v[0]
    vargs = (qv, kv, vv, cu, cuk, None, None, None, 23, 27, 0.0, 0.125, False, -1, -1, 0.0, False)
    torch.library.opcheck(ops.varlen_fwd.default, vargs)
    o2, l2, _, r2 = ops.varlen_fwd(*vargs)
    torch.library.opcheck(ops.varlen_bwd.default,
                          (torch.randn_like(o2), qv, kv, vv, o2, l2, cu, cuk, None, None, 23, 27,
                           0.0, 0.125, False, -1, -1, 0.0, False, r2))
    if device == "cpu":  # the GPU KV-cache kernels may not exist yet; the CPU backend has them
        kc, vc = torch.randn(2, 40, 2, 64, dtype=dtype), torch.randn(2, 40, 2, 64, dtype=dtype)
        kn, vn = torch.randn(2, 1, 2, 64, dtype=dtype), torch.randn(2, 1, 2, 64, dtype=dtype)
        seqlens = torch.tensor([4, 30], dtype=torch.int32)
        torch.library.opcheck(ops.fwd_kvcache.default,
                              (q[:, :1], kc, vc, kn, vn, None, None, seqlens, 0, None, None, None,
                               None, 0.125, True, -1, -1, 0.0, True, 1))


def test_ops_registered_for_both_devices():
    names = ["fwd", "varlen_fwd", "bwd", "varlen_bwd", "fwd_kvcache"]
    for name in names:
        op = getattr(torch.ops.flashattn, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU"), name
        assert HAS_CUDA is False or torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA"), name
