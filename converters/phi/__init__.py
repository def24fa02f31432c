"""Phi (Microsoft's original phi-msft / mixformer-sequential checkpoints) -> transformers PhiForCausalLM."""

from converters.phi import convert, mutants, points, source
from harness.family import Family, Reference

__all__ = ["FAMILY"]

FAMILY = Family("phi", __doc__.strip(), source=source, tables=convert.TABLES, mutations=mutants,
                oracle=Reference("converters.phi.reference", points.POINTS))
