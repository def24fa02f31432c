"""Llama (Meta's params.json + consolidated.NN.pth rank files, Llama 1/2/3/3.1) -> transformers LlamaForCausalLM."""

from converters.llama import convert, facts, mutants, points, source
from harness.family import Family, Flags, Reference

__all__ = ["FAMILY"]

FAMILY = Family("llama", __doc__.strip(), source=source, tables=convert.TABLES, mutations=mutants,
                oracle=Reference("converters.llama.reference", points.POINTS),
                cli=Flags(source.OPTIONS, facts=facts.facts))
