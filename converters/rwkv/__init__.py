"""RWKV-4 (BlinkDL .pth state dict, sizes from shapes) -> transformers RwkvForCausalLM."""

from converters.rwkv.convert import convert, invert
from converters.rwkv.loading import loading
from converters.rwkv.source import CASES, OPTIONS, SIZES, read, shapes, tiny, write
from harness.mapping.lazy import lazy_function

forward = lazy_function("converters.rwkv.reference", "forward")  # torch loads when it runs

# What `convert`/`verify` fetch for a Hub id as SOURCE: one BlinkDL .pth; sizes come from shapes.
HUB_FILES = ["*.pth"]

__all__ = ["CASES", "HUB_FILES", "OPTIONS", "SIZES", "convert", "forward", "invert", "loading", "read", "shapes",
           "tiny", "write"]
