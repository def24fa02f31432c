"""``convparity verify``: a real conversion held to the original forward pass, on real weights, at any size.

Both sides stream, so memory stays near one decoder block whatever the depth, and nothing is written to disk.
The reference (the family's original forward) reads each source tensor when it needs it, cast on read
(``UpcastTensors``); the converted directory runs as its own transformers model, built empty and loaded one
unit at a time through transformers' loading code (``StreamedModel``).

The bound is measured, not assumed: the reference runs again on a short prefix in higher precision (float64
for float32 compute, float32 for bfloat16), and how far its own logits move, relative to their scale, is the
noise floor. A correct conversion agrees with the reference within ``factor`` x that floor (never below
``floor``); so does every block's output, against its own scale and its own floor.
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.errors import ConversionError
from harness.family.family import Family
from harness.parity.localise import localise_streamed
from harness.parity.metrics import TORCH_DTYPES, compare_logits
from harness.parity.observe import BOUND
from harness.parity.parity import UpcastTensors, cuda_skip_reason, make_tokens
from harness.parity.precision import float64_compute
from harness.parity.streamed_model import StreamedModel
from harness.terminal import module_progress

__all__ = ["BOUNDS", "Bound", "Comparison", "VerifyResult", "format_result", "read_input_ids", "tokenize", "verify",
           "write_json", "write_report"]


@dataclass(frozen=True)
class Bound:
    """How the bound is derived for one compute dtype: ``max(factor x noise, floor)``, relative to scale."""

    noise_dtype: str  # the precision the reference is run in to measure the floor
    factor: float
    floor: float
    prefix: int | None = 16  # tokens of the first sequence the noise run sees; None: every token


# Measured on every family's check cases and upstream oracles (tests/test_verify.py): a correct conversion sits
# at most 2.3x the float32 floor (on 16 tokens of the first sequence) and 3.7x the bfloat16 floor (on every
# token: MoE routing flips in bfloat16 move logits far more at some positions than at others); a planted bug
# in one matrix of one block lands orders of magnitude above. Floors: 8 float32 ulps, 1 bfloat16 ulp.
BOUNDS = {"float32": Bound("float64", factor=10.0, floor=1e-6),
          "bfloat16": Bound("float32", factor=10.0, floor=4e-3, prefix=None)}


@dataclass
class Comparison:
    """The converted model against the reference at one point: a block's output, or the logits."""

    name: str
    max_abs: float
    scale: float  # max |reference| there
    cosine: float
    noise: float  # how far the reference itself moves in higher precision, relative to its scale
    bound: float  # relative
    where: tuple[int, int, int]  # (batch, position, channel or token id) of the largest error

    @property
    def rel(self) -> float:
        return self.max_abs / self.scale if self.scale else self.max_abs

    @property
    def passed(self) -> bool:
        return self.rel <= self.bound  # NaN never passes

    @property
    def margin(self) -> float:
        """How many times the error fits in the bound (inf for an exact match)."""
        return self.bound / self.rel if self.rel else math.inf


