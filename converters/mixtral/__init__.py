"""Mixtral (Mistral AI params.json + consolidated.*) -> transformers MixtralForCausalLM."""

from converters.mixtral.convert import convert, invert
from converters.mixtral.reference import forward
from converters.mixtral.source import CASES, SIZES, read, shapes, tiny, write

__all__ = ["CASES", "SIZES", "convert", "forward", "invert", "read", "shapes", "tiny", "write"]
