"""How far two sets of logits are apart, and the one tolerance table that decides pass or fail."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from harness.io.raw_dtypes import CAST_DTYPES

__all__ = ["TORCH_DTYPES", "TOLERANCES", "Metrics", "Tolerance", "compare_logits", "tolerance_for"]

TORCH_DTYPES = {name: getattr(torch, name) for name in CAST_DTYPES}


@dataclass(frozen=True)
class Metrics:
    """Candidate logits against reference logits, both [B, T, V].

    ``max_rel`` is the largest absolute difference divided by the largest reference magnitude (element-wise
    ratios blow up near zero and say nothing); ``kl`` is KL(reference || candidate) per position, averaged.
    """

    max_abs: float
    max_rel: float
    cosine: float
    top1: float
    kl: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Tolerance:
    """Bounds on ``Metrics``. In low precision the max_abs bound scales with the noise floor.

    The noise floor is how far the reference itself moves when run in that dtype instead of float32; a
    correct conversion cannot be expected to do better than a few times that (MoE routing flips, for one).
    """

    max_abs: float
    min_cosine: float
    min_top1: float
    max_kl: float
    noise_factor: float = 0.0

    def max_abs_bound(self, noise: float | None) -> float:
        return max(self.max_abs, self.noise_factor * (noise or 0.0))

    def relative_bound(self, scale: float, noise: float | None) -> float:
        """``max_abs_bound`` as a fraction of ``scale`` (the reference's largest magnitude), ``noise`` relative too:
        the bound that a relative error, of the logits or of a hidden state, is held to.

        >>> Tolerance(1e-4, 0.9, 0.9, 1.0, noise_factor=3.0).relative_bound(10.0, 0.5)
        1.5
        """
        return max(self.max_abs / scale, self.noise_factor * (noise or 0.0))

    def violations(self, m: Metrics, noise: float | None = None, drift: Metrics | None = None) -> list[str]:
        """Human-readable reasons ``m`` fails; empty when it passes. NaN never passes.

        ``drift`` is the reference's own metrics in this dtype against itself in float32: where it is worse
        than a fixed bound (an MoE router flipping an expert on a near-tie), the bound for cosine, top-1 and
        KL becomes ``noise_factor`` times that drift, as the max_abs bound does with ``noise``.
        """
        out = []
        bound = self.max_abs_bound(noise)
        if not m.max_abs <= bound:
            why = f" (= {self.noise_factor:g} x noise floor {noise:.3g})" if bound > self.max_abs else ""
            out.append(f"max_abs {m.max_abs:.3g} > {bound:.3g}{why}")
        f = self.noise_factor if drift is not None else 0.0
        cosine = min(self.min_cosine, 1 - f * (1 - drift.cosine)) if f else self.min_cosine
        top1 = min(self.min_top1, 1 - f * (1 - drift.top1)) if f else self.min_top1
        kl = max(self.max_kl, f * drift.kl) if f else self.max_kl
        if not m.cosine >= cosine:
            out.append(f"cosine {m.cosine:.8f} < {cosine:.8g}")
        if not m.top1 >= top1:
            out.append(f"top1 {m.top1:.3f} < {top1:.3g}")
        if not m.kl <= kl:
            out.append(f"kl {m.kl:.3g} > {kl:.3g}")
        return out


# One table for every family, per (device, dtype). float32 is held to 1e-4 absolute (correct conversions
# measure <= 1e-5; a wrong GELU variant moves logits by >= 4.8e-4). Low precision compares against the
# reference run in the same dtype: op-by-op rounding differs, so max_abs is bounded by a multiple of the
# reference's own float32-to-low-precision drift, and the distribution by cosine, top-1 and KL, each held to
# the fixed bound or to 3x the reference's own drift in that metric, whichever is looser: a tiny MoE whose router
# meets a near-tie flips an expert in bfloat16 on the reference side as well (measured: the reference's own KL
# drift 9.4e-3 on mixtral-gqa, while the converted model sat at 2.4e-4 from float32).
_FP32 = Tolerance(max_abs=1e-4, min_cosine=0.9999999, min_top1=0.95, max_kl=1e-8)
_BF16 = Tolerance(max_abs=0.1, min_cosine=0.999, min_top1=0.9, max_kl=5e-3, noise_factor=3.0)
_FP16 = Tolerance(max_abs=0.02, min_cosine=0.9999, min_top1=0.9, max_kl=1e-3, noise_factor=3.0)
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    (device, dtype): tol for device in ("cpu", "cuda")
    for dtype, tol in (("float32", _FP32), ("bfloat16", _BF16), ("float16", _FP16))
}


def tolerance_for(device: str, dtype: str) -> Tolerance:
    return TOLERANCES[(torch.device(device).type, dtype)]


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor) -> Metrics:
    """Metrics of ``candidate`` against ``reference``, computed in float64.

    >>> x = torch.randn(2, 3, 5)
    >>> compare_logits(x, x).max_abs
    0.0
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"logits shapes differ: reference {tuple(reference.shape)}, "
                         f"candidate {tuple(candidate.shape)}")
    ref, cand = reference.detach().double().cpu(), candidate.detach().double().cpu()
    diff = (ref - cand).abs()
    max_abs = diff.max().item()
    cosine = torch.nn.functional.cosine_similarity(ref.flatten(), cand.flatten(), dim=0).item()
    top1 = (ref.argmax(-1) == cand.argmax(-1)).double().mean().item()
    log_p, log_q = ref.log_softmax(-1), cand.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()
    return Metrics(max_abs, max_abs / max(ref.abs().max().item(), 1e-30), cosine, top1, kl)
