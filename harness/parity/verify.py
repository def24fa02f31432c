"""``convparity verify``: a real conversion held to the original forward pass, on real weights, at any size.

Both sides stream, so memory stays near two decoder blocks whatever the depth, and nothing is written to disk.
The reference (the family's original forward) reads each source tensor when it needs it, cast on read
(``UpcastTensors``); the converted directory runs as its own transformers model, built empty and loaded one
unit at a time through transformers' loading code, the next unit read on a thread while one runs
(``StreamedModel``). With a reference device, the two sides run at the same time (``verify_devices``).

A declared cast is not an error: where the converted directory stores a tensor in another floating dtype than
the source, the reference reads the source rounded as a correct conversion rounds it (``harness.parity.rounding``),
and what that rounding alone moves is reported apart. The truth is the reference in float32 on those weights; the
converted model runs in the compute dtype and is held to ``factor`` x the reference's own noise (float64 against
float32, or bfloat16 against float32), never below ``floor``, at every block and at the logits. The verdict
(``harness.parity.verify_result``) is a PASS only where those bounds could have seen the catalogue's faults.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from harness.errors import ConversionError
from harness.family.family import Family
from harness.mapping.conversion import SourceCheckpoint
from harness.parity.localise import localise_streamed
from harness.parity.metrics import TORCH_DTYPES
from harness.parity.observe import BOUND
from harness.parity.parity import UpcastTensors
from harness.parity.precision import float64_compute
from harness.parity.rounding import Rounding, check_rounding, plan_rounding
from harness.parity.routing import Routers, routing_agreement
from harness.parity.streamed_model import StreamedModel, StreamedOutput
from harness.parity.verify_devices import check_device, placement, side_by_side
from harness.parity.verify_inputs import fitted_tokens, read_input_ids, tokenize
from harness.parity.verify_result import BOUNDS, EXIT, RESOLUTION, Bound, Comparison, VerifyResult, format_result
from harness.terminal import module_progress

__all__ = ["BOUNDS", "EXIT", "RESOLUTION", "Bound", "Comparison", "VerifyResult", "format_result", "read_input_ids",
           "tokenize", "verify", "write_json", "write_report"]

Outputs = tuple[torch.Tensor, list[torch.Tensor]]  # logits, hidden states (embeddings first)
PowerHook = Callable[[Family, SourceCheckpoint, StreamedModel, torch.Tensor, Outputs, VerifyResult], Any]


def verify(family: Family, source: Path, converted: Path, *, tokens: torch.Tensor | None = None,
           lengths: Sequence[int] | None = None, inputs: str = "", device: str = "cpu",
           compute_dtype: str = "float32", config: Path | None = None, batch: int = 2, seq_len: int | None = None,
           seed: int = 0, power: PowerHook | None = None, progress: Callable[[str], None] | None = None,
           reference_device: str | None = None, prefetch: bool | None = None, **options: object) -> VerifyResult:
    """Hold ``converted`` (a ``from_pretrained`` directory) to the reference on ``source`` (as ``convert`` reads it).

    Without ``tokens``, ``batch`` x ``seq_len`` random ids (``seed``; ``seq_len`` defaults to 32, or the model's
    position limit where smaller); ``lengths`` marks right padding that is not compared. ``power``
    (``harness.mutation.power.measure_power``, passed in by the front end: the mutation layer sits above this one)
    plants the catalogue into the first blocks and the head of this load and reports how much of it the bounds
    catch. With ``reference_device``, the reference runs there, at the same time as the converted model (on
    ``device``); without it, on ``device``, first. ``prefetch`` reads each unit of ``converted`` while the one before
    it runs (default: on a GPU only). Bad input raises ConversionError; a divergence is a failed result, not an
    exception.

    >>> verify(family("mixtral"), Path("Mixtral-8x7B"), Path("mixtral-hf")).verdict  # doctest: +SKIP
    'PASS'
    """
    say = progress or (lambda _: None)
    start = time.perf_counter()
    if compute_dtype not in BOUNDS:
        raise ConversionError(f"unknown compute dtype {compute_dtype!r}; choose one of {', '.join(BOUNDS)}")
    check_device("--device", device)
    device, reference_device = placement(device, reference_device, torch.cuda.device_count() if device == "cuda" else 0)
    if reference_device is not None:
        check_device("--reference-device", reference_device)
    ref_device = reference_device or device
    if not source.exists():
        raise ConversionError(f"source {source} does not exist")
    checkpoint = family.read(source, config=config, **options)
    model = StreamedModel(converted, device=device, dtype=TORCH_DTYPES[compute_dtype], loading=family.loading,
                          prefetch=prefetch)
    tokens, inputs = fitted_tokens(model.model.config, model.model_dir, tokens, inputs, batch, seq_len, seed)
    lengths = list(lengths) if lengths is not None else [tokens.shape[1]] * tokens.shape[0]
    where = device if reference_device is None else f"{device}, reference on {reference_device}"
    result = VerifyResult(family.name, str(source), str(converted), where, compute_dtype, inputs, list(tokens.shape))
    rounding = _rounding(family, checkpoint, model, result)
    truth = rounding.apply(checkpoint)
    bound, tokens, ref_tokens = BOUNDS[compute_dtype], tokens.to(device), tokens.to(ref_device)
    prefix = ref_tokens[:1, : min(bound.prefix or 16, lengths[0])]
    routers = Routers(model)

    def reference_side() -> tuple[Outputs, Outputs, Outputs | None]:
        with torch.no_grad():  # per thread: this may run beside the converted model
            say(f"reference in float32 on {tokens.shape[0]} x {tokens.shape[1]} tokens on {ref_device}")
            ref = _reference(family, truth, ref_tokens, ref_device, "float32", model, routers.reference)
            noise_tokens = prefix if bound.prefix else ref_tokens
            say(f"reference in {bound.noise_dtype} on {noise_tokens.shape[0]} x {noise_tokens.shape[1]} tokens "
                f"(noise floor)")
            noise = _reference(family, truth, noise_tokens, ref_device, bound.noise_dtype, model, routers.noise)
            if not rounding:
                return ref, noise, None
            say(f"reference in float32 on the unrounded source, {prefix.shape[1]} tokens (what the cast moves)")
            return ref, noise, _reference(family, checkpoint, prefix, ref_device, "float32", model)

    def converted_side() -> StreamedOutput:
        say(f"{converted} in {compute_dtype} on {device}, one unit at a time")
        units = [model.model.get_submodule(u.path) for u in model.units]
        with torch.no_grad(), module_progress(units, "verify: units", quiet=progress is None), routers.converted():
            return model(tokens)

    (ref, noise, cast), out = side_by_side(reference_side, converted_side, together=reference_device is not None)
    mask = torch.arange(tokens.shape[1])[None, :] < torch.tensor(lengths)[:, None]  # (B, T): not padding
    _judge(result, ref, noise, cast, [out.logits, *out.block_states], model.block_names, mask, bound)
    result.routing = routing_agreement(routers, mask, bound.factor)
    _settle_routing(result, model.block_names)
    if power is not None and result.logits is not None and not result.violations:
        say("power: the catalogue planted into the first blocks and the head of this load")
        result.power = power(family, truth, model, tokens, ref, result).as_dict()
    if result.verdict == "FAIL":
        say("diagnosis: each sub-module on the reference's input (float32)")
        result.diagnosis = _localise(family, truth, model, tokens, result)
    elif result.verdict == "INCONCLUSIVE" and bound.noise_dtype == "bfloat16":
        result.notes.append("bfloat16 compute measures the model as it will run, not the conversion: its own "
                            "rounding sets the bound; float32 compute decides")
    result.seconds = time.perf_counter() - start
    result.peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def _rounding(family: Family, checkpoint: SourceCheckpoint, model: StreamedModel, result: VerifyResult) -> Rounding:
    """How the conversion rounded the source, checked on a few stored tensors; notes in ``result``."""
    try:
        converted = family.convert(checkpoint)
    except ConversionError as err:
        result.notes.append(f"the source does not convert with convparity's own tables ({err}): the reference reads it "
                            f"unrounded")
        return Rounding()
    rounding = plan_rounding(converted, model.stored)
    if rounding:
        result.rounding = rounding.describe()
        finding = check_rounding(converted, rounding, model.read)
        result.notes.append(finding or "the stored tensors checked are the source rounded to nearest even")
    return rounding


def _reference(family: Family, source: SourceCheckpoint, tokens: torch.Tensor, device: str, dtype: str,
               model: StreamedModel, probe: Callable[..., None] | None = None) -> Outputs:
    """The family's reference over ``source`` read in ``dtype`` (float64 compute where asked)."""
    torch_dtype = torch.float64 if dtype == "float64" else TORCH_DTYPES[dtype]
    tensors = UpcastTensors(source.tensors, device, torch_dtype, max(model.unit_bytes))
    kwargs = {"probe": probe} if probe is not None else {}
    with float64_compute() if dtype == "float64" else nullcontext():  # upcasts stay float64
        logits, states = family.reference(tensors, source.config, tokens, hidden_states=True, **kwargs)
    return logits, states


