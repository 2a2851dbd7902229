"""Context parallelism (flashattn.cp) on the CPU.

1. The emulator (every rank of a group in one process) against single-device attention over a
   matrix of variants (contiguous ring, zigzag ring, Ulysses) x causal x MHA/GQA/MQA x head
   dims 64/128 x fp32/bf16/fp16, for out, lse, dq, dk, dv: fp32 within 1e-5 (relative to the
   magnitude) of flash_attn_func; bf16/fp16 within 2x flash_attn_func's own error against the
   fp32 reference, + 1e-3.
2. Real worlds of 1, 2, 3 and 4 processes over gloo (forked from one forkserver that imported
   torch once), through the public functions with autograd: every rank's out, lse and
   gradients bitwise equal to the emulator's, and the same tolerances against single-device.
3. Pieces: the LSE merge with rows that see no key, the layout helpers, the schedules'
   message counts, the bwd_into op, and the errors for unsupported features and bad shapes.
"""
import math
import multiprocessing as mp

import pytest

torch = pytest.importorskip("torch")

from fa_testing import requires_cuda, skip_unless_gpu_kernel  # noqa: E402
import flashattn  # noqa: E402
from flashattn import cp  # noqa: E402
from flashattn.cp import _api, _comm, _merge, _ring, _ulysses, emulate  # noqa: E402

import cp_harness as H  # noqa: E402
from attn_ref import attention_ref, max_err  # noqa: E402

HEADS = {"mha": (12, 12), "gqa": (12, 4), "mqa": (12, 1)}
NAMES = ("out", "lse", "dq", "dk", "dv")


def _case(variant, causal, heads, d, dtype, world, seed, **extra):
    h, h_k = HEADS[heads]
    # Odd chunk lengths: local sequences of 13 (contiguous ring), 2 x 7 (zigzag), 11 (Ulysses).
    s = {"ring": 13, "zigzag": 14, "ulysses": 11}[variant] * world
    return dict(variant=variant, causal=causal, h=h, h_k=h_k, d=d, dtype=dtype, b=2, s=s,
                seed=seed, **extra)


def check_vs_single_device(case, got):
    """got: whole-sequence out, lse, dq, dk, dv of a CP run."""
    single = H.single_device(case)
    if case["dtype"] == "fp32":
        for n in NAMES:
            want = single[n]
            assert torch.equal(torch.isinf(got[n]), torch.isinf(want)), f"{n}: inf positions"
            mag = max(1.0, want[torch.isfinite(want)].abs().max().item())
            err = max_err(got[n], want)
            assert err <= 1e-5 * mag, f"{n}: {err:.3e} from single-device (scale {mag:.2f})"
        return
    ref = H.reference(case, upcast=True)
    for n in NAMES:
        assert not torch.isnan(got[n]).any(), f"{n}: NaN"
        err_cp, err_single = max_err(got[n], ref[n]), max_err(single[n], ref[n])
        assert err_cp <= 2 * err_single + 1e-3, (
            f"{n}: CP error {err_cp:.3e} > 2 x single-device {err_single:.3e} + 1e-3")


# ------------------------------------------------------------------- 1. emulator matrix --

EMULATOR_CASES = []
for _i, (_v, _c, _hd, _d, _t) in enumerate(
        (v, c, hd, d, t) for v in ("ring", "zigzag", "ulysses") for c in (False, True)
        for hd in HEADS for d in (64, 128) for t in ("fp32", "bf16", "fp16")):
    EMULATOR_CASES.append(pytest.param(_case(_v, _c, _hd, _d, _t, world=2 + _i % 3, seed=_i),
                                       id=f"{_v}-{'causal' if _c else 'full'}-{_hd}-d{_d}-{_t}"
                                          f"-P{2 + _i % 3}"))


@pytest.mark.parametrize("case", EMULATOR_CASES)
def test_emulator_matches_single_device(case):
    world = case["s"] // {"ring": 13, "zigzag": 14, "ulysses": 11}[case["variant"]]
    got = H.joined(case, H.run_emulated(case, world))
    check_vs_single_device(case, got)


