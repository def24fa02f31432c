"""The family contract: one object per ``converters/<family>``, made of one part per layer that uses it.

``Family(name, about, source=..., tables=..., oracle=..., mutations=..., cli=...)``: the source format (the family's
``source`` module), the tables (``KeyTables``), the oracle (``Reference``), the family's own bugs (its ``mutants``
module) and its CLI flags (``Flags``). The registry (``harness.registry``) checks each part against its protocol
at discovery. The flat members (``family.read``, ``family.convert``, ``family.reference``, ...) are the parts'
own, so a layer reads the one part it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from harness.family.cases import Case, MutationCase
from harness.family.cli_options import CliOptions, Flags, Option
from harness.family.mutations import NO_MUTATIONS, Mutations
from harness.family.oracle import Oracle
from harness.family.source_format import SourceFormat
from harness.family.tables import Tables
from harness.mapping.config_map import ConfigMap
from harness.mapping.conversion import Converted, SourceCheckpoint
from harness.mapping.keymap import Layouts
from harness.mapping.points import Point

__all__ = ["PARTS", "Family"]


@dataclass(frozen=True)
class Family:
    """Everything about one family the rest of the project may use, part by part."""

    name: str
    about: str
    source: SourceFormat
    tables: Tables
    oracle: Oracle
    mutations: Mutations = NO_MUTATIONS
    cli: CliOptions = Flags()

    # the source format
    @property
    def read(self) -> Callable[..., SourceCheckpoint]:
        return self.source.read

    @property
    def write(self) -> Callable[..., None]:
        return self.source.write

    @property
    def tiny(self) -> Callable[..., SourceCheckpoint]:
        return self.source.tiny

    @property
    def shapes(self) -> Callable[..., dict[str, tuple[int, ...]]]:
        return self.source.shapes

    @property
    def cases(self) -> Mapping[str, Case]:
        return self.source.CASES

    @property
    def sizes(self) -> Mapping[str, Mapping[str, Any]]:
        return self.source.SIZES

    @property
    def hub_files(self) -> tuple[str, ...]:
        return self.source.HUB_FILES

    # the tables
    @property
    def config(self) -> ConfigMap:
        return self.tables.config

    @property
    def keys(self) -> Layouts:
        return self.tables.keys

    def convert(self, source: SourceCheckpoint) -> Converted:
        return self.tables.convert(source)

    def invert(self, config: dict[str, Any], tensors: dict[str, Any]) -> SourceCheckpoint:
        return self.tables.invert(config, tensors)

    # the oracle
    @property
    def reference(self) -> Callable[..., Any]:
        return self.oracle.reference

    @property
    def points(self) -> tuple[Point, ...]:
        return self.oracle.points

    @property
    def loading(self) -> Callable[[Mapping[str, Any]], AbstractContextManager[None]] | None:
        return self.oracle.loading

    # the family's own bugs
    @property
    def mutants(self) -> tuple[Callable[..., None], ...]:
        return tuple(self.mutations.MUTANTS)

    @property
    def mutation_cases(self) -> Mapping[str, MutationCase]:
        return self.mutations.CASES

    # the CLI
    @property
    def options(self) -> Mapping[str, Option]:
        return self.cli.options

    @property
    def upstream_options(self) -> tuple[str, ...]:
        return self.cli.upstream

    @property
    def facts(self) -> Callable[[SourceCheckpoint], Mapping[str, str]] | None:
        return self.cli.facts

    def option_names(self) -> list[str]:
        """The keyword each option reaches ``read`` as (``--vocab-size`` -> ``vocab_size``)."""
        return [flag.lstrip("-").replace("-", "_") for flag in self.options]

    def all_cases(self) -> dict[str, Case]:
        """The parity cases, then the mutation-only ones."""
        return {**self.cases, **self.mutation_cases}


# Each part and the protocol the registry holds it to.
PARTS: dict[str, type] = {"source": SourceFormat, "tables": Tables, "oracle": Oracle, "mutations": Mutations,
                          "cli": CliOptions}
