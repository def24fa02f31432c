"""``verify --power``: how much of the mutation catalogue this very verification catches, on the real checkpoint.

A bound is only worth what it can see. Each mutant of the family's catalogue is planted, as ``mutate`` plants it
(editing the config and the tensor stream, never a file), into the converted directory's own first blocks,
embeddings, final norm and head, read as stored; the planted units run as a transformers model of that many
blocks whose head is fed the reference's last hidden state (so the head is judged on the true input, as the full
model's would be). The mutant is *caught* when a block's output or the logits move beyond the bound this
verification holds them to, or when the planted model does not load or run; *not applicable* when it changes
nothing in those units. The cost is a few blocks per mutant, not a full run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from harness.mapping.conversion import Converted, SourceCheckpoint
from harness.mapping.family import Family
from harness.mutation.planting import Mutable, about
from harness.mutation.runner import mutants_for, plant
from harness.parity.streamed_model import StreamedModel
from harness.parity.verify_result import VerifyResult

__all__ = ["Power", "measure_power"]


@dataclass
class Power:
    """Per mutant: caught or not, by what margin (error / bound), or why it could not be planted here."""

    units: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # why nothing could be planted (the verdict then rests on the bounds alone)

    @property
    def applicable(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["applicable"]]

    def as_dict(self) -> dict[str, Any]:
        margins = [r["margin"] for r in self.applicable if r["killed"] and r["margin"] is not None]
        return {"units": self.units, "error": self.error, "applicable": len(self.applicable),
                "killed": sum(r["killed"] for r in self.applicable),
                "survivors": [r["mutant"] for r in self.applicable if not r["killed"]],
                "smallest_margin": min(margins) if margins else None, "mutants": self.rows}


def measure_power(family: Family, checkpoint: SourceCheckpoint, model: StreamedModel, tokens: torch.Tensor,
                  reference: tuple[torch.Tensor, list[torch.Tensor]], result: VerifyResult, blocks: int = 2) -> Power:
    """Plant every mutant of ``family``'s catalogue into the first ``blocks`` blocks and the outer units of
    ``model``; hold each to the bounds of ``result`` against ``reference`` (logits, hidden states)."""
    kept = [u for u in model.units if u.block is None or u.block < blocks]
    depth = sum(u.block is not None for u in kept)
    keys = [k for u in kept for k in u.keys]
    clean = Mutable(_config_dict(model), {k: model.read(k) for k in keys}, _restricted(family, checkpoint, keys),
                    dict(checkpoint.config))
    power = Power([u.path for u in kept])
    truth = [reference[0].float().cpu(), *[s.float().cpu() for s in reference[1][1: depth + 1]]]
    bounds = [result.logits.bound, *[b.bound for b in result.blocks[:depth]]]  # type: ignore[union-attr]
    last = reference[1][-1].float()
    baseline = _run(family, model, clean, depth, tokens, last)
    if isinstance(baseline, str) or not all(_rel(t, g) <= b for t, g, b in zip(truth, baseline, bounds, strict=True)):
        power.error = (f"the first {depth} block(s) and the head could not be checked apart: "
                       f"{baseline if isinstance(baseline, str) else 'unplanted, they already exceed a bound'}")
        return power
    for mutant in mutants_for(family):
        row: dict[str, Any] = {"mutant": mutant.__name__, "about": about(mutant), "applicable": False,
                               "killed": False, "margin": None, "where": None, "detail": ""}
        power.rows.append(row)
        try:
            m = plant(mutant, clean)
        except Exception as err:  # noqa: BLE001 - a mutant written for another layout: not applicable here
            row["detail"] = f"cannot be planted here: {type(err).__name__}: {err}"
            continue
        if m.same_as(clean):
            continue
        row["applicable"] = True
        outputs = _run(family, model, m, depth, tokens, last)
        if isinstance(outputs, str):
            row.update(killed=True, detail=outputs)
            continue
        ratios = [_rel(t, g) / b if g.shape == t.shape else math.inf
                  for t, g, b in zip(truth, outputs, bounds, strict=True)]
        worst = max(range(len(ratios)), key=ratios.__getitem__)
        row.update(killed=ratios[worst] > 1, margin=ratios[worst],
                   where="logits" if worst == 0 else model.block_names[worst - 1])
        added = set(m.tensors) - set(clean.tensors)
        if not row["killed"] and added and _only_adds(m, clean):  # GPT-2's attention buffers: loaded or dropped
            row.update(applicable=False, detail=f"adds only tensors the model absorbs on load (into its own buffers, "
                                                f"or dropped): {', '.join(sorted(added)[:2])}, ...")
    return power


def _run(family: Family, model: StreamedModel, m: Mutable, depth: int, tokens: torch.Tensor,
         last: torch.Tensor) -> list[torch.Tensor] | str:
    """Logits and block outputs of the planted units, the head fed ``last``; or why they did not run."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.for_model(**{k: v for k, v in m.config.items() if k != "transformers_version"})
        if config.num_hidden_layers != len(model.block_names):
            return f"{config.num_hidden_layers} blocks in the config, {len(model.block_names)} in the checkpoint"
        config.num_hidden_layers = depth
        for name, value in list(config.to_dict().items()):  # per-layer lists (layer_types) cut to the planted blocks
            if isinstance(value, list) and len(value) == len(model.block_names) and name != "architectures":
                setattr(config, name, value[:depth])
        tensors = {k: _as_stored(t, model.stored.get(k)) for k, t in m.tensors.items()}
        planted = StreamedModel(model.model_dir, device=str(model.device), dtype=model.dtype,
                                loading=family.loading, config=config, tensors=tensors)
        after = {"last block": False}
        handles = [planted.model.get_submodule(planted.block_names[-1]).register_forward_hook(
            lambda *_: after.update({"last block": True}))]
        handles += [planted.model.get_submodule(u.path).register_forward_pre_hook(partial(_feed, last, after),
                                                                                  with_kwargs=True)
                    for u in planted.units if u.block is None]
        try:
            out = planted(tokens)
        finally:
            for handle in handles:
                handle.remove()
    except Exception as err:  # noqa: BLE001 - a planted model that does not load or run is caught
        return f"does not load or run: {type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"
    return [out.logits, *out.block_states[:depth]]


