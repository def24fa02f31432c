"""The ``convparity`` command line: convert, check, list, describe."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harness.errors import ConversionError
from harness.metrics import DTYPES
from harness.parity import ParityResult, devices
from harness.registry import families, family
from harness.runner import DEFAULT_SHARD_SIZE
from harness.signals import Terminated, signals_as_exceptions
from harness.writer import parse_size

__all__ = ["main"]

_EPILOG = """examples:
  convparity list                                   the families and their test cases
  convparity check                                  prove every converter (tiny models, all devices/dtypes)
  convparity check mixtral --dtypes float32         one family, one dtype
  convparity convert mixtral ./Mixtral-8x7B ./out   convert a real checkpoint
  convparity check --report parity.md --json parity.json   a parity report for review
  convparity gate --base origin/main --junit junit.xml     CI: only the families a change touches
  convparity mutate mixtral                         plant known converter bugs; all must be caught
  convparity describe mixtral                       the key and config tables of a converter
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``convparity`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with signals_as_exceptions():
            return int(args.run(args) or 0)
    except ConversionError as err:
        print(f"convparity: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convparity: interrupted; nothing was written", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated as stop:
        print(f"convparity: stopped by {stop}; nothing was written", file=sys.stderr)
        return 128 + stop.signum


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convparity", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Convert upstream LM checkpoints to transformers, and prove by forward-pass parity that "
                    "the converted model computes what the original computed.")
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    convert = sub.add_parser("convert", help="convert an upstream checkpoint to a transformers directory",
                             description="Convert a checkpoint in its upstream layout into a directory that "
                                         "AutoModelForCausalLM.from_pretrained loads. Nothing is written on "
                                         "error; OUTPUT must not exist.")
    per_family = convert.add_subparsers(title="families", required=True, metavar="FAMILY")
    for name, fam in families().items():
        p = per_family.add_parser(name, help=fam.about, description=fam.about)
        p.add_argument("source", type=Path, metavar="SOURCE",
                       help="the checkpoint as upstream ships it: a weights file, or the directory holding it")
        p.add_argument("output", type=Path, metavar="OUTPUT", help="directory to create (must not exist)")
        p.add_argument("--config", type=Path, metavar="FILE", help="upstream config file to use instead of the "
                                                                   "one beside the weights")
        p.add_argument("--dtype", choices=list(DTYPES), help="cast floating tensors (default: as stored)")
        p.add_argument("--max-shard-size", default=str(DEFAULT_SHARD_SIZE), metavar="SIZE",
                       help="largest shard file, e.g. 5GB (default), 500MB, 2GiB")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        for flag, spec in getattr(fam, "OPTIONS", {}).items():
            p.add_argument(flag, **spec)
        p.set_defaults(run=_convert, family=name)

    check = sub.add_parser("check", help="round-trip every family's tiny models and check parity",
                           description="For each family and case: write a tiny random source in its upstream "
                                       "layout, convert it, load it with from_pretrained and compare logits with "
                                       "the family's reference implementation. Exit 1 on any failure.")
    check.add_argument("families", nargs="*", metavar="FAMILY", help="families to check (default: all)")
    _add_matrix_options(check)
    check.add_argument("--json", type=Path, metavar="FILE", help="write every result, with environment, as JSON")
    check.add_argument("--report", type=Path, metavar="FILE.md", help="write a Markdown parity report: environment, "
                                                                      "command, every case against its tolerance")
    check.set_defaults(run=_check)

    gate = sub.add_parser("gate", help="check only the families changed since a git ref (for CI)",
                          description="Map the files changed since --base to the families they affect "
                                      "(converters/<f>/ -> f; harness/, pyproject.toml, constraints.txt, tox.ini "
                                      "-> all), run the parity matrix and golden snapshot checks for those, write "
                                      "JUnit XML and a Markdown summary, exit 1 on any failure.")
    gate.add_argument("--base", required=True, metavar="REF", help="git ref to compare with, e.g. origin/main")
    gate.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML (one test case per cell)")
    gate.add_argument("--markdown", type=Path, metavar="FILE", help="write a summary fit for a PR comment")
    _add_matrix_options(gate)
    gate.set_defaults(run=_gate)

    mutate = sub.add_parser("mutate", help="plant known converter bugs and check that parity catches each one",
                            description="Apply each planted bug of the mutation catalogue to a family's conversion "
                                        "(intercepting its tensor stream or config), run the same parity check "
                                        "as `convparity check`, and report whether each mutant was caught "
                                        "(killed). Exit 1 if any applicable mutant survives.")
    mutate.add_argument("families", nargs="*", metavar="FAMILY", help="families to mutate (default: all)")
    mutate.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (default: %(default)s)")
    mutate.add_argument("--json", type=Path, metavar="FILE", help="write one record per mutant as JSON")
    mutate.set_defaults(run=_mutate)

    sub.add_parser("list", help="list families and their test cases").set_defaults(run=_list)
    describe = sub.add_parser("describe", help="print a family's config and key tables")
    describe.add_argument("family", metavar="FAMILY")
    describe.set_defaults(run=_describe)
    return parser


def _add_matrix_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", default=",".join(devices()),
                        help="comma-separated (default: %(default)s; cuda is skipped, with the reason, where absent)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated (default: %(default)s)")


def _convert(args: argparse.Namespace) -> int:
    from harness.runner import convert_checkpoint

    fam = family(args.family)
    dests = [flag.lstrip("-").replace("-", "_") for flag in getattr(fam, "OPTIONS", {})]
    options = {dest: getattr(args, dest) for dest in dests}
    start = time.perf_counter()
    converted, plan = convert_checkpoint(fam, args.source, args.output, config=args.config, dtype=args.dtype,
                                         max_shard_size=parse_size(args.max_shard_size), progress=not args.quiet,
                                         **options)
    for note in converted.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.output}: {len(plan.tensor_to_filename)} tensors, {plan.total_size / 1e6:.1f} MB in "
          f"{len(plan.filename_to_tensors)} file(s), {time.perf_counter() - start:.1f}s")
    return 0


def _check(args: argparse.Namespace) -> int:
    from harness.check import check_family
    from harness.report import write_json, write_markdown

    chosen = [family(n) for n in args.families] if args.families else list(families().values())
    dtypes = _choices(args.dtypes, DTYPES, "dtype")
    devs = _choices(args.devices, devices(), "device")
    start = time.perf_counter()
    print(_ROW.format("family", "case", "device", "dtype", "max_abs", "cosine", "top1", "kl", "status"))
    results: list[ParityResult] = []
    for fam in chosen:
        results += check_family(fam, devs, dtypes, on_result=lambda r: print(_row(r), flush=True))
    failed = [r for r in results if r.status == "FAIL"]
    ran = [r for r in results if not r.skipped]
    print(f"\n{len(ran) - len(failed)} passed, {len(failed)} failed, {len(results) - len(ran)} skipped "
          f"in {time.perf_counter() - start:.1f}s")
    for reason in sorted({r.skipped for r in results if r.skipped}):
        print(f"skipped: {reason}")
    for r in failed:
        where = f"; first divergent hidden state {r.first_divergent_layer}" if r.first_divergent_layer else ""
        print(f"FAIL {r.family}-{r.case}-{r.device}-{r.dtype}: {'; '.join(r.violations)}{where}")
    if args.json:
        write_json(results, args.json)
    if args.report:
        write_markdown(results, args.report)
    return 1 if failed else 0


def _gate(args: argparse.Namespace) -> int:
    from harness.gate import run_gate

    return run_gate(args.base, families(), _choices(args.devices, devices(), "device"),
                    _choices(args.dtypes, DTYPES, "dtype"), junit=args.junit, markdown=args.markdown)


def _mutate(args: argparse.Namespace) -> int:
    from harness.mutate import run_mutate

    chosen = [family(n) for n in args.families] if args.families else list(families().values())
    return run_mutate(chosen, _choices(args.dtypes, DTYPES, "dtype"), json_path=args.json)


def _list(args: argparse.Namespace) -> int:
    for name, fam in families().items():
        print(f"{name}: {fam.about}")
        for case, spec in fam.CASES.items():
            print(f"  {case:<16} {spec.about}")
    return 0


def _describe(args: argparse.Namespace) -> int:
    fam = family(args.family)
    convert = sys.modules[f"converters.{fam.name}.convert"]
    print(f"{fam.name}: {fam.about}\n\nconfig ({convert.CONFIG.name} -> config.json):")
    for f in convert.CONFIG.fields:
        print(f"  {f.source:<28} -> {f.target}")
    for k, v in convert.CONFIG.fixed.items():
        print(f"  {'(fixed)':<28} -> {k} = {v!r}")
    for k, why in convert.CONFIG.ignored.items():
        print(f"  {k:<28}    ignored: {why}")
    tables = convert.KEYS if isinstance(convert.KEYS, dict) else {"keys": convert.KEYS}
    for layout, keymap in tables.items():
        print(f"\nkeys ({layout}):")
        for rule in keymap.rules + keymap.drops + keymap.ties:
            print(f"  {rule!r}")
    return 0


_ROW = "{:<9} {:<16} {:<6} {:<9} {:>9} {:>11} {:>6} {:>9}  {}"


def _row(r: ParityResult) -> str:
    if r.metrics is None:
        return _ROW.format(r.family, r.case, r.device, r.dtype, "-", "-", "-", "-", r.status)
    m = r.metrics
    return _ROW.format(r.family, r.case, r.device, r.dtype, f"{m.max_abs:.2e}", f"{m.cosine:.8f}",
                       f"{m.top1:.3f}", f"{m.kl:.1e}", r.status)


def _choices(text: str, allowed: Sequence[str], what: str) -> list[str]:
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in chosen if c not in allowed]
    if bad or not chosen:
        raise ConversionError(f"unknown {what} {bad or text!r}; choose from {', '.join(allowed)}")
    return chosen


if __name__ == "__main__":
    sys.exit(main())
