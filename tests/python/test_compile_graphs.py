"""torch.compile(fullgraph=True) forward+backward (no graph breaks) of every public function,
CUDA graph capture and replay, and torch.library.opcheck of the custom ops (schemas, fake
implementations and the autograd registered on the forward ops)."""
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


def _public_calls(device):
    """One call of every public function, as (name, fn, tensors needing grad, other tensors).
    Self-attention calls pass one tensor for several arguments (q = k = v, cu_seqlens_q =
    cu_seqlens_k), which torch.compile must trace too (torch 2.15's Dynamo refuses that for an
    autograd.Function)."""
    dtype = _dtype(device)
    g = torch.Generator().manual_seed(7)
    make = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    i32 = lambda *x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
    # Index arrays are made here, outside the calls: a host-to-device copy cannot be captured.
    cu = i32(0, 17, 17, 60)
    cu_k = i32(0, 5, 30, 41)
    cu_q2, cu_k2 = i32(0, 17, 43), i32(0, 30, 70)
    seqlens_paged, seqlens = i32(11, 30), i32(40, 3)
    slopes = torch.rand(4, generator=g).to(device)
    k_cache, v_cache = make(2, 40, 2, 64), make(2, 40, 2, 64)
    num_blocks = 7
    table = i32(4, 0, 6, 2, 5, 1).view(2, 3)
    fa = flashattn
    return [
        ("flash_attn_func q=k=v", lambda x: fa.flash_attn_func(x, x, x, causal=True),
         [make(2, 33, 4, 64)], []),
        ("flash_attn_func gqa alibi lse", lambda q, k, v: fa.flash_attn_func(
            q, k, v, alibi_slopes=slopes, window_size=(20, 3), return_attn_probs=True)[:2],
         [make(2, 33, 4, 64), make(2, 47, 2, 64), make(2, 47, 2, 64)], []),
        ("flash_attn_qkvpacked_func", lambda qkv: fa.flash_attn_qkvpacked_func(
            qkv, causal=True, softcap=3.0), [make(2, 33, 3, 4, 64)], []),
        ("flash_attn_kvpacked_func", lambda q, kv: fa.flash_attn_kvpacked_func(q, kv),
         [make(2, 33, 4, 64), make(2, 47, 2, 2, 64)], []),
        ("flash_attn_varlen_func cu_q=cu_k", lambda q, k, v: fa.flash_attn_varlen_func(
            q, k, v, cu, cu, 43, 43, causal=True), [make(60, 4, 64) for _ in range(3)], []),
        ("flash_attn_varlen_func q=k=v", lambda x: fa.flash_attn_varlen_func(
            x, x, x, cu, cu, 43, 43, return_attn_probs=True)[:2], [make(60, 4, 64)], []),
        ("flash_attn_varlen_qkvpacked_func", lambda qkv: fa.flash_attn_varlen_qkvpacked_func(
            qkv, cu, 43, causal=True), [make(60, 3, 4, 64)], []),
        ("flash_attn_varlen_kvpacked_func", lambda q, kv: fa.flash_attn_varlen_kvpacked_func(
            q, kv, cu, cu_k, 43, 25, window_size=(8, 8)),
         [make(60, 4, 64), make(41, 2, 2, 64)], []),
        ("flash_attn_varlen_func paged", lambda q, kp, vp: fa.flash_attn_varlen_func(
            q, kp, vp, cu_q2, cu_k2, 26, 40, block_table=table),
         [], [make(43, 4, 64), make(num_blocks, 16, 2, 64), make(num_blocks, 16, 2, 64)]),
        ("flash_attn_with_kvcache paged", lambda q, kp, vp, kn, vn: fa.flash_attn_with_kvcache(
            q, kp, vp, kn, vn, cache_seqlens=seqlens_paged, block_table=table, causal=True,
            return_softmax_lse=True),
         [], [make(2, 2, 4, 64), make(num_blocks, 16, 2, 64), make(num_blocks, 16, 2, 64),
              make(2, 2, 2, 64), make(2, 2, 2, 64)]),
        ("flash_attn_with_kvcache", lambda q, kc, vc: fa.flash_attn_with_kvcache(
            q, kc, vc, cache_seqlens=seqlens, num_splits=2),
         [], [make(2, 1, 4, 64), k_cache, v_cache]),
    ]


_CALL_NAMES = [c[0] for c in _public_calls("cpu")]


def _run_call(fn, grad_inputs, other_inputs):
    """Outputs and (for differentiable calls) gradients of fn on fresh copies of the inputs."""
    grads_in = [t.detach().clone().requires_grad_() for t in grad_inputs]
    others = [t.clone() for t in other_inputs]  # the KV cache is appended to in place
    outs = fn(*grads_in, *others)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = ()
    if grads_in:
        seeds = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i)).to(o)
                 for i, o in enumerate(outs) if o.requires_grad]
        diff = [o for o in outs if o.requires_grad]
        grads = torch.autograd.grad(diff, grads_in, seeds)
    return outs + tuple(grads) + tuple(others)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", _CALL_NAMES)
