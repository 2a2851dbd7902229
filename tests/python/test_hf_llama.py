"""examples/hf_llama.py as a test: a small Llama-style transformers model (random weights,
config built offline) with attention through flashattn matches the sdpa implementation, in the
forward logits and in one training step's loss and gradients."""
import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fa_testing import HAS_CUDA, requires_cuda, skip_unless_gpu_kernel  # noqa: E402

_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_llama.py"


def _example():
    spec = importlib.util.spec_from_file_location("hf_llama_example", _EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("padding", [False, True])
def test_fp32_cpu_matches_sdpa(padding):
    r = _example().compare("cpu", torch.float32, seqlen=96, padding=padding)
    assert r["grads_finite"] and r["num_grads"] > 0
    assert r["max_logit_diff"] <= 1e-4 * max(1.0, r["logit_scale"]), r
    assert abs(r["loss"] - r["loss_sdpa"]) <= 1e-5 * abs(r["loss_sdpa"]), r
    assert r["max_grad_rel_diff"] <= 1e-4, r


def _check_low_precision(r):
    """bf16 tolerance, stated as flash_attn's rule: against the same weights run in fp32,
    flashattn's error is at most twice sdpa's own bf16 error (plus a floor of rounding noise)."""
    assert r["grads_finite"] and r["num_grads"] > 0
    assert r["logit_err_vs_fp32"] <= 2 * r["logit_err_sdpa_vs_fp32"] + 1e-2, r
    assert r["grad_err_vs_fp32"] <= 2 * r["grad_err_sdpa_vs_fp32"] + 1e-3, r
    assert abs(r["loss"] - r["loss_sdpa"]) <= 1e-2, r


@pytest.mark.parametrize("padding", [False, True])
def test_bf16_cpu_matches_sdpa(padding):
    _check_low_precision(_example().compare("cpu", torch.bfloat16, seqlen=64, padding=padding))


@requires_cuda
@pytest.mark.parametrize("padding", [False, True])
def test_bf16_gpu_matches_sdpa(padding):
    skip_unless_gpu_kernel(64, torch.bfloat16)
    _check_low_precision(_example().compare("cuda", torch.bfloat16, seqlen=300, padding=padding))


def test_example_runs_as_script(capsys):
    if HAS_CUDA:
        skip_unless_gpu_kernel(64, torch.bfloat16)  # the example's model: head dim 512 / 8
    import sys
    argv = sys.argv
    sys.argv = [str(_EXAMPLE), "--device", "cuda" if HAS_CUDA else "cpu", "--seqlen", "64"]
    try:
        _example().main()
    finally:
        sys.argv = argv
    assert "max_logit_diff" in capsys.readouterr().out