def test_emulator_cross_attention():
    """Non-causal ring with local key shards longer than the query shards (s_q 5, s_k 9 per
    rank): fp32 against flash_attn_func on the whole sequences."""
    g = torch.Generator().manual_seed(21)
    world = 3
    q, do = (torch.randn(2, 5 * world, 6, 64, generator=g) for _ in range(2))
    k, v = (torch.randn(2, 9 * world, 2, 64, generator=g) for _ in range(2))
    split = lambda x: list(x.chunk(world, dim=1))  # noqa: E731  (contiguous layout)
    outs, lses = emulate.ring_forward(split(q), split(k), split(v))
    dqs, dks, dvs = emulate.ring_backward(split(do), split(q), split(k), split(v), outs, lses)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse, _ = flashattn.flash_attn_func(*leaves, return_attn_probs=True)
    out.backward(do)
    for got, want in ((torch.cat(outs, 1), out), (torch.cat(lses, 2), lse),
                      (torch.cat(dqs, 1), leaves[0].grad), (torch.cat(dks, 1), leaves[1].grad),
                      (torch.cat(dvs, 1), leaves[2].grad)):
        assert max_err(got, want.detach()) <= 1e-5 * max(1.0, want.abs().max().item())


def test_emulator_softcap_and_world_1():
    case = _case("zigzag", True, "gqa", 64, "fp32", world=3, seed=7, softcap=2.0)
    check_vs_single_device(case, H.joined(case, H.run_emulated(case, 3)))
    # One rank: the merge of a single step is exact, so the emulator is flash_attn_func itself.
    for variant in ("ring", "zigzag", "ulysses"):
        one = _case(variant, True, "gqa", 64, "bf16", world=1, seed=8)
        got, single = H.run_emulated(one, 1)[0], H.single_device(one)
        for n in NAMES:
            assert torch.equal(got[n], single[n]), f"{variant} {n}"


# ---------------------------------------------------------------- 2. spawned gloo worlds --

_FORKSERVER = None


def _context():
    """A forkserver that imported torch and flashattn once; every rank is forked from it."""
    global _FORKSERVER
    if _FORKSERVER is None:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "flashattn", "flashattn.cp", "cp_harness"])
        _FORKSERVER = ctx
    return _FORKSERVER


