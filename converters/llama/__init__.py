"""Llama (Meta's params.json + consolidated.NN.pth rank files, Llama 1/2/3/3.1) -> transformers LlamaForCausalLM."""

from converters.llama import facts, mutants, points
from converters.llama.convert import CONFIG, KEYS, convert, invert
from converters.llama.source import CASES, OPTIONS, SIZES, read, shapes, tiny, write
from harness.lazy import lazy_function
from harness.mapping.family import Family

__all__ = ["FAMILY"]

FAMILY = Family(
    name="llama",
    about=__doc__.strip(),
    read=read,
    write=write,
    tiny=tiny,
    shapes=shapes,
    config=CONFIG,
    keys=KEYS,
    convert=convert,
    invert=invert,
    reference=lazy_function("converters.llama.reference", "forward"),  # torch loads when it runs
    cases=CASES,
    sizes=SIZES,
    # What `convert`/`verify` fetch for a Hub id as SOURCE: Meta's files; the Hub keeps them under original/.
    hub_files=("params.json", "consolidated.*.pth", "tokenizer.model", "original/params.json",
               "original/consolidated.*.pth", "original/tokenizer.model"),
    options=OPTIONS,
    mutants=tuple(mutants.MUTANTS),
    mutation_cases=mutants.CASES,
    points=tuple(points.POINTS),
    facts=facts.facts,
)
