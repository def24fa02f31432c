"""What flows between source, converter and writer: checkpoints and converted streams of named tensors.

``convert_with`` and ``invert_with`` drive a family's two tables; families call them from their own
``convert``/``invert`` so that the harness never needs family-specific code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.io.file_regions import FileRegion
from harness.io.tensor_store import TensorSpec, TensorStore
from harness.mapping.config_map import ConfigMap
from harness.mapping.keymap import KeyMap, Step

if TYPE_CHECKING:
    import torch

__all__ = ["Converted", "SourceCheckpoint", "convert_with", "invert_with"]


@dataclass
class SourceCheckpoint:
    """A checkpoint in its upstream format: hyper-parameters in upstream names and lazy tensors.

    ``layout`` names the key layout when a family has several (Mixtral: ``experts`` or ``fused``).
    """

    config: dict[str, Any]
    tensors: TensorStore
    layout: str = "default"
    path: Path | None = None
    notes: list[str] = field(default_factory=list)  # what reading had to decide (shown to the user)


@dataclass
class Converted:
    """A transformers config plus the recipe for every output tensor, each produced on demand.

    ``tensors()`` is the stream a writer consumes (and a planted bug may intercept); ``plan()`` gives every
    output's name, shape and dtype without reading data (each rule's ``planned``: a data-moving rule's layout on
    segment numbers, a computing rule's forward on the meta device).
    """

    config: dict[str, Any]
    steps: list[Step]
    source: TensorStore
    dims: dict[str, int]
    notes: list[str] = field(default_factory=list)
    # Other files of the output directory (a tokenizer), name -> bytes, made before any tensor is written.
    files: Callable[[], dict[str, bytes]] | None = None

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for step in self.steps:
            outputs = step.run([self.source[k] for k in step.sources], self.dims)
            yield from zip(step.targets, outputs, strict=True)

    def payloads(self) -> Iterator[tuple[str, torch.Tensor | FileRegion]]:
        """The stream a writer consumes: ``tensors()``, except that an output whose bytes are a contiguous run
        of a source tensor's bytes in its file (a rename, a row block of a split) comes as that ``FileRegion``,
        to be copied file to file without being read.
        """
        for step in self.steps:
            inputs = [self.source.mapped(k) for k in step.sources]
            regions = [self.source.regions.get(k) for k in step.sources]
            for name, out in zip(step.targets, step.run(inputs, self.dims), strict=True):
                yield name, _region_of(out, inputs, regions) or out

    def plan(self) -> list[TensorSpec]:
        specs = []
        for step in self.steps:
            planned = step.rule.planned([self.source.meta(k) for k in step.sources], self.dims)
            if len(planned) != len(step.targets):
                raise RuntimeError(f"{step.rule!r} plans {len(planned)} tensors for {len(step.targets)} targets")
            specs += [TensorSpec(t, shape, dtype) for t, (shape, dtype) in zip(step.targets, planned, strict=True)]
        return specs


def _region_of(out: torch.Tensor, inputs: list[torch.Tensor], regions: list[FileRegion | None]
               ) -> FileRegion | None:
    """The file region ``out`` occupies, when it is a contiguous view into a memory-mapped input."""
    if out.device.type != "cpu" or not out.is_contiguous() or not out.numel():
        return None
    for tensor, region in zip(inputs, regions, strict=True):
        if region is not None and out.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr():
            return region.sub(out.data_ptr() - tensor.data_ptr(), tuple(out.shape), out.dtype)
    return None


def convert_with(source: SourceCheckpoint, config_map: ConfigMap, key_map: KeyMap,
                 expected_shapes: Mapping[str, tuple[int, ...]] | None = None) -> Converted:
    """Map a source checkpoint through a family's config table and key table, checking the ledger."""
    hf_config = config_map.to_target(source.config)
    dims = key_map.dims(config_map.complete(source.config))
    shapes = {k: source.tensors.raw_meta(k)[0] for k in source.tensors}
    steps = key_map.plan(source.tensors.keys(), dims, expected_shapes, shapes)
    return Converted(hf_config, steps, source.tensors, dims, list(source.notes))


def invert_with(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], config_map: ConfigMap,
                key_map: KeyMap, layout: str = "default") -> SourceCheckpoint:
    """Walk both tables backwards: a transformers config and state dict -> an upstream checkpoint."""
    source_config = config_map.to_source(config)
    dims = key_map.dims(config_map.complete(source_config))
    return SourceCheckpoint(source_config, TensorStore.from_dict(key_map.invert(tensors, dims)), layout)
