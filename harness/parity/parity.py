"""Forward-pass parity: the converted directory, loaded the way users load it, against the reference.

The candidate is ``AutoModelForCausalLM.from_pretrained(model_dir)``; the reference is the family's
``forward`` over the source tensors. Both see the same tokens on the same device in the same dtype.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.family.family import Family
from harness.mapping.conversion import SourceCheckpoint
from harness.parity.metrics import TORCH_DTYPES, Metrics, Tolerance, compare_logits, tolerance_for

__all__ = ["ParityResult", "ReferenceMemo", "UpcastTensors", "cuda_skip_reason", "devices", "load_converted",
           "make_tokens", "run_parity"]

ReferenceOutputs = tuple[torch.Tensor, list[torch.Tensor]]  # logits, hidden states
# (id of the source, device, dtype) -> (that source, its outputs): the source is held so that its id stays its own
ReferenceMemo = dict[tuple[int, str, str], tuple[SourceCheckpoint, ReferenceOutputs]]


@dataclass
class ParityResult:
    family: str
    case: str
    device: str
    dtype: str
    metrics: Metrics | None = None
    tolerance: Tolerance | None = None
    violations: list[str] = field(default_factory=list)
    skipped: str | None = None
    first_divergent_layer: int | None = None
    noise: float | None = None  # max |reference in dtype - reference in float32|; None in float32
    drift: Metrics | None = None  # the reference in dtype against itself in float32; None in float32
    source_sha256: str | None = None  # of the source files the case was converted from
    seconds: float = 0.0
    # per hidden state then the logits: {"name", "rel" (max abs error / scale), "bound", "noise"}, all relative
    per_layer: list[dict[str, Any]] = field(default_factory=list)
    diagnosis: str | None = None  # where a failure is: set by the front ends (harness.mutation.on_failure)
    not_run: str | None = None  # REFUSED / UNLOADABLE / TIMEOUT: a failed cell that never reached parity

    @property
    def passed(self) -> bool:
        return self.skipped is None and self.metrics is not None and not self.violations

    @property
    def status(self) -> str:
        return "skip" if self.skipped else ("pass" if self.passed else "FAIL")

    @property
    def outcome(self) -> str:
        """What a user acts on: PASS, FAIL (parity), REFUSED, UNLOADABLE, TIMEOUT (no parity ran), or SKIP."""
        return "SKIP" if self.skipped else "PASS" if self.passed else self.not_run or "FAIL"


def cuda_skip_reason() -> str | None:
    """Why CUDA cases cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False)"
    return None


def devices() -> list[str]:
    """The device matrix: CPU always, CUDA always listed (skipped with a reason where absent)."""
    return ["cpu", "cuda"]


class UpcastTensors(Mapping[str, torch.Tensor]):
    """Source tensors, each read and cast to ``dtype`` on ``device`` only when the reference asks for it.

    Floating tensors are cast, others (int8 quantised weights, their scales' indices) only moved. Nothing is
    kept: memory holds the tensors the reference is using, never the checkpoint. A tensor read again (the
    Hub's fused Mixtral experts, sliced once per expert) is kept while it fits in ``cache_bytes``.

    >>> t = UpcastTensors({"w": torch.ones(2, dtype=torch.bfloat16)}, "cpu", torch.float64)
    >>> t["w"].dtype
    torch.float64
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], device: str | torch.device, dtype: torch.dtype,
                 cache_bytes: int = 0) -> None:
        self.tensors, self.device, self.dtype, self.cache_bytes = tensors, device, dtype, cache_bytes
        self._seen: set[str] = set()
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        t = _cast(self.tensors[name], self.device, self.dtype)
        if name in self._seen and t.nbytes <= self.cache_bytes:
            self._cache[name] = t
            while sum(c.nbytes for c in self._cache.values()) > self.cache_bytes:
                self._cache.popitem(last=False)
        self._seen.add(name)
        return t

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors


def make_tokens(vocab_size: int, batch: int = 2, seq: int = 24, seed: int = 0) -> torch.Tensor:
    """Deterministic token ids [batch, seq]; long enough that a rotary or position error shows."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq), generator=g)


