"""Mistral (Mistral AI params.json + consolidated.*, dense: 7B v0.1-v0.3, Nemo, Small) -> MistralForCausalLM."""

from converters.mistral import convert, mutants, points, source
from harness.family import Family, Reference

__all__ = ["FAMILY"]

FAMILY = Family("mistral", __doc__.strip(), source=source, tables=convert.TABLES, mutations=mutants,
                oracle=Reference("converters.mistral.reference", points.POINTS))
