"""GPT-SW3 (NeMo / Megatron GPT .ckpt or .nemo) -> transformers GPT2LMHeadModel."""

from converters.gpt_sw3 import mutants, points
from converters.gpt_sw3.convert import CONFIG, KEYS, convert, invert
from converters.gpt_sw3.source import CASES, OPTIONS, SIZES, UPSTREAM_OPTIONS, read, shapes, tiny, write
from harness.lazy import lazy_function
from harness.mapping.family import Family

__all__ = ["FAMILY"]

FAMILY = Family(
    name="gpt_sw3",
    about=__doc__.strip(),
    read=read,
    write=write,
    tiny=tiny,
    shapes=shapes,
    config=CONFIG,
    keys=KEYS,
    convert=convert,
    invert=invert,
    reference=lazy_function("converters.gpt_sw3.reference", "forward"),  # torch loads when it runs
    cases=CASES,
    sizes=SIZES,
    # What `convert`/`verify` fetch for a Hub id as SOURCE: one .nemo (config and tokenizer inside) or .ckpt.
    hub_files=("*.nemo", "*.ckpt"),
    options=OPTIONS,
    upstream_options=UPSTREAM_OPTIONS,
    mutants=tuple(mutants.MUTANTS),
    mutation_cases=mutants.CASES,
    points=tuple(points.POINTS),
)