def _localise(family: Family, truth: SourceCheckpoint, model: StreamedModel, tokens: torch.Tensor,
              result: VerifyResult) -> str:
    """Teacher-forced localisation, in float32 only (in low precision every sub-module differs by rounding); a
    sub-module is held to the diagnosis bound or the tightest block bound of this run, whichever is larger."""
    if model.dtype != torch.float32:
        return "localisation runs in float32: rerun with --compute-dtype float32 to name the sub-module"
    bound = max(BOUND, min((c.bound for c in result.blocks), default=BOUND))
    return localise_streamed(family, truth, model, tokens, bound)


def _judge(result: VerifyResult, ref: Outputs, noise: Outputs, cast: Outputs | None, got: list[torch.Tensor],
           blocks: list[str], mask: torch.Tensor, bound: Bound) -> None:
    """Compare logits then block outputs of the converted model (``got``) with the reference into ``result``."""
    truth = [t.float().cpu() for t in [ref[0], *ref[1][1:]]]
    if truth[0].shape != got[0].shape:
        result.violations.append(f"logits shape {tuple(got[0].shape)}, reference {tuple(truth[0].shape)} (pass the "
                                 f"options used for convert)")
        return
    if len(truth) != len(got):
        result.violations.append(f"{len(got) - 1} blocks, the reference has {len(truth) - 1}")
        return
    noisy = [t.cpu() for t in [noise[0], *noise[1][1:]]]
    B, T = noisy[0].shape[:2]
    floors = [_relative(t[:B, :T], n, mask[:B, :T]) for t, n in zip(truth, noisy, strict=True)]
    costs: list[float | None] = [None] * len(truth)
    if cast is not None:
        moved = [t.cpu() for t in [cast[0], *cast[1][1:]]]
        P = moved[0].shape[1]
        costs = [_relative(m, t[:1, :P], mask[:1, :P]) for t, m in zip(truth, moved, strict=True)]
    names = ["logits", *blocks]
    compared = [_compare(n, t, g, mask, f, bound, c)
                for n, t, g, f, c in zip(names, truth, got, floors, costs, strict=True)]
    result.logits, result.blocks = compared[0], compared[1:]
    result.top1, result.kl, result.kl_p95 = _distribution(truth[0][mask], got[0][mask])
    result.violations = _violations(result, blocks)
    if result.logits.noise > 0.01:
        result.notes.append(f"the reference itself moves by {result.logits.noise:.0%} of the logit scale in "
                            f"{bound.noise_dtype} (routing flips?): a bound this loose proves little")
    if cast is not None and result.logits.cast is not None:
        result.notes.append(f"the declared cast alone moves the logits by {result.logits.cast:.1e} of their scale "
                            f"(the reference on the source as is, against the rounded source): information, not "
                            f"the verdict")


