"""RWKV-4 (BlinkDL .pth state dict, sizes from shapes) -> transformers RwkvForCausalLM."""

from converters.rwkv import mutants, points
from converters.rwkv.convert import CONFIG, KEYS, convert, invert
from converters.rwkv.loading import loading
from converters.rwkv.source import CASES, OPTIONS, SIZES, read, shapes, tiny, write
from harness.lazy import lazy_function
from harness.mapping.family import Family

__all__ = ["FAMILY"]

FAMILY = Family(
    name="rwkv",
    about=__doc__.strip(),
    read=read,
    write=write,
    tiny=tiny,
    shapes=shapes,
    config=CONFIG,
    keys=KEYS,
    convert=convert,
    invert=invert,
    reference=lazy_function("converters.rwkv.reference", "forward"),  # torch loads when it runs
    cases=CASES,
    sizes=SIZES,
    # What `convert`/`verify` fetch for a Hub id as SOURCE: one BlinkDL .pth; sizes come from shapes.
    hub_files=("*.pth",),
    options=OPTIONS,
    loading=loading,
    mutants=tuple(mutants.MUTANTS),
    mutation_cases=mutants.CASES,
    points=tuple(points.POINTS),
)
