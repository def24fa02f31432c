"""GPT-SW3 (NeMo / Megatron GPT .ckpt or .nemo) -> transformers GPT2LMHeadModel."""

from converters.gpt_sw3.convert import convert, invert
from converters.gpt_sw3.source import CASES, OPTIONS, SIZES, UPSTREAM_OPTIONS, read, shapes, tiny, write
from harness.mapping.lazy import lazy_function

forward = lazy_function("converters.gpt_sw3.reference", "forward")  # torch loads when it runs

# What `convert`/`verify` fetch for a Hub id as SOURCE: one .nemo (config and tokenizer inside) or .ckpt.
HUB_FILES = ["*.nemo", "*.ckpt"]

__all__ = ["CASES", "HUB_FILES", "OPTIONS", "SIZES", "UPSTREAM_OPTIONS", "convert", "forward", "invert", "read",
           "shapes", "tiny", "write"]
