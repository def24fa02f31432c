"""Mixtral (Mistral AI params.json + consolidated.*) -> transformers MixtralForCausalLM."""

from converters.mixtral import convert, mutants, points, source
from harness.family import Family, Reference

__all__ = ["FAMILY"]

FAMILY = Family("mixtral", __doc__.strip(), source=source, tables=convert.TABLES, mutations=mutants,
                oracle=Reference("converters.mixtral.reference", points.POINTS))