def test_compile_fullgraph_every_public_function(device, name):
    """Each public function under torch.compile(fullgraph=True): one graph, no break, forward
    and backward (where there is one) bit-identical to eager (aot_eager runs the traced graphs
    with the same kernels)."""
    if device == "cuda":
        skip_unless_gpu_kernel(64, torch.bfloat16)
    torch._dynamo.reset()
    _, fn, grad_inputs, other_inputs = next(c for c in _public_calls(device) if c[0] == name)
    eager = _run_call(fn, grad_inputs, other_inputs)
    compiled = _run_call(torch.compile(fn, fullgraph=True, backend="aot_eager"), grad_inputs,
                         other_inputs)
    assert len(eager) == len(compiled)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


def _sink_calls():
    """Calls with attention sinks (a differentiable input) and v of its own head dim, on the CPU
    (the GPU kernels take neither yet)."""
    g = torch.Generator().manual_seed(9)
    make = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    i32 = lambda *x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
    cu, seqlens = i32(0, 17, 17, 60), i32(30, 3)
    sinks = torch.rand(4, generator=g) * 4 - 1
    fa = flashattn
    return [
        ("flash_attn_func sinks dv", lambda q, k, v, s: fa.flash_attn_func(
            q, k, v, causal=True, softcap=3.0, sinks=s),
         [make(2, 33, 4, 64), make(2, 47, 2, 64), make(2, 47, 2, 32), sinks], []),
        ("flash_attn_qkvpacked_func sinks", lambda qkv, s: fa.flash_attn_qkvpacked_func(
            qkv, causal=True, sinks=s), [make(2, 33, 3, 4, 64), sinks], []),
        ("flash_attn_varlen_func sinks dv", lambda q, k, v, s: fa.flash_attn_varlen_func(
            q, k, v, cu, cu, 43, 43, causal=True, sinks=s, return_attn_probs=True)[:2],
         [make(60, 4, 64), make(60, 2, 64), make(60, 2, 48), sinks], []),
        ("flash_attn_with_kvcache sinks dv", lambda q, kc, vc, kn, vn, s:
         fa.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=seqlens, causal=True,
                                    sinks=s, return_softmax_lse=True),
         [], [make(2, 2, 4, 64), make(2, 40, 2, 64), make(2, 40, 2, 32), make(2, 2, 2, 64),
              make(2, 2, 2, 32), sinks]),
    ]


@pytest.mark.parametrize("name", [c[0] for c in _sink_calls()])
def test_compile_fullgraph_sinks_and_value_head_dim(name):
    """torch.compile(fullgraph=True) with sinks requiring grad (the gradient comes from the
    backward op through the autograd registered on the forward op) and v of its own head dim:
    bit-identical to eager, the sinks' gradient included."""
    torch._dynamo.reset()
    _, fn, grad_inputs, other_inputs = next(c for c in _sink_calls() if c[0] == name)
    eager = _run_call(fn, grad_inputs, other_inputs)
    compiled = _run_call(torch.compile(fn, fullgraph=True, backend="aot_eager"), grad_inputs,
                         other_inputs)
    assert len(eager) == len(compiled)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


