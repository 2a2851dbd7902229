#!/usr/bin/env python3
"""A Hugging Face transformers causal LM whose attention runs through flashattn.

Registers flashattn as a transformers attention implementation ("fa_exact") (AttentionInterface for the
attention call, AttentionMaskInterface for the mask it wants: none when there is no padding, else
the 2D padding mask, which is turned into varlen inputs), builds a small Llama-style model with
random weights from a config made here (no download), and compares it with the same weights on
the `sdpa` implementation: logits of a forward pass, then the loss and gradients of one training
step.

    python examples/hf_llama.py                 # GPU in bf16 when present, else CPU in fp32
    python examples/hf_llama.py --device cpu --dtype fp32 --padding

Switching a model over is one line once this module is imported:
    model.set_attn_implementation("fa_exact")
"""
from __future__ import annotations

import argparse
from typing import Dict, Optional, Tuple

import torch

import flashattn
from flashattn.bert_padding import pad_input, unpad_input

# transformers treats every implementation name containing "flash" as a flash-attention kernel
# to fetch from its hub, so the name avoids that word.
ATTN_NAME = "fa_exact"


def flashattn_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                                scaling: Optional[float] = None, dropout: float = 0.0,
                                sliding_window: Optional[int] = None,
                                **kwargs) -> Tuple[torch.Tensor, None]:
    """transformers attention function: query (b, h, s_q, d), key/value (b, h_k, s_k, d) in,
    (b, s_q, h, d) out. GQA is native (no repeat of k/v); attention_mask is None or the 2D
    padding mask (b, s_k) from flash_attention_mask."""
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    is_causal = kwargs.get("is_causal")
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    # A single query row sees every cached key under bottom-right causal alignment anyway.
    causal = causal and q.shape[1] > 1
    window = (sliding_window - 1, 0) if sliding_window else (-1, -1)
    if attention_mask is None:
        out = flashattn.flash_attn_func(q, k, v, dropout_p=dropout, softmax_scale=scaling,
                                        causal=causal, window_size=window)
        return out, None
    # Padding: pack the real tokens of every sequence and run the varlen kernel. The queries are
    # the last s_q positions of the mask (the keys may include cached tokens before them).
    b, s_q = q.shape[:2]
    key_mask = attention_mask.bool()
    q_unpad, q_idx, cu_q, max_q, _ = unpad_input(q, key_mask[:, -s_q:])
    k_unpad, _, cu_k, max_k, _ = unpad_input(k, key_mask)
    v_unpad = unpad_input(v, key_mask)[0]
    out = flashattn.flash_attn_varlen_func(q_unpad, k_unpad, v_unpad, cu_q, cu_k, max_q, max_k,
                                           dropout_p=dropout, softmax_scale=scaling,
                                           causal=causal, window_size=window)
    return pad_input(out, q_idx, b, s_q), None


def register() -> None:
    """Makes `attn_implementation="fa_exact"` available to every transformers model."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(ATTN_NAME, flashattn_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, flash_attention_mask)


def build_model(device: str, dtype: torch.dtype, seed: int = 0):
    """A 2-layer Llama-style causal LM with GQA (8 query heads, 2 kv heads, head dim 64)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1024,
                         num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                         max_position_embeddings=1024, attn_implementation="sdpa")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Larger-than-default init so attention is far from uniform and a wrong mask shows up.
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.weight.mul_(4.0)
    return model.to(device=device, dtype=dtype)


def _run(model, input_ids, attention_mask, labels) -> Tuple[torch.Tensor, torch.Tensor, Dict]:
    model.zero_grad(set_to_none=True)
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    out.loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return out.logits.detach().float(), out.loss.detach().float(), grads


def _max_rel_grad_diff(grads: Dict, grads_ref: Dict) -> float:
    worst = 0.0
    for name, g_ref in grads_ref.items():
        scale = g_ref.abs().max().item()
        if scale > 0:
            worst = max(worst, (grads[name] - g_ref).abs().max().item() / scale)
    return worst


def compare(device: str, dtype: torch.dtype, batch: int = 2, seqlen: int = 200,
            padding: bool = False, seed: int = 0) -> Dict[str, float]:
    """Forward + one training step with sdpa and with flashattn on the same weights and inputs.

    Returns the max logit difference between the two (over non-padded positions), both losses,
    the largest gradient difference relative to that gradient's max magnitude, and whether every
    flashattn gradient is finite. For bf16/fp16 it also measures both implementations against
    the same weights run in fp32 with sdpa (the `*_vs_fp32` entries), which says whether
    flashattn's difference from sdpa is just low-precision rounding."""
    register()
    model = build_model(device, dtype, seed)
    model.train()  # attention dropout is 0 in this config, so training mode is deterministic
    gen = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, model.config.vocab_size, (batch, seqlen), generator=gen).to(device)
    attention_mask = None
    labels = input_ids.clone()
    if padding:
        # Right padding of different lengths; padded labels are ignored by the loss.
        lengths = [seqlen - 37 * i for i in range(batch)]
        attention_mask = (torch.arange(seqlen)[None, :] < torch.tensor(lengths)[:, None]).long()
        attention_mask = attention_mask.to(device)
        labels = labels.masked_fill(attention_mask == 0, -100)
    valid = torch.ones(batch, seqlen, dtype=torch.bool, device=device)
    if attention_mask is not None:
        valid = attention_mask.bool()

    model.set_attn_implementation("sdpa")
    logits_ref, loss_ref, grads_ref = _run(model, input_ids, attention_mask, labels)
    model.set_attn_implementation(ATTN_NAME)
    logits, loss, grads = _run(model, input_ids, attention_mask, labels)

    result = {
        "max_logit_diff": (logits - logits_ref).abs()[valid].max().item(),
        "logit_scale": logits_ref[valid].abs().max().item(),
        "loss": loss.item(),
        "loss_sdpa": loss_ref.item(),
        "max_grad_rel_diff": _max_rel_grad_diff(grads, grads_ref),
        "grads_finite": all(bool(torch.isfinite(g).all()) for g in grads.values()),
        "num_grads": len(grads),
    }
    if dtype != torch.float32:
        model.float().set_attn_implementation("sdpa")
        logits32, _, grads32 = _run(model, input_ids, attention_mask, labels)
        result["logit_err_vs_fp32"] = (logits - logits32).abs()[valid].max().item()
        result["logit_err_sdpa_vs_fp32"] = (logits_ref - logits32).abs()[valid].max().item()
        result["grad_err_vs_fp32"] = _max_rel_grad_diff(grads, grads32)
        result["grad_err_sdpa_vs_fp32"] = _max_rel_grad_diff(grads_ref, grads32)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None)
    ap.add_argument("--seqlen", type=int, default=200)
    ap.add_argument("--padding", action="store_true", help="right-pad the batch (varlen path)")
    args = ap.parse_args()
    dtype_name = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    result = compare(args.device, dtype, seqlen=args.seqlen, padding=args.padding)
    print(f"device={args.device} dtype={dtype_name} padding={args.padding}")
    for key, value in result.items():
        print(f"  {key:22s} {value:.6g}" if isinstance(value, float) else f"  {key:22s} {value}")


if __name__ == "__main__":
    main()
