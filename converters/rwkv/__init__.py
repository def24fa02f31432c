"""RWKV-4 (BlinkDL .pth state dict, sizes from shapes) -> transformers RwkvForCausalLM."""

from converters.rwkv.convert import convert, invert
from converters.rwkv.loading import loading
from converters.rwkv.reference import forward
from converters.rwkv.source import CASES, OPTIONS, SIZES, read, shapes, tiny, write

# What `convert`/`verify` fetch for a Hub id as SOURCE: one BlinkDL .pth; sizes come from shapes.
HUB_FILES = ["*.pth"]

__all__ = ["CASES", "HUB_FILES", "OPTIONS", "SIZES", "convert", "forward", "invert", "loading", "read", "shapes",
           "tiny", "write"]
