"""The ``convparity`` command line: the parser and the entry point; ``harness.commands`` does the work.

Building the parser imports no family and no torch: families are listed by folder name with their docstrings'
first lines, and only the family a ``convert``/``verify`` command names is imported, for its own options.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from harness import commands
from harness.errors import ConversionError, brief
from harness.io.raw_dtypes import CAST_DTYPES
from harness.mapping.output import DEFAULT_SHARD_SIZE
from harness.parity.external import DEFAULT_TIMEOUT
from harness.registry import family, family_about, family_names
from harness.signals import Terminated, signals_as_exceptions

__all__ = ["main"]

_EPILOG = """examples:
  convparity list                                   the families and their test cases
  convparity check                                  prove every converter (tiny models, all devices/dtypes)
  convparity check mixtral --dtypes float32         one family, one dtype
  convparity convert mixtral ./Mixtral-8x7B ./out   convert a real checkpoint
  convparity verify mixtral ./Mixtral-8x7B ./out    prove that conversion on its real weights, block by block
  convparity check --report parity.md --json parity.json   a parity report for review
  convparity gate --base origin/main --junit junit.xml     CI: only the families a change touches
  convparity mutate mixtral                         plant known converter bugs; all must be caught
  convparity describe mixtral                       the key and config tables of a converter
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``convparity`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(_chosen_family(argv))
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("CONVPARITY_DEBUG", "") not in ("", "0")
    try:
        with signals_as_exceptions():
            return int(args.run(args) or 0)
    except ConversionError as err:
        if debug:
            traceback.print_exc()
        print(f"convparity: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convparity: interrupted; nothing was written", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated as stop:
        print(f"convparity: stopped by {stop}; nothing was written", file=sys.stderr)
        return 128 + stop.signum
    except BrokenPipeError:  # `convparity describe llama | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 128 + signal.SIGPIPE
    except Exception as err:  # not a problem found in the input: a bug here or in a library, or the machine
        if debug:
            raise
        print(f"convparity: internal error: {_one_line(brief(err))}; rerun with --debug (or CONVPARITY_DEBUG=1) "
              f"to see the traceback, and please report it", file=sys.stderr)
        return INTERNAL_ERROR


INTERNAL_ERROR = 70  # EX_SOFTWARE (sysexits.h); 2 is bad input, 1 a failed check


def _one_line(message: object) -> str:
    return " | ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _chosen_family(argv: Sequence[str]) -> str | None:
    """FAMILY of ``convert FAMILY ...`` or ``verify FAMILY ...``: the one family whose options the parser needs.

    >>> _chosen_family(["--debug", "convert", "mixtral", "src", "out"]), _chosen_family(["convert", "--help"])
    ('mixtral', None)
    """
    words = [a for a in argv if not a.startswith("-")]
    return words[1] if len(words) > 1 and words[0] in ("convert", "verify") and words[1] in family_names() else None


def _family_options(name: str, chosen: str | None) -> dict[str, dict]:
    return dict(family(name).options) if name == chosen else {}


