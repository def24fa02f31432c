"""One case through a converter convparity did not write (``--converter``), ready for the same parity as its own.

The case's tiny source is written in its upstream layout, as ``check`` writes it; the converter turns it into a
directory; the reference then reads the source exactly as that directory stores it. A converter that writes
another dtype than the source (the official Llama script always writes bfloat16) is judged as ``verify`` judges a
cast: the reference reads the source rounded as a correct conversion to the stored dtypes rounds it
(``harness.parity.rounding``), so rounding alone never fails a case and any other difference still does.
"""

from __future__ import annotations

from pathlib import Path

from harness.family.cases import Case
from harness.family.family import Family
from harness.mapping.conversion import SourceCheckpoint
from harness.parity.check import RoundTrip, hash_files, write_case
from harness.parity.checkpoint_files import stored_dtypes
from harness.parity.external import ExternalConverter, Refusal
from harness.parity.rounding import plan_rounding

__all__ = ["GENERIC_FACTS", "case_facts", "external_round_trip"]

GENERIC_FACTS = ("source", "output", "family", "case", "vocab_size", "dtype")


def case_facts(family: Family, case: str, source: SourceCheckpoint, vocab_size: int) -> dict[str, str]:
    """The values every template may use besides ``{source}`` and ``{output}``, then the family's own facts.

    ``dtype`` is the source's floating dtype (the first floating tensor's), ``vocab_size`` the rows of its
    embedding as convparity's own conversion reads them.
    """
    floating = (str(dtype).removeprefix("torch.") for k in source.tensors
                if (dtype := source.tensors.meta(k)[1]).is_floating_point)
    facts = {"family": family.name, "case": case, "vocab_size": str(vocab_size), "dtype": next(floating, "float32")}
    return facts | (dict(family.facts(source)) if family.facts is not None else {})


def external_round_trip(converter: ExternalConverter, family: Family, case_name: str, case: Case, workdir: Path,
                        seed: int = 0) -> RoundTrip:
    """Write the case's source, run ``converter`` on it into ``workdir/<case>/hf``; the round trip's ``source``
    is what the reference must read (rounded to the stored dtypes), its ``refusal`` set where nothing loadable came
    out."""
    source_dir, model_dir = workdir / case_name / "source", workdir / case_name / "hf"
    source = write_case(family, case, source_dir, seed)
    converted = family.convert(source)
    vocab = int(converted.config["vocab_size"])
    rt = RoundTrip(case_name, source, model_dir, vocab, hash_files(source_dir))
    values = {"source": str(source_dir), "output": str(model_dir), **case_facts(family, case_name, source, vocab)}
    rt.refusal = converter.run(values, workdir / case_name / "converter")
    if rt.refusal is None and not model_dir.is_dir():
        rt.refusal = Refusal("UNLOADABLE", f"the converter exited 0 but wrote nothing at {{output}} ({model_dir})")
    if rt.refusal is not None:
        return rt
    try:
        rounding = plan_rounding(converted, stored_dtypes(model_dir))
    except Exception:  # noqa: BLE001 - no weights, bad headers, a tensor in two dtypes: loading names the problem
        return rt
    if rounding:
        rt.source = rounding.apply(source)
        rt.note = f"rounds {rounding.describe()}: judged as a cast (the reference reads the source rounded so)"
    return rt
