"""Mixture-of-experts routing agreement: does the converted model send each token to the reference's experts?

A block's output error alone can hide a router fault behind the experts' similarity, and a correct conversion
can flip an expert where the reference itself nearly ties. So per MoE block: the fraction of tokens whose top-k
expert set matches the reference's, and each disagreement classed by the reference's own gap between its k-th and
(k+1)-th router logit: below ``factor`` x how far the reference's router logits move in the noise run, a near-tie
(rounding may flip it: not a failure); above, a clear choice the converted model did not make (a failure).

The reference reports router logits through its probe as ``layers.N.<...>.router``; the converted model's router
is the sub-module of block N named ``gate`` whose output (or first output) has one column per expert, captured
with a forward hook while the block runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch

from harness.parity.streamed_model import StreamedModel
from harness.parity.verify_result import Routing

__all__ = ["Routers", "routing_agreement"]

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\..*router$")


class Routers:
    """Router logits of one verification, per block: the reference's, its noise run's and the converted model's."""

    def __init__(self, model: StreamedModel) -> None:
        cfg = model.model.config
        self.k = getattr(cfg, "num_experts_per_tok", None)
        self.experts = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None)
        self.modules: dict[int, str] = {}
        if self.k and self.experts:
            blocks = model.block_names
            for i, block in enumerate(blocks):
                found = [f"{block}.{n}" for n, _ in model.model.get_submodule(block).named_modules()
                         if n.rpartition(".")[2] == "gate"]
                if len(found) == 1:
                    self.modules[i] = found[0]
        self.model = model.model
        self.ref: dict[int, torch.Tensor] = {}
        self.noisy: dict[int, torch.Tensor] = {}
        self.got: dict[int, torch.Tensor] = {}

    @property
    def reference(self) -> Any:
        """The probe that keeps the reference's router logits (None where the model has no router)."""
        return (lambda points: _keep(points, self.ref)) if self.modules else None

    @property
    def noise(self) -> Any:
        return (lambda points: _keep(points, self.noisy)) if self.modules else None

    @contextmanager
    def converted(self) -> Iterator[None]:
        """Forward hooks on the converted model's routers, for the run inside the block."""
        def keep(i: int, _module: Any, _args: Any, out: Any) -> None:  # returns None: the output is left as is
            self.got.setdefault(i, _first(out).detach().float().cpu())

        handles = [self.model.get_submodule(path).register_forward_hook(partial(keep, i))
                   for i, path in self.modules.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def routing_agreement(routers: Routers, mask: torch.Tensor, factor: float) -> list[Routing]:
    """One :class:`Routing` per block where both sides reported router logits over the same tokens."""
    out = []
    keep = mask.flatten()
    for i in sorted(set(routers.ref) & set(routers.got)):
        ref, got = routers.ref[i].reshape(-1, routers.experts), routers.got[i].reshape(-1, routers.experts)
        if ref.shape != got.shape:
            continue
        noisy = routers.noisy.get(i)
        moved = (noisy.reshape(-1, routers.experts).double() - ref[: noisy.numel() // routers.experts].double()
                 ).abs().max().item() if noisy is not None else 0.0
        tie_gap = factor * moved
        ref, got = ref[keep], got[keep]
        top = ref.double().sort(dim=-1, descending=True).values
        gap = (top[:, routers.k - 1] - top[:, routers.k] if routers.experts > routers.k
               else torch.full_like(top[:, 0], torch.inf))
        same = (_chosen(ref, routers.k) == _chosen(got, routers.k)).all(-1)
        ties = (~same) & (gap <= tie_gap)
        out.append(Routing(f"{routers.modules[i]}", int(keep.sum()), int(same.sum()), int(ties.sum()),
                           int((~same & ~ties).sum()), tie_gap))
    return out


def _keep(points: dict[str, tuple[torch.Tensor, torch.Tensor]], into: dict[int, torch.Tensor]) -> None:
    for name, (_, out) in points.items():
        found = _LAYER.search(name)
        if found:
            into.setdefault(int(found.group(1)), out.detach().float().cpu())


def _chosen(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k expert indices of each token, sorted: the set, comparable row by row."""
    return logits.topk(k, dim=-1).indices.sort(-1).values


def _first(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else next(o for o in out if isinstance(o, torch.Tensor))
