"""Llama (Meta's params.json + consolidated.NN.pth rank files, Llama 1/2/3/3.1) -> transformers LlamaForCausalLM."""

from converters.llama.convert import convert, invert
from converters.llama.source import CASES, OPTIONS, SIZES, read, shapes, tiny, write
from harness.mapping.lazy import lazy_function

forward = lazy_function("converters.llama.reference", "forward")  # torch loads when it runs

# What `convert`/`verify` fetch for a Hub id as SOURCE: Meta's files; the Hub keeps them under original/.
HUB_FILES = ["params.json", "consolidated.*.pth", "tokenizer.model", "original/params.json",
             "original/consolidated.*.pth", "original/tokenizer.model"]

__all__ = ["CASES", "HUB_FILES", "OPTIONS", "SIZES", "convert", "forward", "invert", "read", "shapes", "tiny", "write"]
