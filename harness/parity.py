"""Forward-pass parity: the converted directory, loaded the way users load it, against the reference.

The candidate is ``AutoModelForCausalLM.from_pretrained(model_dir)``; the reference is the family's
``forward`` over the source tensors. Both see the same tokens on the same device in the same dtype.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.conversion import SourceCheckpoint
from harness.metrics import DTYPES, Metrics, Tolerance, compare_logits, tolerance_for
from harness.registry import Family

__all__ = ["ParityResult", "cuda_skip_reason", "devices", "load_converted", "make_tokens", "run_parity"]


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
    source_sha256: str | None = None  # of the source files the case was converted from
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.skipped is None and self.metrics is not None and not self.violations

    @property
    def status(self) -> str:
        return "skip" if self.skipped else ("pass" if self.passed else "FAIL")


def cuda_skip_reason() -> str | None:
    """Why CUDA cases cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False)"
    return None


def devices() -> list[str]:
    """The device matrix: CPU always, CUDA always listed (skipped with a reason where absent)."""
    return ["cpu", "cuda"]


def make_tokens(vocab_size: int, batch: int = 2, seq: int = 24, seed: int = 0) -> torch.Tensor:
    """Deterministic token ids [batch, seq]; long enough that a rotary or position error shows."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq), generator=g)


def load_converted(model_dir: Path, device: str, dtype: str, family: Family | None = None) -> Any:
    """Load a converted directory as a user would, failing on any missing or unexpected key.

    A family may export ``loading(config) -> context manager`` for what stock transformers cannot build
    (RWKV with one layer); it wraps ``from_pretrained``.
    """
    from transformers import AutoModelForCausalLM  # deferred: importing transformers costs seconds
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hook = getattr(family, "loading", None) if family is not None else None
    context = hook(json.loads((model_dir / "config.json").read_text())) if hook else nullcontext()
    with context:
        model, info = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype],
                                                           output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise AssertionError(f"{model_dir} does not load cleanly: {bad}")
    return model.to(device).eval()


def run_parity(family: Family, case: str, source: SourceCheckpoint, model: Any, device: str, dtype: str,
               tokens: torch.Tensor) -> ParityResult:
    """Run the reference and the loaded model on ``tokens`` and judge the logits against the tolerance."""
    result = ParityResult(family.name, case, device, dtype)
    tol = tolerance_for(device, dtype)
    tokens = tokens.to(device)
    with torch.no_grad():
        ref_logits, ref_hidden = _reference(family, source, tokens, device, dtype)
        out = model(tokens, output_hidden_states=True)
        logits = out.logits.float()
        if logits.shape != ref_logits.shape:  # e.g. a vocabulary cut to the wrong size
            result.violations = [f"logits shape {tuple(logits.shape)}, reference {tuple(ref_logits.shape)}"]
            return result
        if dtype != "float32":
            exact = _reference(family, source, tokens, device, "float32")[0]
            result.noise = (ref_logits - exact).abs().max().item()
    result.metrics, result.tolerance = compare_logits(ref_logits, logits), tol
    result.violations = tol.violations(result.metrics, result.noise)
    if result.violations:
        result.first_divergent_layer = _first_divergence(ref_hidden, out.hidden_states, tol)
    return result


def _reference(family: Family, source: SourceCheckpoint, tokens: torch.Tensor, device: str,
               dtype: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    tensors = {k: _cast(source.tensors[k], device, DTYPES[dtype]) for k in source.tensors}
    return family.forward(tensors, source.config, tokens, hidden_states=True)


def _cast(t: torch.Tensor, device: str, dtype: torch.dtype) -> torch.Tensor:
    return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)


def _first_divergence(ref: list[torch.Tensor], got: tuple[torch.Tensor, ...] | None, tol: Tolerance) -> int | None:
    """Index of the first hidden state (0 = embeddings) whose relative error exceeds the logits' bound."""
    if not got:
        return None
    for i, (a, b) in enumerate(zip(ref[:-1], got[:-1], strict=False)):  # last entries differ by a final norm
        scale = a.abs().max().item() or 1.0
        if (a.float() - b.float()).abs().max().item() / scale > tol.max_abs:
            return i
    logging.getLogger(__name__).debug("hidden states agree; divergence is after the last block")
    return None
