"""The oracle part of a family: the original architecture's forward pass, its named points, and how the converted
model must be loaded to be compared with it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.lazy import lazy_function
from harness.mapping.points import Point

__all__ = ["Oracle", "Reference"]


class Oracle(Protocol):
    """``reference(tensors, config, tokens, *, hidden_states=False, probe=None)`` is the original forward pass (never
    transformers); ``points`` pair its named points with transformers sub-modules (diagnosis); ``loading`` wraps
    ``from_pretrained`` where transformers would otherwise alter loaded weights (RWKV's rescale)."""

    points: tuple[Point, ...]
    loading: Callable[[Mapping[str, Any]], AbstractContextManager[None]] | None

    def reference(self, tensors: Mapping[str, Any], config: Mapping[str, Any], tokens: Any, *,
                  hidden_states: bool = False, probe: Callable[[dict[str, Any]], None] | None = None) -> Any:
        """Float32 logits ``[B, T, V]``, with the hidden states when asked."""


@dataclass(frozen=True)
class Reference:
    """An :class:`Oracle` whose forward pass is ``module.forward``, imported when it first runs (it needs torch).

    >>> Reference("converters.mixtral.reference").reference.__name__
    'forward'
    """

    module: str
    points: Sequence[Point] = ()
    loading: Callable[[Mapping[str, Any]], AbstractContextManager[None]] | None = None
    reference: Callable[..., Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", tuple(self.points))
        object.__setattr__(self, "reference", lazy_function(self.module, "forward"))
