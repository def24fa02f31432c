"""What ``convparity verify`` found: the comparisons, the verdict and what the verification could have seen.

A verdict is one of three. FAIL: some block or the logits are beyond their bound (or a mixture-of-experts block
picks other experts where the reference's choice was clear). PASS: nothing is beyond its bound *and* the bound
was fine enough to see the catalogue's faults: every point's bound at most ``RESOLUTION`` of its scale, or, with
``--power``, every applicable mutant of the catalogue planted in this very load was caught. INCONCLUSIVE:
nothing is beyond a bound too coarse to have seen those faults (bfloat16 compute, a reference that moves by
percents): exit 3, and the result says which check would decide.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BOUNDS", "EXIT", "RESOLUTION", "Bound", "Comparison", "Routing", "VerifyResult", "format_result"]

# The smallest fault verify claims to see is one weight of one block off by 1%: scaled by 1.01, it moves that
# block's output by 3.5e-3 of its scale or more on each family's first case (tests/test_verify.py). A bound coarser than
# 1e-3 somewhere (bfloat16 compute: its floor alone is 4e-3) could let such a fault through, so it cannot earn a
# PASS by itself: only ``--power``, planting the catalogue into this very load, can show that it would not.
RESOLUTION = 1e-3
EXIT = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}


@dataclass(frozen=True)
class Bound:
    """How the bound is derived for one compute dtype: ``max(factor x noise, floor)``, relative to scale.

    The converted model is always held to the reference in float32 on the same (rounded) weights; ``noise`` is
    how far the reference itself moves in ``noise_dtype`` (float64 above float32: its float32 rounding; bfloat16:
    what computing in bfloat16 does to it), on ``prefix`` tokens of the first sequence (None: every token).
    """

    noise_dtype: str
    factor: float
    floor: float
    prefix: int | None = 16


# float32: noise on every token (the same tokens the error is taken over). Over every family's check cases
# (stored as float32 and as bfloat16) and every upstream oracle, a correct conversion sits at most 1.7x its noise;
# the faintest fault of the catalogue planted by ``--power`` (a norm epsilon 1e-5 <-> 1e-6 on unit-scale
# activations) at 6.7x or more. 4x sits between them with room on both sides; the floor is 4 float32 ulps.
# bfloat16: the converted model's own bfloat16 rounding is what is measured, so the bound follows the reference's
# drift in bfloat16 (at most 3.7x in a correct conversion, MoE routing flips included); floor 1 bfloat16 ulp.
BOUNDS = {"float32": Bound("float64", factor=4.0, floor=5e-7, prefix=None),
          "bfloat16": Bound("bfloat16", factor=10.0, floor=4e-3, prefix=None)}


@dataclass
class Comparison:
    """The converted model against the reference at one point: a block's output, or the logits."""

    name: str
    max_abs: float
    scale: float  # max |reference| there
    cosine: float
    noise: float  # how far the reference itself moves in the noise dtype, relative to its scale
    bound: float  # relative: the smallest error this point could have seen
    where: tuple[int, int, int]  # (batch, position, channel or token id) of the largest error
    cast: float | None = None  # how far the declared cast alone moves the reference here, relative (information)

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
class Routing:
    """One mixture-of-experts block: how often the converted model picks the reference's top-k experts."""

    name: str
    tokens: int
    agree: int
    near_ties: int  # disagreements where the reference's k-th and (k+1)-th router logits are within its noise
    clear: int  # disagreements at a clear gap: a failure
    tie_gap: float  # the router-logit gap below which a choice counts as a near-tie

    @property
    def fraction(self) -> float:
        return self.agree / self.tokens if self.tokens else 1.0


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
    kl: float = math.nan  # mean per-token KL(reference || converted)
    kl_p95: float = math.nan
    blocks: list[Comparison] = field(default_factory=list)
    routing: list[Routing] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    # beyond a bound, but only at or after a block where routing flipped at a near-tie: rounding legitimately
    # sent tokens to other experts there, so nothing after it can be told apart from a fault (INCONCLUSIVE)
    unresolved: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rounding: str = ""  # what the declared cast rounds ("" when the conversion keeps the source's dtypes)
    power: dict[str, Any] | None = None  # verify --power: harness.parity.power.Power.as_dict()
    seconds: float = 0.0
    peak_rss_gib: float = 0.0
    diagnosis: str | None = None  # on failure: the sub-module that disagrees (harness.parity.localise)

    @property
    def resolution(self) -> float:
        """The coarsest bound of the run: the smallest relative error it was sure to see at every point."""
        return max((c.bound for c in self.compared), default=math.inf)

    @property
    def compared(self) -> list[Comparison]:
        return [*self.blocks, *([self.logits] if self.logits else [])]

    @property
    def verdict(self) -> str:
        if self.logits is None or self.violations:
            return "FAIL"
        if self.unresolved:
            return "INCONCLUSIVE"
        if self.measured_power:  # what this run was measured to catch decides, whatever its bound's size
            return "PASS" if self.power["applicable"] and not self.power["survivors"] else "INCONCLUSIVE"
        return "PASS" if self.resolution <= RESOLUTION else "INCONCLUSIVE"

    @property
    def measured_power(self) -> bool:
        return self.power is not None and self.power.get("error") is None

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"

    @property
    def first_divergent(self) -> str | None:
        """The first block whose output is beyond its bound, as the checkpoint keys name it."""
        return next((b.name for b in self.blocks if not b.passed), None)

    def undecided(self) -> str:
        """Why an INCONCLUSIVE run decided nothing, and what would decide."""
        if self.unresolved:
            flips = sum(r.near_ties for r in self.routing)
            return (f"INCONCLUSIVE: {'; '.join(self.unresolved)}; but {flips} token(s) went to other experts at "
                    f"near-ties of the reference's router before that point (rounding, not a fault), so that "
                    f"divergence proves nothing either way; rerun with --compute-dtype float32 to decide")
        if self.measured_power:
            survivors = ", ".join(self.power["survivors"]) or "none applicable"
            return (f"INCONCLUSIVE: nothing is beyond its bound, but these planted faults were not caught either: "
                    f"{survivors}; rerun with --compute-dtype float32 (and --power) to decide")
        coarse = max(self.compared, key=lambda c: c.bound)
        return (f"INCONCLUSIVE: nothing is beyond its bound, but the bound at {coarse.name} is {coarse.bound:.1e} of "
                f"its scale, coarser than the {RESOLUTION:.0e} the catalogue's smallest faults need; rerun with "
                f"--compute-dtype float32 to decide, or add --power to measure what this run can see")

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``, each comparison with its relative error and verdict."""
        out = asdict(self)
        for key, comp in [("logits", self.logits)] + [(i, b) for i, b in enumerate(self.blocks)]:
            if comp is not None:
                row = out["logits"] if key == "logits" else out["blocks"][key]
                row.update(rel=comp.rel, margin=comp.margin if comp.rel else None, passed=comp.passed)
        for row, r in zip(out["routing"], self.routing, strict=True):
            row["fraction"] = r.fraction
        return out | {"passed": self.passed, "verdict": self.verdict, "resolution": self.resolution,
                      "first_divergent": self.first_divergent}


def format_result(r: VerifyResult) -> str:
    """The terminal report: one row per block, then the logits, how the bound was set, and the verdict."""
    b = BOUNDS[r.compute_dtype]
    noise_on = f"{b.prefix} tokens of the first sequence" if b.prefix else "every token"
    cast = any(c.cast is not None for c in r.compared)
    lines = [f"inputs: {' x '.join(map(str, r.tokens_shape))} {r.inputs}; compute {r.compute_dtype} on {r.device}",
             f"bound: max({b.factor:g} x noise, {b.floor:g}) relative to scale, against the reference in float32; "
             f"noise = how far the reference itself moves in {b.noise_dtype} on {noise_on}"]
    if r.rounding:
        lines.append(f"declared cast: the reference reads the source rounded as the conversion stores it "
                     f"({r.rounding}); 'cast' = what that rounding alone moves (information, not the verdict)")
    lines += ["", _ROW.format("", "max abs", "scale", "rel", "noise", "bound", "margin", "cosine",
                              "cast" if cast else "", "")]
    for c in r.compared:
        lines.append(_ROW.format(c.name, f"{c.max_abs:.2e}", f"{c.scale:.3g}", f"{c.rel:.1e}", f"{c.noise:.1e}",
                                 f"{c.bound:.1e}", f"{c.margin:.1f}x", f"{c.cosine:.8f}",
                                 f"{c.cast:.1e}" if c.cast is not None else "", "ok" if c.passed else "FAIL"))
    if r.logits:
        lines.append(f"logits: top-1 agreement {r.top1:.3f}, KL mean {r.kl:.1e} / p95 {r.kl_p95:.1e}; largest error "
                     f"at batch {r.logits.where[0]}, position {r.logits.where[1]}, token {r.logits.where[2]}")
    for m in r.routing:
        lines.append(f"routing {m.name}: top-k experts agree on {m.agree}/{m.tokens} tokens ({m.fraction:.1%}); "
                     f"{m.near_ties} near-tie flip(s) (gap < {m.tie_gap:.1e}), {m.clear} at a clear gap")
    if r.power is not None and r.power.get("error"):
        lines.append(f"power: not measured: {r.power['error']}")
    elif r.power is not None:
        p = r.power
        smallest = f", smallest kill margin {p['smallest_margin']:.1f}x" if p.get("smallest_margin") else ""
        lines.append(f"power: {p['killed']}/{p['applicable']} applicable mutants of the catalogue caught when planted "
                     f"into {', '.join(p['units'])}{smallest}")
    lines += [""] + [f"note: {n}" for n in r.notes]
    verdict = r.verdict
    if verdict == "PASS":
        worst = min(c.margin for c in r.compared)
        lines.append(f"PASS: logits within {r.logits.rel:.2g} of their scale (bound {r.logits.bound:.2g}); every "
                     f"block within its bound; smallest margin {worst:.1f}x; could have seen any error above "
                     f"{r.resolution:.1e} of the scale at every point")
    elif verdict == "INCONCLUSIVE":
        lines.append(r.undecided())
    else:
        lines += [f"FAIL: {v}" for v in r.violations]
        lines += [f"diagnosis: {r.diagnosis}"] if r.diagnosis else []
    lines.append(f"{r.seconds:.1f}s, peak RSS {r.peak_rss_gib:.2f} GiB")
    return "\n".join(lines)


_ROW = "{:<22} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>11} {:>8}  {}"
