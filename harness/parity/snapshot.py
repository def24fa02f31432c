"""Golden snapshots of what a converter produces, with a strict lifecycle and readable diffs.

A snapshot holds the converted config, every tensor's name, shape, dtype and content hash, and a digest of
the logits the converted model gives on fixed tokens. ``golden/<family>/<case>.json`` is the reviewed truth:

- missing golden: it is written and the check fails (a new golden is always a reviewed diff);
- mismatch: ``<case>.obtained.json`` is written beside it and the check fails with a field-by-field diff;
- ``update=True`` (``--update-golden``): the golden is rewritten and the check still fails.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from harness.family.family import Family
from harness.parity.check import RoundTrip
from harness.parity.metrics import tolerance_for
from harness.parity.parity import load_converted, make_tokens

__all__ = ["LOGITS_SAMPLE", "case_snapshot", "check_snapshot", "diff_snapshots", "dumps", "take_snapshot"]

LOGITS_SAMPLE = 64  # evenly spaced logits kept in the digest


def take_snapshot(config: dict[str, Any], tensors: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, Any]:
    """The snapshot of one converted model: config, tensor manifest, logits digest.

    >>> s = take_snapshot({"a": 1}, {"w": torch.zeros(2)}, torch.zeros(1, 2, 3))
    >>> s["tensors"]["w"]
    'float32 [2] sha256:af5570f5a1810b7a'
    """
    flat = logits.detach().double().flatten()
    index = torch.linspace(0, flat.numel() - 1, min(LOGITS_SAMPLE, flat.numel())).round().long()
    return {
        "config": config,
        "tensors": {name: f"{str(t.dtype)[6:]} {list(t.shape)} sha256:{_hash(t)}"
                    for name, t in sorted(tensors.items())},
        "logits": {"shape": list(logits.shape), "mean_abs": round(flat.abs().mean().item(), 7),
                   "sample": [round(v, 7) for v in flat[index].tolist()]},
    }


def case_snapshot(family: Family, rt: RoundTrip) -> dict[str, Any]:
    """The snapshot of a round-tripped case, read from the converted directory as a user gets it."""
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(rt.model_dir.glob("*.safetensors")):
        tensors |= load_file(shard)
    model = load_converted(rt.model_dir, "cpu", "float32", family)
    with torch.no_grad():
        logits = model(make_tokens(rt.vocab_size)).logits
    return take_snapshot(json.loads((rt.model_dir / "config.json").read_text()), tensors, logits)


def dumps(snapshot: dict[str, Any]) -> str:
    """JSON with sorted keys and one tensor per line, so that a diff in review reads tensor by tensor."""
    return json.dumps(snapshot, indent=2, sort_keys=True) + "\n"


def diff_snapshots(expected: dict[str, Any], obtained: dict[str, Any]) -> list[str]:
    """Readable differences: config fields, tensors added, removed or changed, logits beyond fp32 tolerance."""
    out = []
    exp_cfg, got_cfg = expected.get("config", {}), obtained.get("config", {})
    for key in sorted(exp_cfg.keys() | got_cfg.keys()):
        if exp_cfg.get(key, "<absent>") != got_cfg.get(key, "<absent>"):
            out.append(f"config.{key}: golden {exp_cfg.get(key, '<absent>')!r}, now {got_cfg.get(key, '<absent>')!r}")
    exp_t, got_t = expected.get("tensors", {}), obtained.get("tensors", {})
    out += [f"tensor removed: {k} ({exp_t[k]})" for k in sorted(exp_t.keys() - got_t.keys())]
    out += [f"tensor added: {k} ({got_t[k]})" for k in sorted(got_t.keys() - exp_t.keys())]
    out += [f"tensor changed: {k}: golden {exp_t[k]}, now {got_t[k]}"
            for k in sorted(exp_t.keys() & got_t.keys()) if exp_t[k] != got_t[k]]
    return out + _diff_logits(expected.get("logits", {}), obtained.get("logits", {}))


def check_snapshot(obtained: dict[str, Any], golden: Path, update: bool = False) -> list[str]:
    """Run the lifecycle for one golden file; returns the reasons to fail (empty: it matches)."""
    side = golden.with_suffix(".obtained.json")
    if update or not golden.exists():
        existed = golden.exists()
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(dumps(obtained))
        side.unlink(missing_ok=True)
        verb = "rewrote" if existed else "golden was missing; wrote"
        return [f"{verb} {golden}: review the diff and commit it, then rerun without --update-golden"]
    differences = diff_snapshots(json.loads(golden.read_text()), obtained)
    if differences:
        side.write_text(dumps(obtained))
        return differences + [f"obtained snapshot written to {side}; if the change is intended, rerun with "
                              f"--update-golden and commit the new golden"]
    side.unlink(missing_ok=True)
    return []


def _hash(t: torch.Tensor) -> str:
    data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(data.tobytes()).hexdigest()[:16]


def _diff_logits(expected: dict[str, Any], obtained: dict[str, Any]) -> list[str]:
    if expected.get("shape") != obtained.get("shape"):
        return [f"logits shape: golden {expected.get('shape')}, now {obtained.get('shape')}"]
    a = torch.tensor(expected.get("sample", []), dtype=torch.float64)
    b = torch.tensor(obtained.get("sample", []), dtype=torch.float64)
    if a.shape != b.shape:
        return [f"logits sample size: golden {a.numel()}, now {b.numel()}"]
    atol = tolerance_for("cpu", "float32").max_abs
    diff = (a - b).abs()
    bad = (diff > atol).nonzero().flatten().tolist()
    if not bad:
        return []
    rel = diff / a.abs().clamp_min(1e-12)
    return [f"logits: {len(bad)} of {a.numel()} sampled values differ by more than {atol:g}; max abs "
            f"{diff.max().item():.3g}, mean abs {diff.mean().item():.3g}, max rel {rel.max().item():.3g}; "
            f"first differing sample indices {bad[:5]}"]
