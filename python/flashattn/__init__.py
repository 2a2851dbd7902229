"""flashattn: exact attention (FlashAttention-2 algorithm), a drop-in for flash_attn 2.x.

    import flashattn
    out = flashattn.flash_attn_func(q, k, v, causal=True)

CUDA tensors run the library's GPU kernels, CPU tensors its CPU backend, through the custom ops
`torch.ops.flashattn.*`. `flashattn.bert_padding` has flash_attn's unpad/pad helpers for varlen
inputs; `flashattn.build_info()` says what the linked library was compiled with. Bad arguments
raise `flashattn.InvalidArgumentError`, which is both a ValueError and a RuntimeError (the type
flash_attn raises), with a message naming the argument and the rule.
"""
from flashattn._ops import InvalidArgumentError, build_info
from flashattn.flash_attn_interface import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)

__version__ = "0.1.0"

__all__ = [
    "InvalidArgumentError",
    "build_info",
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
]
