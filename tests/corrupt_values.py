"""Corruptions of values: config fields of the wrong type or value, options, and tensors removed, renamed,
reshaped, cast or made non-finite (written back through the family's own ``write``)."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness.io.tensor_store import TensorStore
from harness.mapping.conversion import SourceCheckpoint
from tests.corruption_tools import Apply, Broken, get_field, rewrite, set_field, short
from tests.pristine import Pristine

ODD_DTYPES = (torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool, torch.uint16, torch.float8_e4m3fn,
              torch.float8_e5m2, torch.complex64)
WRONG_VALUES: tuple[Any, ...] = (0, -1, -2, float("nan"), float("inf"), -float("inf"), 1.5, 10**12, 10**400,
                                 "thirty-two", "1e-05", True, None)


def config_value(kind: str, values: Callable[[Any, random.Random], Any]) -> Apply:
    def apply(src: Path, p: Pristine, rng: random.Random) -> Broken:
        name = rng.choice(p.carried)
        value = values(get_field(p.checkpoint.config, name), rng)
        config = set_field(p.checkpoint.config, name, value)
        rewrite(src, p, SourceCheckpoint(config, p.checkpoint.tensors, p.checkpoint.layout))
        return Broken(kind, f"{name} = {short(value)}", may_convert=p.may_hold(name, value))
    return apply


def wrong_type(value: Any, rng: random.Random) -> Any:
    if isinstance(value, bool):
        return rng.choice([1, 0, "false", "true", None, [value]])
    return rng.choice([[value], {"value": value}, str(value), True, None, [] if value else [0]])


def wrong_value(value: Any, rng: random.Random) -> Any:
    return rng.choice(WRONG_VALUES)


def option_value(src: Path, p: Pristine, rng: random.Random) -> Broken:
    flag, spec = rng.choice(sorted(p.options.items()))
    dest = flag.lstrip("-").replace("-", "_")
    value = rng.choice(spec["choices"]) if "choices" in spec else rng.choice([0, -1, -7, 10**12])
    return Broken("option-value", f"{flag} {value}", options={dest: value}, flags=[f"{flag}={value}"],
                  may_convert=p.may_hold(dest, value) if "choices" not in spec else "a valid choice")


# ---- tensors ---------------------------------------------------------------------------------------------------

def tensor_kind(kind: str, change: Callable[[dict[str, torch.Tensor], str, Pristine, random.Random],
                                            tuple[str, str | None]],
                 options: dict[str, Any] | None = None, flags: tuple[str, ...] = ()) -> Apply:
    def apply(src: Path, p: Pristine, rng: random.Random) -> Broken:
        tensors = {k: p.checkpoint.tensors[k].clone() for k in p.checkpoint.tensors}
        name = rng.choice(sorted(k for k in tensors if _eligible(kind, tensors[k])))
        what, may_convert = change(tensors, name, p, rng)
        rewrite(src, p, SourceCheckpoint(p.checkpoint.config, TensorStore.from_dict(tensors), p.checkpoint.layout))
        return Broken(kind, f"{name}: {what}", options=dict(options or {}), flags=list(flags), may_convert=may_convert)
    return apply


def _eligible(kind: str, t: torch.Tensor) -> bool:
    if kind.startswith("tensor-nonfinite"):
        return t.is_floating_point() and t.numel() > 0
    if kind == "tensor-reshaped":
        return t.numel() > 0
    return True


def removed(tensors: dict[str, torch.Tensor], name: str, p: Pristine, rng: random.Random) -> tuple[str, str | None]:
    del tensors[name]
    return "removed", p.dropped(name)


def renamed(tensors: dict[str, torch.Tensor], name: str, p: Pristine, rng: random.Random) -> tuple[str, str | None]:
    numbers = list(re.finditer(r"\d+", name))
    how = rng.choice(["suffix", "prefix", "upper"] + (["number"] * 2 if numbers else []))
    if how == "number":
        m = rng.choice(numbers)
        new = name[:m.start()] + str(int(m.group()) + rng.choice([1, 2, 10**9])) + name[m.end():]
    else:
        new = {"suffix": name + "_old", "prefix": "module." + name, "upper": name.upper()}[how]
    if new == name:
        new = name + "_old"
    tensors[new] = tensors.pop(name)
    both_dropped = p.dropped(name) and p.dropped(new)
    return f"renamed to {new}", both_dropped


def reshaped(tensors: dict[str, torch.Tensor], name: str, p: Pristine, rng: random.Random) -> tuple[str, str | None]:
    t = tensors[name]
    options = [t.reshape(-1), t.unsqueeze(0), t.reshape(-1, 1)]
    if t.shape and t.shape[0] > 1:
        options.append(t[:-1])
    if t.dim() == 2 and t.shape[0] != t.shape[1]:
        options.append(t.t())
    options = [o for o in options if o.shape != t.shape]
    tensors[name] = rng.choice(options).contiguous().clone()
    return f"{tuple(t.shape)} -> {tuple(tensors[name].shape)}", p.dropped(name)


def odd_dtype(tensors: dict[str, torch.Tensor], name: str, p: Pristine, rng: random.Random) -> tuple[str, str | None]:
    dtype = rng.choice([d for d in ODD_DTYPES if d != tensors[name].dtype])
    tensors[name] = tensors[name].to(dtype) if not tensors[name].is_complex() else tensors[name].real.to(dtype)
    return f"cast to {dtype}", p.dropped(name)


def float_dtype(tensors: dict[str, torch.Tensor], name: str, p: Pristine, rng: random.Random
                 ) -> tuple[str, str | None]:
    dtype = rng.choice([torch.float64, torch.float16, torch.bfloat16])
    integer = not tensors[name].is_floating_point() and not tensors[name].is_complex()
    tensors[name] = tensors[name].to(dtype) if not tensors[name].is_complex() else tensors[name].real.to(dtype)
    why = "a weight in another floating dtype converts as stored (cast with --dtype)" if not integer else None
    return f"cast to {dtype}", p.dropped(name) or why


def nonfinite(tensors: dict[str, torch.Tensor], name: str, p: Pristine, rng: random.Random
               ) -> tuple[str, str | None]:
    flat = tensors[name].reshape(-1)
    picks = [rng.randrange(flat.numel()) for _ in range(rng.randint(1, 3))]
    for i in picks:
        flat[i] = rng.choice([math.nan, math.inf, -math.inf])
    return f"non-finite at {picks}", p.dropped(name) or NONFINITE_MAY_CONVERT


NONFINITE_MAY_CONVERT = "only if the converted model holds no NaN/Inf: the values sat in rows or buffers the " \
                        "conversion leaves out (vocabulary padding, a dropped cache)"
ALLOWED_MAY_CONVERT = "--allow-nonfinite converts them as they are, with a warning"


def nonfinite_allowed(tensors: dict[str, torch.Tensor], name: str, p: Pristine, rng: random.Random
                       ) -> tuple[str, str | None]:
    return nonfinite(tensors, name, p, rng)[0], ALLOWED_MAY_CONVERT


def extra(tensors: dict[str, torch.Tensor], name: str, p: Pristine, rng: random.Random) -> tuple[str, str | None]:
    tensors["unexpected.extra.weight"] = torch.ones(3, 4)
    return "an extra tensor unexpected.extra.weight", None