def test_opcheck_sinks_and_value_head_dim():
    """Schemas, fake implementations (out with v's head dim, dsinks) and the autograd of the
    ops agree with the real kernels when sinks (requiring grad) and dv != d are used."""
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 33, 4, 64, generator=g)
    k = torch.randn(2, 47, 2, 64, generator=g)
    v = torch.randn(2, 47, 2, 40, generator=g)
    sinks = (torch.rand(4, generator=g) * 4 - 1).requires_grad_()
    ops = torch.ops.flashattn
    fwd_args = (q, k, v, None, 0.0, 0.125, True, -1, -1, 0.0, False, False, sinks)
    torch.library.opcheck(ops.fwd.default, fwd_args)
    # The backward ops have no autograd of their own: their inputs must not require grad.
    out, lse, _, rng = (t.detach() for t in ops.fwd(*fwd_args))
    assert out.shape == (2, 33, 4, 40)
    dout = torch.randn_like(out)
    bwd_args = (dout, q, k, v, out, lse, None, 0.0, 0.125, True, -1, -1, 0.0, False, rng,
                sinks.detach())
    torch.library.opcheck(ops.bwd.default, bwd_args)
    assert ops.bwd(*bwd_args)[3].shape == (4,)
    # Without sinks the backward's dsinks is an empty float32 tensor.
    assert ops.bwd(*bwd_args[:-1])[3].shape == (0,)
    cu = torch.tensor([0, 10, 33], dtype=torch.int32)
    cuk = torch.tensor([0, 20, 47], dtype=torch.int32)
    vargs = (q[0], k[0], v[0], cu, cuk, None, None, None, 23, 27, 0.0, 0.125, False, -1, -1, 0.0,
             False, False, sinks)
    torch.library.opcheck(ops.varlen_fwd.default, vargs)
    o2, l2, _, r2 = (t.detach() for t in ops.varlen_fwd(*vargs))
    torch.library.opcheck(ops.varlen_bwd.default,
                          (torch.randn_like(o2), q[0], k[0], v[0], o2, l2, cu, cuk, None, None,
                           23, 27, 0.0, 0.125, False, -1, -1, 0.0, False, r2, sinks.detach()))
    kc, vc = torch.randn(2, 40, 2, 64), torch.randn(2, 40, 2, 40)
    kn, vn = torch.randn(2, 1, 2, 64), torch.randn(2, 1, 2, 40)
    seqlens = torch.tensor([4, 30], dtype=torch.int32)
    torch.library.opcheck(ops.fwd_kvcache.default,
                          (q[:, :1], kc, vc, kn, vn, None, None, seqlens, 0, None, None, None,
                           None, 0.125, True, -1, -1, 0.0, True, 1, sinks.detach()))


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
@pytest.mark.parametrize("name", _CALL_NAMES)
def test_cuda_graph_every_public_function(name):
    """Each public function (forward, and backward where there is one) captured into a CUDA graph
    and replayed on new data equals eager on the same data."""
    skip_unless_gpu_kernel(64, torch.bfloat16)
    _, fn, grad_inputs, other_inputs = next(c for c in _public_calls("cuda") if c[0] == name)
    static_grad = [t.detach().clone().requires_grad_() for t in grad_inputs]
    static_other = [t.clone() for t in other_inputs]

    def step():
        outs = fn(*static_grad, *static_other)
        outs = outs if isinstance(outs, tuple) else (outs,)
        diff = [o for o in outs if o.requires_grad]
        grads = ()
        if static_grad:
            grads = torch.autograd.grad(diff, static_grad, [torch.ones_like(o) for o in diff])
        return outs + tuple(grads)

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
        gen = torch.Generator().manual_seed(seed)
        for t in static_grad + static_other:
            t.data.copy_(torch.randn(t.shape, generator=gen).to(t))
        graph.replay()
        torch.cuda.synchronize()
        eager = step()  # the KV-cache calls append the same keys again: same cache
        for a, b in zip(captured, eager):
            assert torch.equal(a, b), "graph replay differs from eager on the same inputs"


@requires_cuda
def test_cuda_graph_kvcache_skips_bad_lengths_that_eager_rejects():
    """Device-resident cache_seqlens cannot be checked on the host during capture (docs/kvcache.md):
    eager calls raise on a length beyond the block table, a captured call replayed with such a
    length skips that sequence (o = 0, LSE = +inf) and computes the others as usual."""
    skip_unless_gpu_kernel(64, torch.bfloat16)
    g = torch.Generator().manual_seed(3)
    make = lambda *shape: torch.randn(*shape, generator=g).to("cuda", torch.bfloat16)  # noqa: E731
    q = make(3, 1, 4, 64)
    k_paged, v_paged = make(14, 16, 2, 64), make(14, 16, 2, 64)
    table = torch.randperm(14, generator=g)[:12].view(3, 4).to("cuda", torch.int32)
    seqlens = torch.tensor([5, 40, 9], dtype=torch.int32, device="cuda")

    def step():
        return flashattn.flash_attn_with_kvcache(q, k_paged, v_paged, cache_seqlens=seqlens,
                                                 block_table=table, return_softmax_lse=True)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        good_out, good_lse = (t.clone() for t in step())
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = step()
    seqlens[1] = 65  # capacity 4 pages x 16 = 64
    with pytest.raises(RuntimeError, match="block_table: sequence 1 needs"):
        step()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.isinf(lse[1]).all() and (lse[1] > 0).all()
    for i in (0, 2):
        assert torch.equal(out[i], good_out[i]) and torch.equal(lse[i], good_lse[i])


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
    fwd_args = (q, k, v, None, 0.0, 0.125, True, -1, -1, 0.0, False, False)
    torch.library.opcheck(ops.fwd.default, fwd_args)
    out, lse, _, rng = ops.fwd(*fwd_args)
    dout = torch.randn_like(out)
    torch.library.opcheck(ops.bwd.default, (dout, q, k, v, out, lse, None, 0.0, 0.125, True, -1,
                                            -1, 0.0, False, rng))
    cu = torch.tensor([0, 10, 33], dtype=torch.int32, device=device)
    cuk = torch.tensor([0, 20, 47], dtype=torch.int32, device=device)
    qv, kv, vv = q[0], k[0], v[0]
    vargs = (qv, kv, vv, cu, cuk, None, None, None, 23, 27, 0.0, 0.125, False, -1, -1, 0.0, False,
             False)
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
    names = ["fwd", "varlen_fwd", "bwd", "bwd_into", "varlen_bwd", "fwd_kvcache"]
    for name in names:
        op = getattr(torch.ops.flashattn, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU"), name
        assert HAS_CUDA is False or torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA"), name