def load_converted(model_dir: Path, device: str, dtype: str, family: Family | None = None,
                   report: dict[str, list[str]] | None = None) -> Any:
    """Load a converted directory as a user would, failing on any missing or unexpected key.

    A family may export ``loading(config) -> context manager`` for what stock transformers cannot build
    (RWKV with one layer); it wraps ``from_pretrained``. With ``report`` (diagnosis), bad keys are not an
    error: mis-shaped tensors are left initialised and ``report`` lists the keys by kind (missing, unexpected,
    mismatched).
    """
    from transformers import AutoModelForCausalLM  # deferred: importing transformers costs seconds
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hook = family.loading if family is not None else None
    context = hook(json.loads((model_dir / "config.json").read_text())) if hook else nullcontext()
    with context:
        # trust_remote_code=False: a directory asking for its own code is refused at once, never prompted for
        model, info = AutoModelForCausalLM.from_pretrained(model_dir, dtype=TORCH_DTYPES[dtype],
                                                           output_loading_info=True,
                                                           ignore_mismatched_sizes=report is not None,
                                                           trust_remote_code=False)
    bad = {k: v for k, v in info.items() if v}
    if report is not None:
        report.update({k.removesuffix("_keys"): sorted(n[0] if isinstance(n, tuple) else n for n in v)
                       for k, v in bad.items() if k.endswith("_keys")})
    elif bad:
        raise AssertionError(f"{model_dir} does not load cleanly: {bad}")
    return model.to(device).eval()


def run_parity(family: Family, case: str, source: SourceCheckpoint, model: Any, device: str, dtype: str,
               tokens: torch.Tensor, memo: ReferenceMemo | None = None) -> ParityResult:
    """Run the reference and the loaded model on ``tokens`` and judge the logits against the tolerance.

    ``memo``, kept by the caller for one set of ``tokens``, holds the reference's outputs for each source, device
    and dtype it was asked for: a mutation run holds many converted models to the same reference."""
    result = ParityResult(family.name, case, device, dtype)
    tol = tolerance_for(device, dtype)
    tokens = tokens.to(device)
    with torch.no_grad():
        ref_logits, ref_hidden = _reference(family, source, tokens, device, dtype, memo)
        out = model(tokens, output_hidden_states=True)
        logits = out.logits.float()
        if logits.shape != ref_logits.shape:  # e.g. a vocabulary cut to the wrong size
            result.violations = [f"logits shape {tuple(logits.shape)}, reference {tuple(ref_logits.shape)}"]
            return result
        exact_hidden = None
        if dtype != "float32":
            exact, exact_hidden = _reference(family, source, tokens, device, "float32", memo)
            result.noise = (ref_logits - exact).abs().max().item()
            result.drift = compare_logits(exact, ref_logits)
    result.metrics, result.tolerance = compare_logits(ref_logits, logits), tol
    result.violations = tol.violations(result.metrics, result.noise, result.drift)
    scale = ref_logits.abs().max().item() or 1.0
    noise = (result.noise or 0.0) / scale or None
    result.per_layer = [*_per_layer(ref_hidden, out.hidden_states, exact_hidden, tol, scale),
                        {"name": "logits", "rel": result.metrics.max_abs / scale,
                         "bound": tol.relative_bound(scale, noise), "noise": noise}]
    if result.violations:
        result.first_divergent_layer = next(
            (i for i, row in enumerate(result.per_layer[:-1]) if row["rel"] > row["bound"]), None)
    return result


def _reference(family: Family, source: SourceCheckpoint, tokens: torch.Tensor, device: str, dtype: str,
               memo: ReferenceMemo | None = None) -> ReferenceOutputs:
    key = (id(source), device, dtype)
    if memo is not None and key in memo and memo[key][0] is source:
        return memo[key][1]
    tensors = UpcastTensors(source.tensors, device, TORCH_DTYPES[dtype])
    outputs = family.reference(tensors, source.config, tokens, hidden_states=True)
    if memo is not None:
        memo[key] = (source, outputs)
    return outputs


def _cast(t: torch.Tensor, device: str, dtype: torch.dtype) -> torch.Tensor:
    return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)


def _per_layer(ref: list[torch.Tensor], got: tuple[torch.Tensor, ...] | None, exact: list[torch.Tensor] | None,
               tol: Tolerance, logits_scale: float) -> list[dict[str, Any]]:
    """Relative error of each hidden state but the last (which differs by a final norm), each against the relative
    bound the logits are held to (the absolute bound over the logits' scale, or the noise factor times this state's
    own relative drift from float32 in low precision, whichever is looser)."""
    rows = []
    for i, (a, b) in enumerate(zip(ref[:-1], (got or ())[:-1], strict=False)):
        scale = a.abs().max().item() or 1.0
        noise = (a.float() - exact[i].float()).abs().max().item() / scale if exact is not None else None
        rows.append({"name": "embeddings" if i == 0 else f"layers.{i - 1}",
                     "rel": (a.float() - b.float()).abs().max().item() / scale,
                     "bound": tol.relative_bound(logits_scale, noise), "noise": noise})
    return rows