@dataclass
class VerifyResult:
    family: str
    source: str
    converted: str
    device: str
    compute_dtype: str
    inputs: str  # what the tokens were
    tokens_shape: list[int]  # [B, T]
    logits: Comparison | None = None
    top1: float = math.nan
    kl: float = math.nan
    blocks: list[Comparison] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_gib: float = 0.0
    diagnosis: str | None = None  # on failure: the sub-module that disagrees (harness.parity.localise)

    @property
    def passed(self) -> bool:
        return self.logits is not None and not self.violations

    @property
    def first_divergent(self) -> str | None:
        """The first block whose output is beyond its bound, as the checkpoint keys name it."""
        return next((b.name for b in self.blocks if not b.passed), None)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``, each comparison with its relative error and verdict."""
        out = asdict(self)
        for key, comp in [("logits", self.logits)] + [(i, b) for i, b in enumerate(self.blocks)]:
            if comp is not None:
                row = out["logits"] if key == "logits" else out["blocks"][key]
                row.update(rel=comp.rel, margin=comp.margin if comp.rel else None, passed=comp.passed)
        return out | {"passed": self.passed, "first_divergent": self.first_divergent}


def verify(family: Family, source: Path, converted: Path, *, tokens: torch.Tensor | None = None,
           lengths: Sequence[int] | None = None, inputs: str = "", device: str = "cpu",
           compute_dtype: str = "float32", config: Path | None = None, batch: int = 2, seq_len: int = 32,
           seed: int = 0, progress: Callable[[str], None] | None = None, **options: object) -> VerifyResult:
    """Hold ``converted`` (a ``from_pretrained`` directory) to the reference on ``source`` (as ``convert`` reads it).

    Without ``tokens``, ``batch`` x ``seq_len`` random ids (``seed``); ``lengths`` marks right padding that is
    not compared. Bad input raises ConversionError; a divergence is a failed result, not an exception.

    >>> verify(family("mixtral"), Path("Mixtral-8x7B"), Path("mixtral-hf")).passed  # doctest: +SKIP
    True
    """
    say = progress or (lambda _: None)
    start = time.perf_counter()
    if compute_dtype not in BOUNDS:
        raise ConversionError(f"unknown compute dtype {compute_dtype!r}; choose one of {', '.join(BOUNDS)}")
    if device.startswith("cuda") and cuda_skip_reason():
        raise ConversionError(f"--device {device}: {cuda_skip_reason()}")
    if not source.exists():
        raise ConversionError(f"source {source} does not exist")
    checkpoint = family.read(source, config=config, **options)
    model = StreamedModel(converted, device=device, dtype=TORCH_DTYPES[compute_dtype], loading=family.loading)
    vocab = int(model.model.config.vocab_size)
    if tokens is None:
        tokens, inputs = make_tokens(vocab, batch, seq_len, seed), f"random token ids (seed {seed}, below {vocab})"
    if int(tokens.max()) >= vocab:
        raise ConversionError(f"token id {int(tokens.max())} is outside the vocabulary of {converted} ({vocab} ids)")
    lengths = list(lengths) if lengths is not None else [tokens.shape[1]] * tokens.shape[0]
    result = VerifyResult(family.name, str(source), str(converted), device, compute_dtype, inputs,
                          list(tokens.shape), notes=_storage_notes(checkpoint, model, compute_dtype))
    bound, cache, tokens = BOUNDS[compute_dtype], max(model.unit_bytes), tokens.to(device)
    prefix = tokens[:1, : min(bound.prefix, lengths[0])] if bound.prefix else tokens
    with torch.no_grad():
        say(f"reference in {compute_dtype} on {tokens.shape[0]} x {tokens.shape[1]} tokens")
        ref = family.reference(UpcastTensors(checkpoint.tensors, device, TORCH_DTYPES[compute_dtype], cache),
                             checkpoint.config, tokens, hidden_states=True)
        say(f"reference in {bound.noise_dtype} on {prefix.shape[0]} x {prefix.shape[1]} tokens (noise floor)")
        with float64_compute() if bound.noise_dtype == "float64" else nullcontext():  # upcasts stay float64
            exact = family.reference(UpcastTensors(checkpoint.tensors, device, _dtype(bound.noise_dtype), cache),
                                   checkpoint.config, prefix, hidden_states=True)
        say(f"{converted} in {compute_dtype}, one unit at a time")
        units = [model.model.get_submodule(u.path) for u in model.units]
        with module_progress(units, "verify: units", quiet=progress is None):
            out = model(tokens)
    mask = torch.arange(tokens.shape[1])[None, :] < torch.tensor(lengths)[:, None]  # (B, T): not padding
    _judge(result, [ref[0], *ref[1][1:]], [exact[0], *exact[1][1:]], [out.logits, *out.block_states],
           model.block_names, mask, bound)
    if not result.passed:
        say("diagnosis: each sub-module on the reference's input (float32)")
        result.diagnosis = _localise(family, checkpoint, model, tokens, result)
    result.seconds = time.perf_counter() - start
    result.peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def _localise(family: Family, checkpoint: Any, model: StreamedModel, tokens: torch.Tensor,
              result: VerifyResult) -> str:
    """Teacher-forced localisation, in float32 only (in low precision every sub-module differs by rounding); a
    sub-module is held to the diagnosis bound or the tightest block bound of this run, whichever is larger."""
    if model.dtype != torch.float32:
        return "localisation runs in float32: rerun with --compute-dtype float32 to name the sub-module"
    bound = max(BOUND, min((c.bound for c in result.blocks), default=BOUND))
    return localise_streamed(family, checkpoint, model, tokens, bound)


def _judge(result: VerifyResult, ref: list[torch.Tensor], exact: list[torch.Tensor], got: list[torch.Tensor],
           blocks: list[str], mask: torch.Tensor, bound: Bound) -> None:
    """Compare logits then block outputs (``ref``, ``exact``: the reference; ``got``: converted) into ``result``."""
    ref, exact = [t.float().cpu() for t in ref], [t.cpu() for t in exact]
    if ref[0].shape != got[0].shape:
        result.violations.append(f"logits shape {tuple(got[0].shape)}, reference {tuple(ref[0].shape)} (pass the "
                                 f"options used for convert)")
        return
    if len(ref) != len(got):
        result.violations.append(f"{len(got) - 1} blocks, the reference has {len(ref) - 1}")
        return
    B, T = exact[0].shape[:2]
    noise = [_noise(r[:B, :T], e, mask[:B, :T]) for r, e in zip(ref, exact, strict=True)]
    result.logits = _compare("logits", ref[0], got[0], mask, noise[0], bound)
    metrics = compare_logits(ref[0][mask], got[0][mask])
    result.top1, result.kl = metrics.top1, metrics.kl
    result.blocks = [_compare(name, r, g, mask, n, bound)
                     for name, r, g, n in zip(blocks, ref[1:], got[1:], noise[1:], strict=True)]
    result.violations = _violations(result, blocks)
    if result.logits.noise > 0.01:
        result.notes.append(f"the reference itself moves by {result.logits.noise:.0%} of the logit scale in "
                            f"{bound.noise_dtype} (routing flips?): a bound this loose proves little")


def _storage_notes(checkpoint: Any, model: StreamedModel, compute_dtype: str) -> list[str]:
    """A note when the conversion rounded the weights (e.g. float32 -> bfloat16): verify counts that as error."""
    src = {d for d in (checkpoint.tensors.meta(k)[1] for k in checkpoint.tensors) if d.is_floating_point}
    conv = {d for d in model.stored_dtypes if d.is_floating_point}
    if not src or not conv:
        return []
    narrow, wide = min(conv, key=lambda d: d.itemsize), max(src, key=lambda d: d.itemsize)
    if narrow.itemsize >= min(wide.itemsize, TORCH_DTYPES[compute_dtype].itemsize):
        return []
    return [f"{model.model_dir} stores {str(narrow)[6:]} weights where the source has {str(wide)[6:]}: that rounding "
            f"counts as error here; --compute-dtype {str(narrow)[6:]} compares both at that precision"]


def format_result(r: VerifyResult) -> str:
    """The terminal report: one row per block, then the logits, how the bound was set, and the verdict."""
    b = BOUNDS[r.compute_dtype]
    noise_on = f"{b.prefix} tokens of the first sequence" if b.prefix else "every token"
    lines = [f"inputs: {' x '.join(map(str, r.tokens_shape))} {r.inputs}; compute {r.compute_dtype} on {r.device}",
             f"bound: max({b.factor:g} x noise, {b.floor:g}) relative to scale; noise = how far the reference "
             f"itself moves in {b.noise_dtype} on {noise_on}", "",
             _ROW.format("", "max abs", "scale", "rel", "noise", "bound", "margin", "cosine", "")]
    for c in [*r.blocks, *([r.logits] if r.logits else [])]:
        lines.append(_ROW.format(c.name, f"{c.max_abs:.2e}", f"{c.scale:.3g}", f"{c.rel:.1e}", f"{c.noise:.1e}",
                                 f"{c.bound:.1e}", f"{c.margin:.1f}x", f"{c.cosine:.8f}", "ok" if c.passed else "FAIL"))
    if r.logits:
        lines.append(f"logits: top-1 agreement {r.top1:.3f}, KL {r.kl:.1e}; largest error at batch "
                     f"{r.logits.where[0]}, position {r.logits.where[1]}, token {r.logits.where[2]}")
    lines += [""] + [f"note: {n}" for n in r.notes]
    if r.passed and r.logits:
        worst = min(c.margin for c in [*r.blocks, r.logits])
        lines.append(f"PASS: logits within {r.logits.rel:.2g} of their scale (bound {r.logits.bound:.2g}); every "
                     f"block within its bound; smallest margin {worst:.1f}x")
    else:
        lines += [f"FAIL: {v}" for v in r.violations]
        lines += [f"diagnosis: {r.diagnosis}"] if r.diagnosis else []
    lines.append(f"{r.seconds:.1f}s, peak RSS {r.peak_rss_gib:.2f} GiB")
    return "\n".join(lines)


_ROW = "{:<22} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>11}  {}"


def write_json(r: VerifyResult, path: Path) -> None:
    """The result, with the environment of the run, as JSON."""
    from harness.parity.report import write_document

    write_document(path, "verify", [{"bound": asdict(BOUNDS[r.compute_dtype]), **r.as_dict()}])


def write_report(r: VerifyResult, path: Path) -> None:
    """A Markdown report a reviewer can trust without rerunning: environment, command, table, verdict."""
    from harness.parity.report import environment

    env = environment()
    lines = [f"# convparity verify: {r.family}", "", f"**{'PASS' if r.passed else 'FAIL'}**", "",
             f"- source: `{r.source}`", f"- converted: `{r.converted}`", f"- date: {env['date']}",
             f"- command: `{env['command']}`", f"- python {env['python']}, torch {env['torch']}, transformers "
             f"{env['transformers']}, safetensors {env['safetensors']}, convparity {env['convparity']}",
             f"- device: {env['device']} ({env['platform']})", "", "```", format_result(r), "```"]
    path.write_text("\n".join(lines) + "\n")


def read_input_ids(path: Path) -> tuple[torch.Tensor, list[int]]:
    """Token ids from JSON (a list, a list of lists, or an object with ``input_ids``, such as an oracle's
    ``meta.json``) or safetensors (an ``input_ids`` tensor); sequences of unequal length are right-padded.

    >>> read_input_ids(Path("golden/upstream/mixtral/case-pth-gqa-8e-top2-notheta/meta.json"))[0].shape
    torch.Size([2, 7])
    """
    if not path.is_file():
        raise ConversionError(f"--input-ids {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            data: Any = load_file(path).get("input_ids")
        except Exception as err:  # safetensors raises its own error type for a bad header
            raise ConversionError(f"--input-ids {path}: not a safetensors file ({err})") from None
        data = data.tolist() if data is not None else None
    else:
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConversionError(f"--input-ids {path}: not JSON ({err})") from None
    data = data.get("input_ids") if isinstance(data, dict) else data
    rows = [data] if isinstance(data, list) and data and all(isinstance(x, int) for x in data) else data
    if not (isinstance(rows, list) and rows and all(isinstance(r, list) and r and all(isinstance(x, int) and x >= 0
                                                                                    for x in r) for r in rows)):
        raise ConversionError(f"--input-ids {path}: expected non-negative token ids, as a list, a list of lists or "
                              f"{{\"input_ids\": ...}} (JSON), or an input_ids tensor (safetensors)")
    return _pad(rows)


def tokenize(converted: Path, texts: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
    """``texts`` through the tokenizer saved in ``converted``, one sequence each, right-padded."""
    from transformers import AutoTokenizer

    files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((converted / f).is_file() for f in files):
        raise ConversionError(f"--text needs a tokenizer in {converted} ({' or '.join(files)}); found none; pass "
                              f"--input-ids FILE instead")
    try:
        tokenizer = AutoTokenizer.from_pretrained(converted)
    except (OSError, ValueError, TypeError) as err:
        raise ConversionError(f"--text: cannot load the tokenizer in {converted}: {str(err).splitlines()[0]}") from None
    rows = [tokenizer(t)["input_ids"] for t in texts]
    if not all(rows):
        raise ConversionError("--text: a text gave no tokens")
    return _pad(rows)


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
    width = max(map(len, rows))  # right padding: a causal model's earlier positions never see it
    return torch.tensor([r + [0] * (width - len(r)) for r in rows]), [len(r) for r in rows]


def _dtype(name: str) -> torch.dtype:
    return torch.float64 if name == "float64" else TORCH_DTYPES[name]


def _noise(run: torch.Tensor, exact: torch.Tensor, mask: torch.Tensor) -> float:
    """How far the compute-dtype run is from the higher-precision one, relative to scale (padding left out)."""
    run, exact = run[mask].double(), exact[mask].double()
    return (run - exact).abs().max().item() / (exact.abs().max().item() or 1.0)


def _compare(name: str, ref: torch.Tensor, got: torch.Tensor, mask: torch.Tensor, noise: float,
             bound: Bound) -> Comparison:
    diff = torch.where(mask[..., None], (ref.double() - got.double()).abs(), 0.0)  # (B, T, C)
    where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    a, b = ref[mask].double().flatten(), got[mask].double().flatten()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    return Comparison(name, diff.max().item(), a.abs().max().item(), cosine, noise,
                      max(bound.factor * noise, bound.floor), where)  # type: ignore[arg-type]


def _violations(result: VerifyResult, blocks: list[str]) -> list[str]:
    out = []
    first = result.first_divergent
    if first is not None:
        b = next(c for c in result.blocks if c.name == first)
        out.append(f"first divergent block {first}: max abs {b.max_abs:.3g} at batch {b.where[0]}, position "
                   f"{b.where[1]}, channel {b.where[2]} ({b.rel:.2g} of its scale {b.scale:.3g} > bound {b.bound:.2g})")
    lg = result.logits
    if lg is not None and not lg.passed:
        where = f"batch {lg.where[0]}, position {lg.where[1]}, token {lg.where[2]}"
        after = "" if first else f"; every block agrees, so the divergence is after {blocks[-1]} (final norm or head)"
        out.append(f"logits max abs {lg.max_abs:.3g} at {where} ({lg.rel:.2g} of their scale {lg.scale:.3g} > "
                   f"bound {lg.bound:.2g}){after}")
    return out