def _world_cases(world):
    cases = [
        _case("ring", True, "gqa", 64, "bf16", world, 100 + world),
        _case("zigzag", True, "mqa", 128, "bf16", world, 200 + world),
        _case("zigzag", False, "mha", 64, "fp32", world, 300 + world, api="qkvpacked"),
        _case("ring", False, "gqa", 128, "fp16", world, 400 + world, api="kvpacked"),
        _case("zigzag", True, "gqa", 64, "fp32", world, 500 + world, api="kvpacked"),
        _case("ulysses", True, "gqa", 64, "bf16", world, 600 + world),
        _case("ulysses", False, "mqa", 128, "fp32", world, 700 + world),
    ]
    if world == 4:
        # A group that is not the default one (ranks 1..3 of 4): peers are global ranks.
        sub = _case("zigzag", True, "gqa", 64, "bf16", 3, 800)
        sub["subgroup"] = [1, 2, 3]
        cases.append(sub)
    return cases


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_gloo_world_bitwise_equals_emulator(world, tmp_path):
    cases = _world_cases(world)
    ctx = _context()
    procs = [ctx.Process(target=H.rank_main, args=(r, world, str(tmp_path), cases))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, f"ranks {hung} did not finish within 180 s (hang?)"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks ran: elementwise ops then split work identically
    try:
        for i, case in enumerate(cases):
            members = case.get("subgroup") or list(range(world))
            dist_res = [per_rank[g][i] for g in members]
            emu = H.run_emulated(case, len(members))
            for r, (d, e) in enumerate(zip(dist_res, emu)):
                for n in NAMES:
                    assert d[n].dtype == e[n].dtype and d[n].shape == e[n].shape, (case, r, n)
                    assert torch.equal(d[n], e[n]), (
                        f"case {i} rank {r} {n}: distributed != emulator, max diff "
                        f"{max_err(d[n], e[n]):.3e} ({case})")
            whole = H.joined(case, emu)
            for d in dist_res:
                assert torch.equal(d["out_gathered"], whole["out"]), f"case {i}: unshard_sequence"
            check_vs_single_device(case, whole)
            if "subgroup" in case:
                assert per_rank[0][i] is None
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- 3. pieces --

def test_merge_rows_without_keys():
    """Partial results whose rows see no key (lse = +inf from the kernel) must not poison the
    merge: q of 10 rows, keys k1 (4, causal: rows 0-5 see none of them) and k2 (6, all seen)."""
    g = torch.Generator().manual_seed(3)
    q, k1, v1 = (torch.randn(1, n, 2, 16, generator=g) for n in (10, 4, 4))
    k2, v2 = (torch.randn(1, 6, 2, 16, generator=g) for _ in range(2))
    o1, l1, _ = flashattn.flash_attn_func(q, k1, v1, causal=True, return_attn_probs=True)
    o2, l2, _ = flashattn.flash_attn_func(q, k2, v2, return_attn_probs=True)
    assert torch.isinf(l1[:, :, :6]).all() and (l1[:, :, :6] > 0).all()
    # Reference: softmax over the union with the same visibility.
    k, v = torch.cat((k1, k2), 1).double(), torch.cat((v1, v2), 1).double()
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k) / math.sqrt(16)
    i, j = torch.arange(10).view(-1, 1), torch.arange(10).view(1, -1)
    visible = (j >= 4) | (j <= i - 6)
    s = s.masked_fill(~visible, float("-inf"))
    want_lse = torch.logsumexp(s, -1)
    want_out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), v)
    for order in ((o1, l1, o2, l2), (o2, l2, o1, l1)):
        out, lse = _merge.empty_partial(q, l1.shape)
        _merge.merge_(out, lse, order[0], order[1])
        _merge.merge_(out, lse, order[2], order[3])
        assert (out - want_out).abs().max() < 1e-5
        assert (_merge.finalize_lse(lse) - want_lse).abs().max() < 1e-5
    # Rows that no partial covers stay empty: zero output, lse +inf, no NaN.
    out, lse = _merge.empty_partial(q, l1.shape)
    _merge.merge_(out, lse, o1, l1)
    _merge.merge_(out, lse, torch.zeros_like(o1), torch.full_like(l1, float("inf")))
    assert torch.equal(out[:, :6], torch.zeros_like(out[:, :6]))
    assert torch.isinf(_merge.finalize_lse(lse)[:, :, :6]).all()
    assert not torch.isnan(out).any()
    assert (out[:, 6:] - o1[:, 6:]).abs().max() < 1e-6


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_layout_helpers(layout, world):
    s = 2 * world * 5
    x = torch.arange(3 * s).view(3, s)  # (batch, seq)
    parts = [cp.shard_sequence(x, dim=1, layout=layout, rank=r, world_size=world)
             for r in range(world)]
    assert torch.equal(cp.join_shards(parts, dim=1, layout=layout), x)
    seen = torch.cat([cp.sequence_positions(s, layout=layout, rank=r, world_size=world)
                      for r in range(world)])
    assert sorted(seen.tolist()) == list(range(s))
    for r in range(world):
        pos = cp.sequence_positions(s, layout=layout, rank=r, world_size=world)
        assert torch.equal(parts[r][0], pos)  # row 0 of x holds the positions themselves
    if layout == "zigzag":
        c = s // (2 * world)
        assert cp.sequence_positions(s, layout=layout, rank=0, world_size=world)[c:].tolist() \
            == list(range(s - c, s))
    if world > 1 or layout == "zigzag":
        with pytest.raises(ValueError, match="not a multiple"):
            cp.shard_sequence(x[:, :s - 1], layout=layout, rank=0, world_size=world)
    with pytest.raises(ValueError, match="layout"):
        cp.shard_sequence(x, layout="striped", rank=0, world_size=world)


