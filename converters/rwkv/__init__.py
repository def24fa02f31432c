"""RWKV-4 (BlinkDL .pth state dict, sizes from shapes) -> transformers RwkvForCausalLM."""

from converters.rwkv.convert import convert, invert
from converters.rwkv.loading import loading
from converters.rwkv.reference import forward
from converters.rwkv.source import CASES, OPTIONS, SIZES, read, shapes, tiny, write

__all__ = ["CASES", "OPTIONS", "SIZES", "convert", "forward", "invert", "loading", "read", "shapes", "tiny", "write"]