def _settle_routing(result: VerifyResult, blocks: list[str]) -> None:
    """A flip at a clear gap is a failure; a divergence that starts at or after a block whose routing flipped only
    at near-ties cannot be told from that rounding, so it is unresolved rather than failed."""
    clear = [f"routing {r.name}: {r.clear} token(s) pick other experts than the reference where its choice was "
             f"clear (router-logit gap above {r.tie_gap:.1e})" for r in result.routing if r.clear]
    tied = [next(i for i, b in enumerate(blocks) if r.name.startswith(b + ".")) for r in result.routing if r.near_ties]
    first = result.first_divergent
    after_tie = bool(tied) and (first is None or blocks.index(first) >= min(tied))
    if result.violations and not clear and after_tie:
        result.unresolved, result.violations = result.violations, []
    result.violations += clear


def _distribution(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float, float]:
    """Top-1 agreement, mean and 95th-percentile per-token KL(reference || converted), in float64."""
    ref, got = ref.double(), got.double()
    log_p, log_q = ref.log_softmax(-1), got.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)
    top1 = (ref.argmax(-1) == got.argmax(-1)).double().mean().item()
    return top1, kl.mean().item(), torch.quantile(kl, 0.95).item() if kl.numel() else math.nan


def write_json(r: VerifyResult, path: Path) -> None:
    """The result, with the environment of the run, as JSON."""
    from harness.parity.report import write_document

    write_document(path, "verify", [{"bound": asdict(BOUNDS[r.compute_dtype]), **r.as_dict()}])


def write_report(r: VerifyResult, path: Path) -> None:
    """A Markdown report a reviewer can trust without rerunning: environment, command, table, verdict."""
    from harness.parity.report import environment

    env = environment()
    lines = [f"# convparity verify: {r.family}", "", f"**{r.verdict}**", "",
             f"- source: `{r.source}`", f"- converted: `{r.converted}`", f"- date: {env['date']}",
             f"- command: `{env['command']}`", f"- python {env['python']}, torch {env['torch']}, transformers "
             f"{env['transformers']}, safetensors {env['safetensors']}, convparity {env['convparity']}",
             f"- device: {env['device']} ({env['platform']})", "", "```", format_result(r), "```"]
    path.write_text("\n".join(lines) + "\n")


def _relative(truth: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> float:
    """max |other - truth| / max |truth| over the tokens that are not padding."""
    truth, other = truth[mask].double(), other[mask].double()
    return (other - truth).abs().max().item() / (truth.abs().max().item() or 1.0)


def _compare(name: str, ref: torch.Tensor, got: torch.Tensor, mask: torch.Tensor, noise: float,
             bound: Bound, cast: float | None = None) -> Comparison:
    diff = torch.where(mask[..., None], (ref.double() - got.double()).abs(), 0.0)  # (B, T, C)
    where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    a, b = ref[mask].double().flatten(), got[mask].double().flatten()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    return Comparison(name, diff.max().item(), a.abs().max().item(), cosine, noise,
                      max(bound.factor * noise, bound.floor), where, cast)  # type: ignore[arg-type]


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
