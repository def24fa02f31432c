"""The family contract: one typed object per ``converters/<family>`` that the harness knows the family by.

Each ``converters/<family>/__init__.py`` exports ``FAMILY = Family(...)``. Its fields are everything the
harness, the CLI, the tests and the mutation runner may use; nothing reaches into a family module by name.
The registry (``harness.registry``) type-checks every field at discovery.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.mapping.config_map import ConfigMap
from harness.mapping.conversion import Converted, SourceCheckpoint
from harness.mapping.keymap import Layouts
from harness.mapping.points import Point

if TYPE_CHECKING:  # annotations only: the mutation layer sits above this one and imports it
    from harness.mutation.planting import Mutant

__all__ = ["Case", "Family", "MutationCase", "Option"]


@dataclass(frozen=True)
class Case:
    """A tiny source model that exercises one thing; ``about`` says what.

    ``config`` overrides the family's tiny defaults (passed to ``tiny``), ``container`` picks the on-disk
    form ``write`` produces, ``layout`` the key layout ``tiny`` draws.
    """

    about: str
    config: dict[str, Any]
    container: str = "default"
    layout: str = "default"


@dataclass(frozen=True)
class MutationCase(Case):
    """A mutation-only case: a ``Case`` whose tiny source has some tensors scaled (``scale``: glob -> factor),
    for bugs that only show on realistic magnitudes (a norm epsilon next to small activations)."""

    scale: dict[str, float] = field(default_factory=dict)


# A conversion option as argparse takes it: ``{"--vocab-size": {"type": int, "help": ...}}``; its value reaches
# ``read`` as the keyword of the flag's name (``vocab_size``).
Option = Mapping[str, Any]


@dataclass(frozen=True)
class Family:
    """Everything about one family the rest of the project may use.

    ``read(path, config=None, **options)`` opens a source as upstream ships it; ``write(checkpoint, path,
    container)`` writes one in that layout; ``tiny(seed, layout, **config)`` draws a random one and
    ``shapes(config, layout)`` says its tensor shapes. ``convert``/``invert`` are the converter and its exact
    inverse, driven by the ``config`` and ``keys`` tables. ``reference(tensors, config, tokens,
    hidden_states=False)`` is the original architecture's forward pass (never transformers). ``loading`` wraps
    ``from_pretrained`` where transformers would otherwise alter loaded weights (RWKV's rescale).
    """

    name: str
    about: str
    read: Callable[..., SourceCheckpoint]
    write: Callable[..., None]
    tiny: Callable[..., SourceCheckpoint]
    shapes: Callable[..., dict[str, tuple[int, ...]]]
    config: ConfigMap
    keys: Layouts
    convert: Callable[[SourceCheckpoint], Converted]
    invert: Callable[[dict[str, Any], dict[str, Any]], SourceCheckpoint]
    reference: Callable[..., Any]
    cases: Mapping[str, Case]
    sizes: Mapping[str, Mapping[str, Any]]
    hub_files: tuple[str, ...]
    options: Mapping[str, Option] = field(default_factory=dict)
    upstream_options: tuple[str, ...] = ()  # options that are upstream config fields (tests read them back)
    loading: Callable[[Mapping[str, Any]], AbstractContextManager[None]] | None = None
    mutants: tuple[Mutant, ...] = ()
    mutation_cases: Mapping[str, MutationCase] = field(default_factory=dict)
    points: tuple[Point, ...] = ()  # named points of the reference and their transformers modules (diagnosis)
    # what upstream conversion scripts take as flags, from a source (``--converter`` templates): {"num_shards": "2"}
    facts: Callable[[SourceCheckpoint], Mapping[str, str]] | None = None

    def option_names(self) -> list[str]:
        """The keyword each option reaches ``read`` as (``--vocab-size`` -> ``vocab_size``)."""
        return [flag.lstrip("-").replace("-", "_") for flag in self.options]

    def all_cases(self) -> dict[str, Case]:
        """The parity cases, then the mutation-only ones."""
        return {**self.cases, **self.mutation_cases}
