"""Phi (Microsoft's original phi-msft / mixformer-sequential checkpoints) -> transformers PhiForCausalLM."""

from converters.phi.convert import convert, invert
from converters.phi.source import CASES, SIZES, read, shapes, tiny, write
from harness.mapping.lazy import lazy_function

forward = lazy_function("converters.phi.reference", "forward")  # torch loads when it runs

# What `convert`/`verify` fetch for a Hub id as SOURCE: config.json +
# pytorch_model.bin / model.safetensors / shards + index (source.read).
HUB_FILES = ["config.json", "*.bin", "*.safetensors", "*.index.json"]

__all__ = ["CASES", "HUB_FILES", "SIZES", "convert", "forward", "invert", "read", "shapes", "tiny", "write"]
