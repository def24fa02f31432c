"""RWKV-4 (BlinkDL .pth state dict, sizes from shapes) -> transformers RwkvForCausalLM."""

from converters.rwkv import convert, loading, mutants, points, source
from harness.family import Family, Flags, Reference

__all__ = ["FAMILY"]

FAMILY = Family("rwkv", __doc__.strip(), source=source, tables=convert.TABLES, mutations=mutants,
                oracle=Reference("converters.rwkv.reference", points.POINTS, loading.loading),
                cli=Flags(source.OPTIONS))
