"""Gemma 1 (google/gemma_pytorch .ckpt, sharded or int8-quantised) -> transformers GemmaForCausalLM."""

from converters.gemma.convert import convert, invert
from converters.gemma.reference import forward
from converters.gemma.source import CASES, OPTIONS, SIZES, read, shapes, tiny, write

__all__ = ["CASES", "OPTIONS", "SIZES", "convert", "forward", "invert", "read", "shapes", "tiny", "write"]
