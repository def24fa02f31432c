"""GPT-SW3 (NeMo / Megatron GPT .ckpt or .nemo) -> transformers GPT2LMHeadModel."""

from converters.gpt_sw3 import convert, mutants, points, source
from harness.family import Family, Flags, Reference

__all__ = ["FAMILY"]

FAMILY = Family("gpt_sw3", __doc__.strip(), source=source, tables=convert.TABLES, mutations=mutants,
                oracle=Reference("converters.gpt_sw3.reference", points.POINTS),
                cli=Flags(source.OPTIONS, source.UPSTREAM_OPTIONS))