def _parser(chosen: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convparity", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Convert upstream LM checkpoints to transformers, and prove by forward-pass parity that "
                    "the converted model computes what the original computed.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error (also: environment "
                                                             "variable CONVPARITY_DEBUG=1)")
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    convert = sub.add_parser("convert", help="convert an upstream checkpoint to a transformers directory",
                             description="Convert a checkpoint in its upstream layout into a directory that "
                                         "AutoModelForCausalLM.from_pretrained loads. Nothing is written on "
                                         "error; OUTPUT must not exist.")
    per_family = convert.add_subparsers(title="families", required=True, metavar="FAMILY")
    for name in family_names():
        about = family_about(name)
        p = per_family.add_parser(name, help=about, description=about)
        p.add_argument("source", type=Path, metavar="SOURCE",
                       help="the checkpoint as upstream ships it: a weights file, or the directory holding it")
        p.add_argument("output", type=Path, metavar="OUTPUT", help="directory to create (must not exist)")
        p.add_argument("--config", type=Path, metavar="FILE", help="upstream config file to use instead of the "
                                                                   "one beside the weights")
        p.add_argument("--dtype", choices=list(CAST_DTYPES), help="cast floating tensors (default: as stored)")
        p.add_argument("--max-shard-size", default=str(DEFAULT_SHARD_SIZE), metavar="SIZE",
                       help="largest shard file, e.g. 5GB (default), 500MB, 2GiB")
        p.add_argument("--revision", metavar="REV", help="with a Hub repository id (owner/name) as SOURCE: the branch, "
                                                         "tag or commit to fetch (default: main)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--allow-nonfinite", action="store_true",
                       help="write NaN/Inf weights as they are, with a warning (default: refuse, naming them)")
        for flag, spec in _family_options(name, chosen).items():
            p.add_argument(flag, **spec)
        p.add_argument("--verify", action="store_true", help="then verify OUTPUT against SOURCE, as `convparity "
                                                                 "verify` does (options below); exit 1 if it fails")
        _add_verify_options(p, "verify options (with --verify)")
        p.set_defaults(run=commands.convert, family=name)

    check = sub.add_parser("check", help="round-trip every family's tiny models and check parity",
                           description="For each family and case: write a tiny random source in its upstream "
                                       "layout, convert it, load it with from_pretrained and compare logits with "
                                       "the family's reference implementation. Exit 1 on any failure.")
    check.add_argument("families", nargs="*", metavar="FAMILY", help="families to check (default: all)")
    _add_matrix_options(check)
    check.add_argument("--json", type=Path, metavar="FILE", help="write every result, with environment, as JSON")
    check.add_argument("--report", type=Path, metavar="FILE.md", help="write a Markdown parity report: environment, "
                                                                      "command, every case against its tolerance")
    check.add_argument("--html", type=Path, metavar="FILE.html", help="write a self-contained HTML report")
    _add_converter_options(check)
    check.set_defaults(run=commands.check)

    gate = sub.add_parser("gate", help="check only the families changed since a git ref (for CI)",
                          description="Map the files changed since --base to the families they affect "
                                      "(converters/<f>/ -> f; harness/, pyproject.toml, constraints.txt, tox.ini "
                                      "-> all), run the parity matrix and golden snapshot checks for those, write "
                                      "JUnit XML and a Markdown summary, exit 1 on any failure.")
    gate.add_argument("--base", required=True, metavar="REF", help="git ref to compare with, e.g. origin/main")
    gate.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML (one test case per cell)")
    gate.add_argument("--markdown", type=Path, metavar="FILE", help="write a summary fit for a PR comment")
    gate.add_argument("--json", type=Path, metavar="FILE", help="write every result, with environment, as JSON")
    gate.add_argument("--html", type=Path, metavar="FILE.html", help="write a self-contained HTML report")
    gate.add_argument("--quiet", action="store_true", help="no progress bar")
    gate.add_argument("--families", metavar="NAMES", help="comma-separated families to check instead of those the "
                                                          "change touches (with --converter: those it converts)")
    _add_matrix_options(gate)
    _add_converter_options(gate)
    gate.set_defaults(run=commands.gate)

    mutate = sub.add_parser("mutate", help="plant known converter bugs and check that parity catches each one",
                            description="Apply each planted bug of the mutation catalogue to a family's conversion "
                                        "(intercepting its tensor stream or config), run the same parity check "
                                        "as `convparity check`, and report whether each mutant was caught "
                                        "(killed). Exit 1 if any applicable mutant survives.")
    mutate.add_argument("families", nargs="*", metavar="FAMILY", help="families to mutate (default: all)")
    mutate.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (default: %(default)s)")
    mutate.add_argument("--json", type=Path, metavar="FILE", help="write one record per mutant as JSON")
    mutate.add_argument("--html", type=Path, metavar="FILE.html", help="write a self-contained HTML report")
    mutate.add_argument("--quiet", action="store_true", help="no progress bar")
    mutate.add_argument("--structural", action="store_true",
                        help="the catalogue derived from the key table and the named points (each data rule skipped "
                             "or inverted, same-shape targets swapped, config fields perturbed, one tensor per point "
                             "scaled by 1.01) instead of the name-based one; kills reported per point")
    mutate.add_argument("--diagnose", action="store_true",
                        help="measure diagnosis instead: each mutant in turn is the unknown bug on each case; count "
                             "how often the named sub-module is one it touched and its class is ranked first / in "
                             "the top three (exit 1 below 100%% / 90%% / 100%%); with --structural, over the "
                             "structural catalogue, with its bfloat16 kills and a table per point")
    mutate.set_defaults(run=commands.mutate)

    verify = sub.add_parser("verify", help="prove a real conversion: its logits against the original forward pass",
                            description=_VERIFY_ABOUT, epilog=_VERIFY_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    per_family_verify = verify.add_subparsers(title="families", required=True, metavar="FAMILY")
    for name in family_names():
        about = family_about(name)
        p = per_family_verify.add_parser(name, help=about, description=f"{about}\n\n{_VERIFY_ABOUT}",
                                         epilog=_VERIFY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("source", type=Path, metavar="SOURCE", help="the original checkpoint, as `convert` takes it")
        p.add_argument("converted", type=Path, metavar="CONVERTED",
                       help="a directory that from_pretrained loads (made by convparity or anything else)")
        p.add_argument("--revision", metavar="REV", help="with a Hub repository id (owner/name) as SOURCE: the branch, "
                                                         "tag or commit to fetch (default: main)")
        p.add_argument("--quiet", action="store_true", help="no progress messages or bar")
        p.add_argument("--card", action="store_true", help="write a verification card (README.md, convparity.json) "
                       "into CONVERTED; where one exists, check its hashes and reproduce its verdict instead")
        p.add_argument("--config", type=Path, metavar="FILE", help="upstream config file to use instead of the "
                                                                   "one beside the weights (as for convert)")
        for flag, spec in _family_options(name, chosen).items():
            p.add_argument(flag, **spec)
        _add_verify_options(p)
        p.set_defaults(run=commands.verify, family=name)

    sub.add_parser("list", help="list families and their test cases").set_defaults(run=commands.list_families)
    describe = sub.add_parser("describe", help="print a family's config and key tables")
    describe.add_argument("family", metavar="FAMILY")
    describe.set_defaults(run=commands.describe)
    return parser


def _add_matrix_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", help="comma-separated (default: cpu, and cuda where present; cuda is skipped, "
                                          "with the reason, where absent)")
    parser.add_argument("--dtypes", default=",".join(CAST_DTYPES), help="comma-separated (default: %(default)s)")


def _add_converter_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("a converter convparity did not write")
    group.add_argument("--converter", metavar="SPEC", help="convert each case with SPEC instead of convparity's own "
                       "converter: a command template, run without a shell (e.g. 'python convert.py --input_dir "
                       "{source} --output_dir {output} --num_shards {num_shards}'; placeholders: source, output, "
                       "family, case, vocab_size, dtype and the family's facts), or module:function, called with the "
                       "same as keyword arguments. Outcomes per case: PASS, FAIL, REFUSED, UNLOADABLE, TIMEOUT")
    group.add_argument("--converter-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help="stop the converter (its whole process group) after this long on one case "
                            "(default: %(default)g)")


_VERIFY_ABOUT = """\
Run the family's original forward pass over SOURCE and the converted model over CONVERTED on the same
tokens; compare the logits and every block's output. Both sides stream: the reference reads each source
tensor when it needs it, the converted model is built empty and loaded one block at a time through
transformers' own loading, so memory stays near one block (two on a GPU, where the next block is read from
disk while one runs) and nothing is written. The bound is a multiple of the reference's own drift, measured
in the same run.

A conversion that also casts (float32 weights stored as bfloat16) is judged as a cast: the reference reads the
source rounded to the stored dtypes exactly as a correct conversion rounds it (round to nearest even), and is
held to the float32 bound; what the rounding alone moves is reported beside, never as the verdict.

Exit 0 on PASS, 1 on FAIL (naming the first divergent block, the largest error's position and the sub-module
that disagrees), 3 on INCONCLUSIVE (nothing beyond a bound too coarse to have seen the catalogue's smallest
faults, as in bfloat16 compute: rerun in float32, or add --power to measure what the run can see), 2 on bad
input."""
_VERIFY_EPILOG = """examples:
  convparity verify mixtral ./Mixtral-8x7B-v0.1 ./mixtral-hf               2 x 32 random tokens, float32
  convparity verify gemma ./gemma-7b.ckpt ./gemma-hf --variant 7b --text "The capital of France is"
  convparity verify phi ./phi-2 ./phi-2-hf --input-ids ids.json --report verify.md --json verify.json
  convparity verify gpt_sw3 ./model.nemo ./sw3-hf --compute-dtype bfloat16 --device cuda
  convparity verify llama ./Meta-Llama-3-8B ./llama-hf --device cuda:0 --reference-device cuda:1
  convparity convert rwkv ./RWKV-4-Pile-169M.pth ./rwkv-hf --verify       convert, then verify
"""


def _add_verify_options(parser: argparse.ArgumentParser, title: str = "verify options") -> None:
    group = parser.add_argument_group(title)
    inputs = group.add_mutually_exclusive_group()
    inputs.add_argument("--input-ids", type=Path, metavar="FILE", help="token ids: JSON (a list, a list of lists, "
                        "or {\"input_ids\": ...}) or safetensors (an input_ids tensor)")
    inputs.add_argument("--text", action="append", metavar="TEXT", help="tokenize TEXT with the tokenizer in the "
                        "converted directory (repeat for more sequences)")
    group.add_argument("--batch", type=int, default=2, metavar="N", help="random sequences (default: %(default)s)")
    group.add_argument("--seq-len", type=int, metavar="T", help="random tokens per sequence (default: 32, or the "
                       "model's learned positions where fewer)")
    group.add_argument("--seed", type=int, default=0, help="seed of the random tokens (default: %(default)s)")
    group.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where the converted model "
                       "runs, its units streamed to it (a bare cuda with two GPUs or more: cuda:0, and the reference "
                       "on cuda:1 at the same time)")
    group.add_argument("--reference-device", metavar="DEVICE", help="run the family's reference on DEVICE (cpu, cuda "
                       "or cuda:N) at the same time as the converted model on --device, e.g. --device cuda:0 "
                       "--reference-device cuda:1 (default: on --device, before the converted model)")
    group.add_argument("--prefetch", action=argparse.BooleanOptionalAction, help="read the next unit of CONVERTED "
                       "on a thread while one runs: two units in memory at the peak instead of one (default: on "
                       "for a cuda --device, where the read hides behind the GPU's compute; off on cpu, where it "
                       "measured no faster)")
    group.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default="float32",
                       help="the converted model computes in this, against the float32 reference (default: float32; "
                            "bfloat16 is a looser second check that can only FAIL or say INCONCLUSIVE, unless "
                            "--power shows its bound catches the catalogue)")
    group.add_argument("--power", action="store_true", help="plant each applicable mutant of the family's catalogue "
                       "into the first block and the head of CONVERTED as it loads, and report how many this "
                       "verification's bounds catch (its measured power on this very checkpoint)")
    group.add_argument("--json", type=Path, metavar="FILE", help="write the result, with environment, as JSON")
    group.add_argument("--report", type=Path, metavar="FILE.md", help="write a Markdown verify report")
    group.add_argument("--html", type=Path, metavar="FILE.html", help="write a self-contained HTML verify report")


if __name__ == "__main__":
    sys.exit(main())
