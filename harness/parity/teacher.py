"""Teacher forcing: each sub-module of the converted model runs on the reference's own input at its point.

Forward pre-hooks replace a sub-module's input (its first floating tensor argument) with the reference's input at
the matching point; forward hooks capture its output. Because every sub-module starts from the true input, an
error made in one does not flow into the next: only the broken sub-module disagrees with the reference. Nested
sites (an output projection inside an attention) run in separate passes, one nesting depth at a time, so that an
outer sub-module is judged on its own inner computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from harness.parity.points import Recording, Site

__all__ = ["Reading", "feeds", "teacher_force"]


@dataclass
class Reading:
    """One site under teacher forcing: ``rel`` = max |reference - converted| / max |reference| at its output.

    ``status``: ``ok`` or ``diverged`` (against ``bound``), ``shape`` (outputs of different shapes), ``raised``
    (the sub-module raised on the reference's input), ``unseen`` (never called: an earlier one raised).
    """

    site: Site
    status: str
    rel: float | None = None
    diff: torch.Tensor | None = None  # |reference - converted|, shaped (-1, T, C)
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status not in ("ok", "unseen")


def teacher_force(model: Any, tokens: torch.Tensor, recording: Recording, sites: list[Site], bound: float
                  ) -> list[Reading]:
    """A :class:`Reading` per site, in the order of ``sites``.

    >>> # readings = teacher_force(model, tokens, record(family, source, tokens), sites(points, rec), 1e-4)
    """
    outputs: dict[str, torch.Tensor] = {}
    raised: dict[str, str] = {}
    for depth in sorted({s.depth for s in sites}):
        level = [s for s in sites if s.depth == depth]
        active: list[str] = []
        handles = []
        for site in level:
            module = model.get_submodule(site.module)
            handles.append(module.register_forward_pre_hook(partial(_feed, recording[site.name][0], site.name,
                                                                    active), with_kwargs=True))
            handles.append(module.register_forward_hook(partial(_catch, site.name, outputs, active)))
        try:
            with torch.no_grad():
                model(tokens)
        except Exception as err:  # noqa: BLE001 - the sub-module that raised is the finding
            if active:
                raised[active[-1]] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"
        finally:
            for handle in handles:
                handle.remove()
    return [_reading(site, recording[site.name][1], outputs.get(site.name), raised.get(site.name), bound)
            for site in sites]


def feeds(model: Any, module: str) -> list[str]:
    """The converted tensors a sub-module reads: its parameters' names, and every name tied to them."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    inside = [id(p) for n, p in model.named_parameters(remove_duplicate=False) if n.startswith(module + ".")]
    return sorted({n for key in inside for n in names[key]})


def _reading(site: Site, ref: torch.Tensor, got: torch.Tensor | None, raised: str | None, bound: float) -> Reading:
    if raised is not None:
        return Reading(site, "raised", detail=raised)
    if got is None:
        return Reading(site, "unseen")
    got = got.float().cpu()
    if got.shape != ref.shape:
        return Reading(site, "shape", detail=f"output {tuple(got.shape)}, reference {tuple(ref.shape)}")
    diff = (ref - got).abs()
    rel = diff.max().item() / (ref.abs().max().item() or 1.0)
    rel = rel if rel == rel else float("inf")  # NaN: as far off as it gets
    return Reading(site, "diverged" if rel > bound else "ok", rel, diff.reshape(-1, *diff.shape[-2:]))


def _feed(inp: torch.Tensor, name: str, active: list[str], module: Any, args: tuple[Any, ...],
          kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    active.append(name)
    if not inp.is_floating_point():  # token or position ids: the model's own are the reference's
        return args, kwargs
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return (*args[:i], inp.to(a.device, a.dtype).contiguous(), *args[i + 1:]), kwargs
    key = next(k for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    return args, {**kwargs, key: inp.to(kwargs[key].device, kwargs[key].dtype).contiguous()}


def _catch(name: str, outputs: dict[str, torch.Tensor], active: list[str], module: Any, args: Any, out: Any) -> None:
    active.remove(name)
    first = out if isinstance(out, torch.Tensor) else next(o for o in out if isinstance(o, torch.Tensor))
    outputs.setdefault(name, first.detach())
