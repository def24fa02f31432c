"""Corruptions of whole files: weights truncated, flipped, replaced or duplicated; indexes and configs broken."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from tests.corruption_tools import (
    TORCH,
    WEIGHTS,
    Apply,
    Broken,
    configs_in,
    indexes_in,
    loaded,
    pick,
    rewrite_tar,
    saved,
    state_of,
    tar_end,
    tensors_in,
    weights_in,
)
from tests.pristine import Pristine

FLIPS_MAY_CONVERT = ("a flipped byte in tensor data, or in bytes that no reader verifies (torch zip, safetensors "
                     "and tar keep no checksum of the data they hold), changes values, not structure")


def truncate(src: Path, p: Pristine, rng: random.Random) -> Broken:
    f = pick(weights_in(src), rng)
    data = f.read_bytes()
    cut = rng.randrange(len(data))
    f.write_bytes(data[:cut])
    padding = f.suffix == ".nemo" and cut >= tar_end(io.BytesIO(data))
    return Broken("truncate", f"{f.name} cut to {cut} of {len(data)} bytes",
                  may_convert="the cut only removes the tar's end-of-archive zero padding" if padding else None)


def flip(src: Path, p: Pristine, rng: random.Random) -> Broken:
    f = pick(weights_in(src), rng)
    data = bytearray(f.read_bytes())
    where = sorted(rng.randrange(len(data)) for _ in range(rng.randint(1, 4)))
    for i in where:
        data[i] ^= rng.randrange(1, 256)
    f.write_bytes(bytes(data))
    return Broken("flip-bytes", f"{f.name} bytes {where} flipped", may_convert=FLIPS_MAY_CONVERT)


def replace(kind: str, make: Callable[[Path, random.Random], str]) -> Apply:
    def apply(src: Path, p: Pristine, rng: random.Random) -> Broken:
        f = pick(weights_in(src), rng)
        f.unlink()
        return Broken(kind, f"{f.name}: {make(f, rng)}")
    return apply


def as_directory(f: Path, rng: random.Random) -> str:
    f.mkdir()
    (f / "data.bin").write_bytes(b"\0" * 64)
    return "a directory"


_TEXTS = ("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146\nsize 14483464\n",
          "<!DOCTYPE html><html><head><title>404 Not Found</title></head></html>\n",
          '{"error": "Repository not found"}\n', "hello\n")


def as_text(f: Path, rng: random.Random) -> str:
    text = rng.choice(_TEXTS)
    f.write_text(text)
    return f"text {text[:20]!r}"


def as_random(f: Path, rng: random.Random) -> str:
    bulk = random.Random(rng.random())  # one draw from the test's generator, not thousands
    f.write_bytes(bulk.randbytes(rng.randint(1, 4096)))
    return "random bytes"


def as_zeros(f: Path, rng: random.Random) -> str:
    f.write_bytes(bytes(rng.choice([8, 512, 70_000])))
    return "zeros"


def as_empty(f: Path, rng: random.Random) -> str:
    f.write_bytes(b"")
    return "empty"


def wrong_container(src: Path, p: Pristine, rng: random.Random) -> Broken:
    """The same tensors in the other container under the same name: safetensors <-> torch.save, tar -> zip."""
    f = pick(weights_in(src), rng)
    tensors = tensors_in(f)
    if f.suffix == ".safetensors":
        torch.save(tensors, f)
        return Broken("wrong-container", f"{f.name} holds a torch.save zip")
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, f)
    return Broken("wrong-container", f"{f.name} holds safetensors")


def missing_weights(src: Path, p: Pristine, rng: random.Random) -> Broken:
    f = pick(weights_in(src), rng)
    f.unlink()
    return Broken("missing-weights", f"{f.name} deleted")


def stray_copy(src: Path, p: Pristine, rng: random.Random) -> Broken:
    """A copy of a weights file under the next number, or with -copy: a duplicate shard or a second container."""
    f = pick(weights_in(src), rng)
    numbers = list(re.finditer(r"\d+", f.name))
    if numbers and rng.random() < 0.5:
        m = numbers[-1] if "of" not in f.name else numbers[0]
        name = f.name[:m.start()] + str(int(m.group()) + 1).zfill(len(m.group())) + f.name[m.end():]
    else:
        name = f"{f.stem}-copy{f.suffix}"
    if (src / name).exists():
        name = f"{f.stem}-copy{f.suffix}"
    shutil.copy(f, src / name)
    return Broken("stray-copy", f"{f.name} copied to {name}",
                  may_convert="a file that the layout does not name is not read, as upstream does not read it")


def code_in_pickle(src: Path, p: Pristine, rng: random.Random) -> Broken:
    f = pick([w for w in weights_in(src) if w.suffix in TORCH + (".nemo",)], rng)
    evil = _RunsCode(str(src.parent / "pwned"))
    obj = {"model_state_dict": {"w": evil}, "state_dict": {"w": evil}, "w": evil}
    if f.suffix == ".nemo":
        rewrite_tar(f, lambda name, data: saved(obj) if name == "model_weights.ckpt" else data)
    elif rng.random() < 0.5:
        torch.save(obj, f)
    else:
        f.write_bytes(pickle.dumps(obj, protocol=2))
    return Broken("code-in-pickle", f"{f.name} unpickles by calling os.mkdir")


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


def non_tensor_entry(src: Path, p: Pristine, rng: random.Random) -> Broken:
    f = pick([w for w in weights_in(src) if w.suffix in TORCH + (".nemo",)], rng)
    junk: Any = rng.choice([7, "text", [1.0, 2.0], None, {"nested": 1}])

    def spoil(obj: Any) -> Any:
        state = state_of(obj)
        key: Any = rng.choice(sorted(state))
        if rng.random() < 0.5:
            state[key] = junk
        else:
            state[rng.choice([key + ".extra", 7, ("tuple", "key")])] = state[key]
        return obj

    if f.suffix == ".nemo":
        rewrite_tar(f, lambda name, data: saved(spoil(loaded(data))) if name == "model_weights.ckpt" else data)
    else:
        torch.save(spoil(loaded(f)), f)
    return Broken("non-tensor-entry", f"{f.name}: a non-tensor value or key")


# ---- index and config files ------------------------------------------------------------------------------------

_INDEX_DAMAGE: dict[str, Callable[[dict[str, Any], str], Any]] = {
    "not JSON": lambda index, own: '{"weight_map": {"a": ',
    "no weight_map": lambda index, own: {"metadata": index.get("metadata", {})},
    "weight_map is a list": lambda index, own: {"weight_map": sorted(set(index["weight_map"].values()))},
    "empty weight_map": lambda index, own: {"weight_map": {}},
    "names a missing shard": lambda index, own: {"weight_map": {**index["weight_map"], "x": "absent.bin"}},
    "names a path outside": lambda index, own: {"weight_map": {**index["weight_map"], "x": "../outside.bin"}},
    "names a number": lambda index, own: {"weight_map": {**index["weight_map"], "x": 5}},
    "names itself": lambda index, own: {"weight_map": {**index["weight_map"], "x": own}},
    "drops a shard": lambda index, own: {"weight_map": {k: v for k, v in index["weight_map"].items()
                                                        if v != min(index["weight_map"].values())}},
    "UTF-16": lambda index, own: json.dumps(index).encode("utf-16"),
}


def broken_index(src: Path, p: Pristine, rng: random.Random) -> Broken:
    f = pick(indexes_in(src), rng)
    how = rng.choice(sorted(_INDEX_DAMAGE) + ["a directory"])
    if how == "a directory":
        f.unlink()
        f.mkdir()
    else:
        damaged = _INDEX_DAMAGE[how](json.loads(f.read_text()), f.name)
        f.write_bytes(damaged if isinstance(damaged, bytes) else
                      (damaged if isinstance(damaged, str) else json.dumps(damaged)).encode())
    return Broken("broken-index", f"{f.name}: {how}")


def config_bytes(kind: str, change: Callable[[bytes, bool, random.Random], tuple[bytes | None, str]]) -> Apply:
    """A change to the side-car config: a file beside the weights, or model_config.yaml inside a .nemo."""
    def apply(src: Path, p: Pristine, rng: random.Random) -> Broken:
        files = configs_in(src)
        if files:
            f = pick(files, rng)
            new, what = change(f.read_bytes(), f.suffix == ".json", rng)
            f.unlink()
            if new is not None:
                f.write_bytes(new)
            return Broken(kind, f"{f.name}: {what}")
        archive = pick([w for w in weights_in(src) if w.suffix == ".nemo"], rng)
        done: list[str] = []

        def edit(name: str, data: bytes) -> bytes | None:
            if not name.endswith((".yaml", ".yml")):
                return data
            new, what = change(data, False, rng)
            done.append(what)
            return new

        rewrite_tar(archive, edit)
        return Broken(kind, f"{archive.name} model_config.yaml: {done[0] if done else 'none'}")
    return apply


def deleted(data: bytes, is_json: bool, rng: random.Random) -> tuple[bytes | None, str]:
    return None, "deleted"


def utf16(data: bytes, is_json: bool, rng: random.Random) -> tuple[bytes | None, str]:
    codec = rng.choice(["utf-16", "utf-16-le", "utf-32"])
    return data.decode().encode(codec), codec


def bad_syntax(data: bytes, is_json: bool, rng: random.Random) -> tuple[bytes | None, str]:
    if is_json:
        end = data.rindex(b"}")
        return data[:rng.randrange(end)], "cut before its closing brace"
    return data + b"\nbroken: [unclosed, {\n", "an unclosed flow sequence appended"


def not_object(data: bytes, is_json: bool, rng: random.Random) -> tuple[bytes | None, str]:
    value = rng.choice([[1, 2], 42, "text", None])
    return (json.dumps(value) if is_json else json.dumps(value) + "\n").encode(), f"holds {value!r}"


def wrong_file_as_source(src: Path, p: Pristine, rng: random.Random) -> Broken:
    others = sorted(f for f in src.rglob("*") if f.is_file() and f.suffix not in WEIGHTS)
    f = pick(others, rng)
    return Broken("wrong-file-as-source", f"SOURCE is {f.name}", options={"__source__": f})


def empty_dir(src: Path, p: Pristine, rng: random.Random) -> Broken:
    for f in list(src.iterdir()):
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    return Broken("empty-source-dir", "every file deleted")
