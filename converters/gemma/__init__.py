"""Gemma 1 (google/gemma_pytorch .ckpt, sharded or int8-quantised) -> transformers GemmaForCausalLM."""

from converters.gemma.convert import convert, invert
from converters.gemma.source import CASES, OPTIONS, SIZES, read, shapes, tiny, write
from harness.mapping.lazy import lazy_function

forward = lazy_function("converters.gemma.reference", "forward")  # torch loads when it runs

# What `convert`/`verify` fetch for a Hub id as SOURCE: config.json, one .ckpt, or an index + shards (source.read).
HUB_FILES = ["config.json", "*.ckpt", "pytorch_model*.bin", "*.index.json"]

__all__ = ["CASES", "HUB_FILES", "OPTIONS", "SIZES", "convert", "forward", "invert", "read", "shapes", "tiny", "write"]
