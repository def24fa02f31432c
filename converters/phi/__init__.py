"""Phi (Microsoft's original phi-msft / mixformer-sequential checkpoints) -> transformers PhiForCausalLM."""

from converters.phi.convert import convert, invert
from converters.phi.reference import forward
from converters.phi.source import CASES, SIZES, read, shapes, tiny, write

__all__ = ["CASES", "SIZES", "convert", "forward", "invert", "read", "shapes", "tiny", "write"]
