"""flashattn.bert_padding: unpad/pad round trips, the five values of unpad_input (seqused with
unused_mask), gradients through the gather/scatter, concatenated sequences, and varlen
attention on unpadded inputs equal to dense attention with a key padding mask."""
import pytest

torch = pytest.importorskip("torch")

from fa_testing import HAS_CUDA, skip_unless_gpu_kernel  # noqa: E402
from flashattn import flash_attn_func, flash_attn_varlen_func  # noqa: E402
from flashattn.bert_padding import (index_first_axis, index_first_axis_residual,  # noqa: E402
                                    pad_input, unpad_input,
                                    unpad_input_for_concatenated_sequences)

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def _mask(lengths, seqlen, device):
    return torch.arange(seqlen, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]


@pytest.mark.parametrize("device", DEVICES)
def test_unpad_pad_round_trip(device):
    b, s = 4, 11
    x = torch.randn(b, s, 3, 5, device=device)
    lengths = [11, 0, 4, 7]
    mask = _mask(lengths, s, device)
    x_unpad, indices, cu_seqlens, max_seqlen, seqused = unpad_input(x, mask)
    assert x_unpad.shape == (sum(lengths), 3, 5)
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens.tolist() == [0, 11, 11, 15, 22]
    assert isinstance(max_seqlen, int) and max_seqlen == 11
    assert seqused.dtype == torch.int32 and seqused.tolist() == lengths
    assert torch.equal(x_unpad, x[mask])
    back = pad_input(x_unpad, indices, b, s)
    assert torch.equal(back, x * mask[:, :, None, None])


@pytest.mark.parametrize("device", DEVICES)
def test_unused_mask_counts_in_cu_seqlens_not_seqused(device):
    b, s = 2, 8
    x = torch.randn(b, s, 4, device=device)
    attention = _mask([3, 5], s, device)
    unused = _mask([5, 6], s, device) & ~attention
    x_unpad, indices, cu_seqlens, max_seqlen, seqused = unpad_input(x, attention, unused)
    assert cu_seqlens.tolist() == [0, 5, 11]
    assert seqused.tolist() == [3, 5]
    assert max_seqlen == 6
    assert torch.equal(x_unpad, x[attention | unused])


@pytest.mark.parametrize("device", DEVICES)
def test_gradients(device):
    x = torch.randn(3, 6, 4, device=device, requires_grad=True)
    mask = _mask([6, 2, 4], 6, device)
    x_unpad, indices, *_ = unpad_input(x, mask)
    w = torch.randn_like(x_unpad)
    (x_unpad * w).sum().backward()
    expect = torch.zeros_like(x)
    expect[mask] = w
    assert torch.equal(x.grad, expect)

    y = torch.randn(12, 4, device=device, requires_grad=True)
    out = pad_input(y, indices, 3, 6)
    g = torch.randn_like(out)
    out.backward(g)
    assert torch.equal(y.grad, g[mask])


def test_index_first_axis_residual():
    x = torch.randn(5, 3, requires_grad=True)
    idx = torch.tensor([4, 0, 2])
    picked, residual = index_first_axis_residual(x, idx)
    assert torch.equal(picked, x[idx]) and torch.equal(residual, x)
    (picked.sum() * 2 + (residual * 3).sum()).backward()
    expect = torch.full_like(x, 3.0)
    expect[idx] += 2.0
    assert torch.equal(x.grad, expect)
    assert torch.equal(index_first_axis(x, idx), x[idx])


def test_concatenated_sequences():
    x = torch.randn(2, 6, 3)
    in_length = torch.tensor([[2, 3, 0, 0, 0, 0], [4, 1, 1, 0, 0, 0]])
    x_unpad, indices, cu_seqlens, max_seqlen = unpad_input_for_concatenated_sequences(x, in_length)
    assert cu_seqlens.tolist() == [0, 2, 5, 9, 10, 11]
    assert max_seqlen == 4
    assert indices.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert torch.equal(x_unpad, x.reshape(12, 3)[indices])


@pytest.mark.parametrize("device", DEVICES)
def test_varlen_attention_on_unpadded_batch(device):
    """unpad -> varlen attention -> pad equals dense attention of each sequence alone."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    b, s, h, d = 3, 40, 4, 64
    if device == "cuda":
        skip_unless_gpu_kernel(d, dtype)
    lengths = [40, 17, 1]
    mask = _mask(lengths, s, device)
    q, k, v = (torch.randn(b, s, h, d, device=device, dtype=dtype) for _ in range(3))
    q_u, idx, cu, max_s, _ = unpad_input(q, mask)
    k_u, v_u = unpad_input(k, mask)[0], unpad_input(v, mask)[0]
    out = pad_input(flash_attn_varlen_func(q_u, k_u, v_u, cu, cu, max_s, max_s, causal=True),
                    idx, b, s)
    for i, n in enumerate(lengths):
        alone = flash_attn_func(q[i:i + 1, :n], k[i:i + 1, :n], v[i:i + 1, :n], causal=True)
        # Same kernels on the same rows: exact on the CPU backend, within rounding on the GPU.
        tol = 0 if device == "cpu" else 1e-2
        torch.testing.assert_close(out[i:i + 1, :n], alone, atol=tol, rtol=tol)
        assert torch.equal(out[i, n:], torch.zeros_like(out[i, n:]))
