"""Mixtral (Mistral AI params.json + consolidated.*) -> transformers MixtralForCausalLM."""

from converters.mixtral.convert import convert, invert
from converters.mixtral.source import CASES, SIZES, read, shapes, tiny, write
from harness.mapping.lazy import lazy_function

forward = lazy_function("converters.mixtral.reference", "forward")  # torch loads when it runs

# What `convert`/`verify` fetch for a Hub id as SOURCE: params.json +
# consolidated.safetensors / .00.pth / .NN.pt (source.read).
HUB_FILES = ["params.json", "consolidated.*"]

__all__ = ["CASES", "HUB_FILES", "SIZES", "convert", "forward", "invert", "read", "shapes", "tiny", "write"]
