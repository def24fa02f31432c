"""Phi (Microsoft's original phi-msft / mixformer-sequential checkpoints) -> transformers PhiForCausalLM."""

from converters.phi import mutants, points
from converters.phi.convert import CONFIG, KEYS, convert, invert
from converters.phi.source import CASES, SIZES, read, shapes, tiny, write
from harness.lazy import lazy_function
from harness.mapping.family import Family

__all__ = ["FAMILY"]

FAMILY = Family(
    name="phi",
    about=__doc__.strip(),
    read=read,
    write=write,
    tiny=tiny,
    shapes=shapes,
    config=CONFIG,
    keys=KEYS,
    convert=convert,
    invert=invert,
    reference=lazy_function("converters.phi.reference", "forward"),  # torch loads when it runs
    cases=CASES,
    sizes=SIZES,
    # What `convert`/`verify` fetch for a Hub id as SOURCE: config.json +
    # pytorch_model.bin / model.safetensors / shards + index (source.read).
    hub_files=("config.json", "*.bin", "*.safetensors", "*.index.json"),
    mutants=tuple(mutants.MUTANTS),
    mutation_cases=mutants.CASES,
    points=tuple(points.POINTS),
)
