"""Gemma 1 (google/gemma_pytorch .ckpt, sharded or int8-quantised) -> transformers GemmaForCausalLM."""

from converters.gemma import facts, mutants, points
from converters.gemma.convert import CONFIG, KEYS, convert, invert
from converters.gemma.source import CASES, OPTIONS, SIZES, read, shapes, tiny, write
from harness.lazy import lazy_function
from harness.mapping.family import Family

__all__ = ["FAMILY"]

FAMILY = Family(
    name="gemma",
    about=__doc__.strip(),
    read=read,
    write=write,
    tiny=tiny,
    shapes=shapes,
    config=CONFIG,
    keys=KEYS,
    convert=convert,
    invert=invert,
    reference=lazy_function("converters.gemma.reference", "forward"),  # torch loads when it runs
    cases=CASES,
    sizes=SIZES,
    # What `convert`/`verify` fetch for a Hub id as SOURCE: config.json, one .ckpt, or an index + shards (source.read).
    hub_files=("config.json", "*.ckpt", "pytorch_model*.bin", "*.index.json"),
    options=OPTIONS,
    mutants=tuple(mutants.MUTANTS),
    mutation_cases=mutants.CASES,
    points=tuple(points.POINTS),
    facts=facts.facts,
)
