"""What every corruption in tests/corruptions.py shares: the ``Broken`` record, and finding and rewriting the
files a family's ``write`` produced (weights, configs, indexes, tar members, torch pickles).
"""

from __future__ import annotations

import io
import random
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from converters.gpt_sw3.nemo import dictconfig_classes
from harness.mapping.conversion import SourceCheckpoint
from tests.pristine import Pristine, set_field

__all__ = ["TORCH", "WEIGHTS", "Apply", "Broken", "CannotBuildError", "configs_in", "get_field", "indexes_in",
           "loaded", "pick", "rewrite", "rewrite_tar", "saved", "set_field", "short", "state_of", "tar_end",
           "tensors_in", "weights_in"]

WEIGHTS = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".nemo")
TORCH = (".pth", ".pt", ".bin", ".ckpt")


@dataclass
class Broken:
    kind: str
    detail: str
    options: dict[str, Any] = field(default_factory=dict)  # convert_checkpoint keyword arguments
    flags: list[str] = field(default_factory=list)  # the same options on the command line
    may_convert: str | None = None  # why a conversion that succeeds is right; None: it must be refused


Apply = Callable[[Path, Pristine, random.Random], Broken]


Apply = Callable[[Path, Pristine, random.Random], Broken]


def weights_in(src: Path) -> list[Path]:
    return sorted(f for f in src.rglob("*") if f.is_file() and f.suffix in WEIGHTS)


def indexes_in(src: Path) -> list[Path]:
    return sorted(f for f in src.rglob("*.index.json") if f.is_file())


def configs_in(src: Path) -> list[Path]:
    return sorted(f for f in src.rglob("*") if f.is_file() and f.suffix in (".json", ".yaml", ".yml")
                  and not f.name.endswith(".index.json"))


def pick(files: list[Path], rng: random.Random) -> Path:
    return rng.choice(files)


class CannotBuildError(Exception):
    """The family's writer cannot write this corruption (a dtype its container cannot hold): not applicable."""


def rewrite(src: Path, p: Pristine, checkpoint: SourceCheckpoint) -> None:
    shutil.rmtree(src)
    try:
        p.family.write(checkpoint, src, container=p.container)
    except Exception as err:
        raise CannotBuildError(f"{type(err).__name__}: {err}") from err


def tar_end(data: io.BytesIO) -> int:
    with tarfile.open(fileobj=data) as tar:
        return max(m.offset_data + -(-m.size // 512) * 512 for m in tar.getmembers())


def rewrite_tar(path: Path, edit: Callable[[str, bytes], bytes | None]) -> None:
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    with tarfile.open(path, "w:") as tar:
        for m, data in members:
            new = edit(m.name.removeprefix("./"), data)
            if new is not None:
                m.size = len(new)
                tar.addfile(m, io.BytesIO(new))


def saved(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def loaded(data: bytes | Path) -> Any:
    """A torch.save object of our own tiny sources, read as data only: NeMo's DictConfig classes are the only
    globals admitted, as the reader admits them."""
    with torch.serialization.safe_globals(dictconfig_classes()):
        return torch.load(data if isinstance(data, Path) else io.BytesIO(data), weights_only=True)


def state_of(obj: Any) -> dict[Any, Any]:
    """The dict of tensors inside a torch.save object (top level, or under state_dict / model_state_dict)."""
    if isinstance(obj, dict) and any(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for value in obj.values():
        if isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values()):
            return value
    raise AssertionError("no tensors in this torch file")


def tensors_in(f: Path) -> dict[str, torch.Tensor]:
    """Copies (not maps) of the tensors in ``f``, so that ``f`` can be overwritten."""
    if f.suffix == ".safetensors":
        return {k: v.clone() for k, v in safetensors.torch.load_file(f).items()}
    if f.suffix == ".nemo":
        with tarfile.open(f) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("model_weights.ckpt"))
            return state_of(loaded(tar.extractfile(member).read()))
    return {k: v.clone() for k, v in state_of(loaded(f)).items()}


def get_field(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."
