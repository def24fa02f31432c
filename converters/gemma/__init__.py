"""Gemma 1 (google/gemma_pytorch .ckpt, sharded or int8-quantised) -> transformers GemmaForCausalLM."""

from converters.gemma import convert, facts, mutants, points, source
from harness.family import Family, Flags, Reference

__all__ = ["FAMILY"]

FAMILY = Family("gemma", __doc__.strip(), source=source, tables=convert.TABLES, mutations=mutants,
                oracle=Reference("converters.gemma.reference", points.POINTS),
                cli=Flags(source.OPTIONS, facts=facts.facts))