def _count(schedule):
    """Runs a schedule alone as rank 0 of its world (communication faked: receives zeros) and
    counts its requests by type."""
    counts = {}
    reply = None
    try:
        while True:
            req = schedule.send(reply)
            counts[type(req).__name__] = counts.get(type(req).__name__, 0) + 1
            reply = [] if isinstance(req, _comm.RingShift) else None
            if isinstance(req, _comm.AllToAll):
                req.out.copy_(req.inp)
    except StopIteration:
        return counts


@pytest.mark.parametrize("world", [2, 3, 4])
def test_message_counts(world):
    q, k, v = torch.randn(1, 8, 4, 16), torch.randn(1, 8, 4, 16), torch.randn(1, 8, 4, 16)
    kw = dict(rank=0, world=world, layout="zigzag", causal=True, softmax_scale=0.25, softcap=0.0)
    fwd = _count(_ring.ring_forward(q, k, v, **kw))
    assert fwd == {"RingShift": world - 1, "Wait": world - 1}  # P - 1 K/V hops
    out, lse = torch.zeros_like(q), torch.zeros(1, 4, 8)
    bwd = _count(_ring.ring_backward(q, q, k, v, out, lse, deterministic=False, **kw))
    # K/V: P - 1 hops again; dK/dV: P hops (the last one brings each block's gradient home).
    assert bwd == {"RingShift": 2 * world - 1, "Wait": 2 * world - 1}
    q12 = torch.randn(1, 8, 12, 16)
    fwd = _count(_ulysses.ulysses_forward(q12, k, v, world=world, causal=True,
                                          softmax_scale=0.25, softcap=0.0, need_lse=False))
    assert fwd == {"AllToAll": 2}  # q, k, v out in one message; the output back


