"""GPT-SW3 (NeMo / Megatron GPT .ckpt or .nemo) -> transformers GPT2LMHeadModel."""

from converters.gpt_sw3.convert import convert, invert
from converters.gpt_sw3.reference import forward
from converters.gpt_sw3.source import CASES, OPTIONS, SIZES, UPSTREAM_OPTIONS, read, shapes, tiny, write

__all__ = ["CASES", "OPTIONS", "SIZES", "UPSTREAM_OPTIONS", "convert", "forward", "invert", "read", "shapes", "tiny",
           "write"]
