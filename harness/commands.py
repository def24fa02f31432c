"""What each ``convparity`` command does, once ``harness.cli`` has parsed its arguments."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from harness.errors import ConversionError
from harness.io.raw_dtypes import CAST_DTYPES
from harness.io.writer import parse_size
from harness.registry import Family, families, family
from harness.terminal import colour, paint_status

if TYPE_CHECKING:  # the parity layer (torch, transformers) loads only for the commands that run it
    from harness.parity.check import RoundTrip
    from harness.parity.external import ExternalConverter
    from harness.parity.parity import ParityResult

__all__ = ["check", "convert", "describe", "gate", "list_families", "mutate", "verify"]


def convert(args: argparse.Namespace) -> int:
    from harness.pipeline import convert_checkpoint

    fam = family(args.family)
    options = {name: getattr(args, name) for name in fam.option_names()}
    start = time.perf_counter()
    _resolve_source(args, fam)
    converted, plan = convert_checkpoint(fam, args.source, args.output, config=args.config, dtype=args.dtype,
                                         max_shard_size=parse_size(args.max_shard_size), progress=not args.quiet,
                                         allow_nonfinite=args.allow_nonfinite, **options)
    for note in converted.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.output}: {len(plan.tensor_to_filename)} tensors, {plan.total_size / 1e6:.1f} MB in "
          f"{len(plan.filename_to_tensors)} file(s), {time.perf_counter() - start:.1f}s")
    return verify(args) if args.verify else 0


def verify(args: argparse.Namespace) -> int:
    from harness.parity.card import Card, file_hashes
    from harness.parity.html_report import verify_page, write_html
    from harness.parity.verify import EXIT, format_result, read_input_ids, tokenize, verify, write_json, write_report

    fam = family(args.family)
    converted = getattr(args, "converted", None) or args.output
    options = {name: getattr(args, name) for name in fam.option_names()}
    tokens = lengths = None
    inputs = ""
    if args.input_ids:
        (tokens, lengths), inputs = read_input_ids(args.input_ids), f"token ids from {args.input_ids}"
    elif args.text:
        (tokens, lengths), inputs = tokenize(converted, args.text), f"token ids of {len(args.text)} text(s)"
    if args.batch < 1 or (args.seq_len is not None and args.seq_len < 1):
        raise ConversionError(f"--batch and --seq-len must be positive; found {args.batch} and {args.seq_len}")
    _resolve_source(args, fam)
    card = Card.open(args.source, converted) if getattr(args, "card", False) or getattr(args, "verify", False) else None
    if card is not None and card.changed():
        print("\n".join(f"FAIL: card: {line}" for line in card.changed()))
        return 1
    quiet = getattr(args, "quiet", False)
    result = verify(fam, args.source, converted, tokens=tokens, lengths=lengths, inputs=inputs, device=args.device,
                    compute_dtype=args.compute_dtype, config=args.config, batch=args.batch, seq_len=args.seq_len,
                    seed=args.seed, power=_power_hook() if args.power else None,
                    reference_device=args.reference_device, prefetch=args.prefetch,
                    progress=None if quiet else lambda m: print(f"verify: {m}", file=sys.stderr),
                    **options)
    print(format_result(result))
    if args.json:
        write_json(result, args.json)
    if args.report:
        write_report(result, args.report)
    if args.html:
        write_html(verify_page(result.as_dict(), file_hashes(args.source)), args.html)
    reproduced, lines = card.settle(result, args.hub_id) if card is not None else (True, [])
    for line in lines:
        print(line)
    return EXIT[result.verdict] if reproduced else 1


def _power_hook() -> Any:
    from harness.mutation.power import measure_power

    return measure_power


def _resolve_source(args: argparse.Namespace, fam: Family) -> None:
    """SOURCE as given, or a Hub id (``--revision``) resolved to a local snapshot of the family's files, once."""
    from harness.io.hub import is_repo_id, resolve_source

    if not hasattr(args, "hub_id"):
        args.hub_id = str(args.source) if not args.source.exists() and is_repo_id(str(args.source)) else None
        args.source = resolve_source(args.source, fam.hub_files, args.revision)