def _feed(state: torch.Tensor, after: dict[str, bool], module: Any, args: tuple[Any, ...],
          kwargs: dict[str, Any]) -> Any:
    """In the first unit to run after the last block (the final norm, or the head), replace the first floating
    input with ``state``: the reference's last hidden state."""
    if not after["last block"]:
        return None
    after["last block"] = False
    for i, a in enumerate(args):
        if torch.is_tensor(a) and a.is_floating_point():
            return (*args[:i], state.to(a.device, a.dtype), *args[i + 1:]), kwargs
    key = next(k for k, v in kwargs.items() if torch.is_tensor(v) and v.is_floating_point())
    return args, {**kwargs, key: state.to(kwargs[key].device, kwargs[key].dtype)}


def _only_adds(m: Mutable, clean: Mutable) -> bool:
    """The planted conversion is the clean one plus some tensors: same config, every clean tensor unchanged."""
    kept = Mutable(m.config, {k: t for k, t in m.tensors.items() if k in clean.tensors}, m.converted)
    return kept.same_as(clean)


def _config_dict(model: StreamedModel) -> dict[str, Any]:
    import json

    return json.loads((model.model_dir / "config.json").read_text())


def _restricted(family: Family, checkpoint: SourceCheckpoint, keys: list[str]) -> Converted:
    """convparity's own conversion of the source, only the steps that produce the planted units' tensors (the
    mutants that re-run a rule read the source through it)."""
    converted = family.convert(checkpoint)
    wanted = set(keys)
    steps = [s for s in converted.steps if set(s.targets) <= wanted]
    return Converted(converted.config, steps, converted.source, converted.dims, converted.notes)


def _as_stored(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """A planted tensor in the dtype its key is stored in, as the converter would have written it."""
    return t.to(dtype).contiguous() if dtype is not None and t.is_floating_point() and dtype.is_floating_point else t


def _rel(truth: torch.Tensor, got: torch.Tensor) -> float:
    if truth.shape != got.shape:
        return math.inf
    rel = (truth.double() - got.double()).abs().max().item() / (truth.abs().max().item() or 1.0)
    return rel if rel == rel else math.inf  # NaN: as far off as it gets
