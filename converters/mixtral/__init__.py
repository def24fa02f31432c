"""Mixtral (Mistral AI params.json + consolidated.*) -> transformers MixtralForCausalLM."""

from converters.mixtral import mutants, points
from converters.mixtral.convert import CONFIG, KEYS, convert, invert
from converters.mixtral.source import CASES, SIZES, read, shapes, tiny, write
from harness.lazy import lazy_function
from harness.mapping.family import Family

__all__ = ["FAMILY"]

FAMILY = Family(
    name="mixtral",
    about=__doc__.strip(),
    read=read,
    write=write,
    tiny=tiny,
    shapes=shapes,
    config=CONFIG,
    keys=KEYS,
    convert=convert,
    invert=invert,
    reference=lazy_function("converters.mixtral.reference", "forward"),  # torch loads when it runs
    cases=CASES,
    sizes=SIZES,
    # What `convert`/`verify` fetch for a Hub id as SOURCE: params.json +
    # consolidated.safetensors / .00.pth / .NN.pt (source.read).
    hub_files=("params.json", "consolidated.*"),
    mutants=tuple(mutants.MUTANTS),
    mutation_cases=mutants.CASES,
    points=tuple(points.POINTS),
)