def test_bwd_into_op():
    """bwd_into writes the same gradients as bwd (fp32 buffers: before rounding), adds with
    accumulate=True, and rejects buffers of another shape or dtype (InvalidArgumentError, as every
    adapter check)."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 19, 4, 32, generator=g).bfloat16()
    k, v = (torch.randn(2, 23, 2, 32, generator=g).bfloat16() for _ in range(2))
    out, lse, _, rng = torch.ops.flashattn.fwd(q, k, v, None, 0.0, 0.2, True, -1, -1, 0.0, False,
                                               False)
    dout = torch.randn(q.shape, generator=g).bfloat16()
    args = (None, 0.0, 0.2, True, -1, -1, 0.0, False, rng)
    dq, dk, dv, _ = torch.ops.flashattn.bwd(dout, q, k, v, out, lse, *args)
    f32 = [torch.full(t.shape, float("nan")) for t in (q, k, v)]
    torch.ops.flashattn.bwd_into(dout, q, k, v, out, lse, *f32, False, *args)
    for a, b in zip((dq, dk, dv), f32):
        assert torch.equal(a, b.bfloat16())
    start = [torch.randn(t.shape, generator=g) for t in (q, k, v)]
    acc = [t.clone() for t in start]
    torch.ops.flashattn.bwd_into(dout, q, k, v, out, lse, *acc, True, *args)
    for s0, a, b in zip(start, acc, f32):
        assert torch.equal(a, s0 + b)
    lowp = [t.bfloat16() for t in start]
    want = [(t.float() + b).bfloat16() for t, b in zip(lowp, f32)]
    torch.ops.flashattn.bwd_into(dout, q, k, v, out, lse, *lowp, True, *args)
    for a, b in zip(lowp, want):
        assert torch.equal(a, b)
    with pytest.raises(flashattn.InvalidArgumentError, match="dk must have k's shape"):
        torch.ops.flashattn.bwd_into(dout, q, k, v, out, lse, f32[0], f32[0], f32[2], False,
                                     *args)
    with pytest.raises(flashattn.InvalidArgumentError, match="q's dtype .* or float32"):
        torch.ops.flashattn.bwd_into(dout, q, k, v, out, lse, *(t.half() for t in f32), False,
                                     *args)
    with pytest.raises(flashattn.InvalidArgumentError, match="dv has dtype"):
        torch.ops.flashattn.bwd_into(dout, q, k, v, out, lse, f32[0], f32[1], dv, False, *args)
    torch.library.opcheck(torch.ops.flashattn.bwd_into.default,
                          (dout, q, k, v, out, lse, *f32, True, *args))


@pytest.fixture
def fake_world(monkeypatch):
    """Pretend this process is rank 0 of a group of 4 (the checks run before any message)."""
    monkeypatch.setattr(_api, "group_rank_and_size", lambda group: (0, 4))


def test_unsupported_features_raise(fake_world):
    q = torch.randn(1, 8, 4, 16)
    for fn in (cp.ring_flash_attn_func, cp.zigzag_ring_flash_attn_func,
               cp.ulysses_flash_attn_func):
        with pytest.raises(NotImplementedError, match="dropout_p = 0.1 is not supported"):
            fn(q, q, q, dropout_p=0.1)
        with pytest.raises(NotImplementedError, match=r"window_size = \(4, 0\)"):
            fn(q, q, q, window_size=(4, 0))
        with pytest.raises(NotImplementedError, match="alibi_slopes"):
            fn(q, q, q, alibi_slopes=torch.ones(4))


def test_bad_shapes_raise(fake_world):
    q = torch.randn(1, 7, 4, 16)
    with pytest.raises(ValueError, match="local sequence length 7 is odd"):
        cp.zigzag_ring_flash_attn_func(q, q, q, causal=True)
    with pytest.raises(ValueError, match="one length"):
        cp.ring_flash_attn_func(q, torch.randn(1, 9, 4, 16), torch.randn(1, 9, 4, 16),
                                causal=True)
    with pytest.raises(ValueError, match="nheads = 6 is not a multiple of the group size 4"):
        q6 = torch.randn(1, 8, 6, 16)
        cp.ulysses_flash_attn_func(q6, q6, q6)
    with pytest.raises(ValueError, match="layout"):
        cp.ring_flash_attn_func(q, q, q, layout="striped")
    with pytest.raises(ValueError, match=r"\(batch, seqlen, nheads, headdim\)"):
        cp.ring_flash_attn_func(q[0], q[0], q[0])


def test_without_process_group_raises():
    q = torch.randn(1, 8, 4, 16)
    if torch.distributed.is_initialized():
        pytest.skip("a process group is initialized in this process")
    with pytest.raises(RuntimeError, match="not initialized"):
        cp.ring_flash_attn_func(q, q, q)


# ------------------------------------------------------------------------------------ GPU --

@requires_cuda
@pytest.mark.parametrize("variant", ["ring", "zigzag", "ulysses"])
def test_emulator_on_gpu(variant):
    """The emulator's forward on the GPU kernels against flash_attn_func, bf16 2x rule (the
    ring's backward needs dqkv_fp32, which the GPU backward does not have yet)."""
    skip_unless_gpu_kernel(128, torch.bfloat16)
    case = _case(variant, True, "gqa", 128, "bf16", world=4, seed=11)
    world = 4
    x = {n: t.cuda() for n, t in H.full_inputs(case).items()}
    qs, ks, vs = (H.shards(case, x[n], world) for n in ("q", "k", "v"))
    if variant == "ulysses":
        outs, lses, _ = emulate.ulysses_forward(qs, ks, vs, causal=True)
    else:
        outs, lses = emulate.ring_forward(qs, ks, vs, causal=True, layout=H.layout_of(case))
    out = H.join(case, outs)
    single, _, _ = flashattn.flash_attn_func(x["q"], x["k"], x["v"], causal=True,
                                             return_attn_probs=True)
    ref, _ = attention_ref(x["q"], x["k"], x["v"], causal=True)
    assert max_err(out, ref) <= 2 * max_err(single, ref) + 1e-3