def check(args: argparse.Namespace) -> int:
    from harness.mutation.on_failure import Diagnoser
    from harness.parity.check import check_family
    from harness.parity.html_report import check_page, write_html
    from harness.parity.report import write_json, write_markdown

    chosen = [family(n) for n in args.families] if args.families else list(families().values())
    dtypes = _choices(args.dtypes, CAST_DTYPES, "dtype")
    devs = _devices(args.devices)
    converter = _converter(args)
    start = time.perf_counter()
    print(_ROW.format("family", "case", "device", "dtype", "max_abs", "cosine", "top1", "kl", "status"))
    results: list[ParityResult] = []
    notes: list[str] = []  # an outside converter's casts, judged as casts
    for fam in chosen:
        def note(rt: RoundTrip, name: str = fam.name) -> None:
            if rt.note:
                notes.append(f"{name}/{rt.case}: {rt.note}")

        d = Diagnoser(fam, on_round_trip=note, on_result=lambda r: print(_row(r), flush=True))
        results += check_family(fam, devs, dtypes, on_round_trip=d.round_trip, on_result=d.result,
                                converter=converter)
    failed = [r for r in results if r.status == "FAIL"]
    ran = [r for r in results if not r.skipped]
    print(f"\n{len(ran) - len(failed)} passed, {len(failed)} failed, {len(results) - len(ran)} skipped "
          f"in {time.perf_counter() - start:.1f}s")
    for reason in sorted({r.skipped for r in results if r.skipped}):
        print(f"skipped: {reason}")
    for r in failed:
        where = f"; first divergent hidden state {r.first_divergent_layer}" if r.first_divergent_layer else ""
        print(f"FAIL {r.family}-{r.case}-{r.device}-{r.dtype}: {'; '.join(r.violations)}{where}")
        if r.diagnosis:
            print(f"  diagnosis: {r.diagnosis}")
    lines = _converter_lines(converter, results, notes)
    for line in lines:
        print(line)
    extra = None
    if converter is not None:
        from harness.parity.outcomes import case_outcomes

        extra = {"converter": converter.spec, "cases": [vars(o) for o in case_outcomes(results)], "notes": notes}
    if args.json:
        write_json(results, args.json, extra)
    if args.report:
        write_markdown(results, args.report, extra_lines=[f"- {line.strip()}" for line in lines])
    if args.html:
        write_html(check_page(results, notes=[line.strip() for line in lines if line.strip()]), args.html)
    return 1 if failed else 0


def _converter(args: argparse.Namespace) -> ExternalConverter | None:
    from harness.parity.external import ExternalConverter

    return ExternalConverter(args.converter, args.converter_timeout) if args.converter else None


def _converter_lines(converter: ExternalConverter | None, results: list[ParityResult], notes: list[str]) -> list[str]:
    """With --converter: the converter, each case's outcome (the README's table), and each cast judged as one."""
    if converter is None:
        return []
    from harness.parity.outcomes import case_outcomes, format_outcomes

    return ([f"\nconverter: {converter.spec}", "outcome per case:"]
            + [f"  {line}" for line in format_outcomes(case_outcomes(results))]
            + [f"note: {note}" for note in notes])


def gate(args: argparse.Namespace) -> int:
    from harness.gate import run_gate

    known = families()
    chosen = _choices(args.families, list(known), "family") if args.families else None
    return run_gate(args.base, known, _devices(args.devices),
                    _choices(args.dtypes, CAST_DTYPES, "dtype"), junit=args.junit, markdown=args.markdown,
                    json_path=args.json, html=args.html, quiet=args.quiet, only=chosen, converter=_converter(args))


def mutate(args: argparse.Namespace) -> int:
    from harness.mutation.accuracy import run_diagnose
    from harness.mutation.runner import run_mutate

    chosen = [family(n) for n in args.families] if args.families else list(families().values())
    if args.diagnose:
        return run_diagnose(chosen, json_path=args.json, quiet=args.quiet, structural_only=args.structural)
    return run_mutate(chosen, _choices(args.dtypes, CAST_DTYPES, "dtype"), json_path=args.json, html=args.html,
                      quiet=args.quiet, structural_only=args.structural)


def list_families(args: argparse.Namespace) -> int:
    for name, fam in families().items():
        print(f"{name}: {fam.about}")
        for case, spec in fam.cases.items():
            print(f"  {case:<16} {spec.about}")
    return 0


def describe(args: argparse.Namespace) -> int:
    fam = family(args.family)
    print(f"{fam.name}: {fam.about}\n\nconfig ({fam.config.name} -> config.json):")
    for f in fam.config.fields:
        print(f"  {f.source:<28} -> {f.target}" + (f"    (inverse lossy: {f.lossy})" if f.lossy else ""))
    for k, v in fam.config.fixed.items():
        print(f"  {'(fixed)':<28} -> {k} = {v!r}")
    for k, why in fam.config.ignored.items():
        print(f"  {k:<28}    ignored: {why}")
    for layout, keymap in fam.keys.items():
        which = "" if len(fam.keys) == 1 else f" ({layout}{', the default' if layout == fam.keys.default else ''})"
        print(f"\nkeys{which}:")
        for rule in keymap.rules + keymap.drops + keymap.ties:
            print(f"  {rule!r}")
    return 0


_ROW = "{:<9} {:<16} {:<6} {:<9} {:>9} {:>11} {:>6} {:>9}  {}"


def _row(r: ParityResult) -> str:
    if r.metrics is None:  # skipped, or no parity ran (REFUSED, UNLOADABLE, TIMEOUT)
        return _ROW.format(r.family, r.case, r.device, r.dtype, "-", "-", "-", "-",
                           paint_status(r.not_run or r.status, r.status, colour()))
    m = r.metrics
    return _ROW.format(r.family, r.case, r.device, r.dtype, f"{m.max_abs:.2e}", f"{m.cosine:.8f}",
                       f"{m.top1:.3f}", f"{m.kl:.1e}", paint_status(r.status, r.status, colour()))


def _devices(text: str | None) -> list[str]:
    from harness.parity.parity import devices

    return _choices(text or ",".join(devices()), devices(), "device")


def _choices(text: str, allowed: Sequence[str], what: str) -> list[str]:
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in chosen if c not in allowed]
    if bad or not chosen:
        raise ConversionError(f"unknown {what} {bad or text!r}; choose from {', '.join(allowed)}")
    return chosen
