"""What is wrong with the tensors that feed a disagreeing sub-module, seen against convparity's own conversion.

Diagnosis names the sub-module that disagrees and the converted tensors that feed it. Where convparity can
convert the same source itself (a tiny case's clean conversion; for ``verify``, the family's own rules run on
just those tensors of the real source), each fed tensor is compared with the one convparity makes and the
difference is said in words a converter's author acts on: written transposed, rows reordered (a rotary
permutation, heads in another order), scaled, offset, another shape, or other values. A tensor the conversion
under test stores in a narrower dtype is compared with convparity's rounded the same way, so a correct cast is no
difference. Names convparity does not write (another converter's key names) are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch

from harness.family.family import Family
from harness.mapping.conversion import SourceCheckpoint
from harness.parity.checkpoint_files import read_tensors, weight_files

__all__ = ["Difference", "compare", "differences", "explain", "expected_tensors", "feeding_keys", "relation",
           "stored_tensors"]


class Difference(NamedTuple):
    """How a tensor differs: ``kind`` (transposed, rows reordered, columns reordered, scaled, offset, shape,
    values), the same for every instance of one bug, and ``text``, the words a diagnosis line shows."""

    kind: str
    text: str


def relation(expected: torch.Tensor, got: torch.Tensor) -> Difference | None:
    """How ``got`` differs from ``expected`` (rounded to ``got``'s dtype first), or None when it does not.

    >>> w = torch.arange(6.0).reshape(3, 2)
    >>> relation(w, w), relation(w, w.flip(0)).text, relation(w, w.t()).kind, relation(w, 2 * w).text
    (None, 'rows reordered (2 of 3 moved): a permutation such as the rotary one, or heads in another order', \
'transposed', 'scaled by 2')
    """
    e = expected.to(got.dtype) if expected.is_floating_point() and got.is_floating_point() else expected
    if e.shape != got.shape:
        turned = e.dim() == 2 and tuple(got.shape) == tuple(e.shape)[::-1] and torch.equal(e.t(), got)
        where = f"shape {tuple(got.shape)} where {tuple(e.shape)} belongs"
        return Difference("transposed", f"written transposed: {where}") if turned else Difference("shape", where)
    if torch.equal(e, got):
        return None
    if e.dim() == 2 and e.shape[0] == e.shape[1] and torch.equal(e.t(), got):
        return Difference("transposed", "written transposed (a square matrix: its shape cannot show it)")
    if (moved := _rows_moved(e, got)) is not None:
        return Difference("rows reordered", f"rows reordered ({moved} of {e.shape[0]} moved): a permutation such "
                                            "as the rotary one, or heads in another order")
    if e.dim() == 2 and (moved := _rows_moved(e.t(), got.t())) is not None:
        return Difference("columns reordered", f"columns reordered ({moved} of {e.shape[1]} moved)")
    return _affine(e, got)


def differences(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> dict[str, Difference]:
    """Name -> how it differs, for each name in both that differs."""
    found = {name: relation(expected[name], got[name]) for name in expected if name in got}
    return {name: how for name, how in found.items() if how is not None}


def compare(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> list[str]:
    """``name: how it differs`` for each name in both that differs."""
    return [f"{name}: {how.text}" for name, how in differences(expected, got).items()]


def explain(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], feeds: int | None = None) -> str:
    """One clause for a diagnosis line: which fed tensors differ from convparity's and how, or that none does;
    ``feeds``, how many tensors feed the sub-module, where some could not be compared (stored under other names).

    >>> w = torch.tensor([0.5, -0.25, 0.125])  # a norm weight
    >>> explain({"a": w}, {"a": w + 1})
    "against convparity's own conversion: a: offset by +1 (a norm's unit offset added or dropped)"
    >>> explain({"a": w}, {"a": w.bfloat16()})
    "its tensors are convparity's own, to the stored dtype: look at config.json or the model code"
    >>> explain({"a": w}, {"a": w}, feeds=3)
    "the 1 of its 3 tensors stored under convparity's names are convparity's own, to the stored dtype"
    """
    compared = sum(name in got for name in expected)
    if not compared:
        return ""
    differ = compare(expected, got)
    if differ:
        return "against convparity's own conversion: " + "; ".join(differ)
    if feeds is not None and feeds > compared:
        return (f"the {compared} of its {feeds} tensors stored under convparity's names are convparity's own, to "
                "the stored dtype")
    return "its tensors are convparity's own, to the stored dtype: look at config.json or the model code"


def feeding_keys(feeds: list[str], renamed: Mapping[str, str]) -> list[str]:
    """The checkpoint keys whose tensors load into the parameters ``feeds`` (``renamed``: checkpoint key -> the
    parameter it loads into; transformers renames some and fuses others, Mixtral's experts), with ``feeds``.

    >>> feeding_keys(["mlp.experts.gate_up_proj"], {"moe.experts.0.w1.weight": "mlp.experts.gate_up_proj"})
    ['mlp.experts.gate_up_proj', 'moe.experts.0.w1.weight']
    """
    return sorted(set(feeds) | {key for key, param in renamed.items() if param in feeds})


def stored_tensors(model_dir: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors of ``names`` as ``model_dir`` stores them (names it does not hold are left out)."""
    files, _ = weight_files(model_dir)
    return read_tensors(files, [n for n in names if n in files])


def expected_tensors(family: Family, source: SourceCheckpoint, names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors of ``names`` that convparity's own conversion of ``source`` makes, each step run only where it
    writes one of them (a real checkpoint is read for those steps alone)."""
    converted, wanted, out = family.convert(source), set(names), {}
    for step in converted.steps:
        if wanted.intersection(step.targets):
            outputs = step.run([converted.source[k] for k in step.sources], converted.dims)
            out |= {t: o for t, o in zip(step.targets, outputs, strict=True) if t in wanted}
    return out


def _rows_moved(e: torch.Tensor, got: torch.Tensor) -> int | None:
    """How many rows of ``got`` are not where ``e`` has them, when ``got`` holds exactly ``e``'s rows; else None."""
    if e.dim() == 0 or e.shape[0] < 2:
        return None
    a, b = e.reshape(e.shape[0], -1), got.reshape(got.shape[0], -1)
    probe = torch.randn(a.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    order_a, order_b = (a.double().nan_to_num() @ probe).argsort(), (b.double().nan_to_num() @ probe).argsort()
    if not torch.equal(a[order_a], b[order_b]):
        return None
    return int((a != b).any(dim=1).sum())


def _affine(e: torch.Tensor, got: torch.Tensor) -> Difference:
    """``got`` as a scaled or offset ``e`` where it is one, to ``got``'s rounding; else how far apart they are."""
    if not got.is_floating_point():
        return Difference("values", "other values")
    x, y = e.double(), got.double()
    scale = max(x.abs().max().item(), 1e-30)
    tol = 4 * torch.finfo(got.dtype).eps * scale  # what rounding to got's dtype may move

    def close(guess: torch.Tensor) -> bool:
        return bool((y - guess).abs().max() <= tol)

    factor = (x * y).sum().item() / max((x * x).sum().item(), 1e-300)
    if close(factor * x):
        return Difference("scaled", f"scaled by {factor:.4g}")
    offset = (y - x).mean().item()
    if close(x + offset):
        unit = " (a norm's unit offset added or dropped)" if abs(abs(offset) - 1) < 1e-3 else ""
        return Difference("offset", f"offset by {offset:+.4g}{unit}")
    return Difference("values", f"other values (largest difference {(y - x).abs().max().item() / scale:.2g} of "
                                "its scale)")
