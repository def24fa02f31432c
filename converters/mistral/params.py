"""What Mistral AI's own format is for every model it ships: ``params.json`` beside ``consolidated.*`` weights.

The dense family (``mistral``) and the MoE one (``mixtral``) read the same params.json fields for the attention,
name their tensors the same way outside the FFN, and ship the same containers; each keeps its own FFN, rotary
default and reference (they mirror different upstream files). Line numbers are mistral-inference @ 2557e12d
(``args.py``, ``transformer.py``, ``transformer_layers.py``; golden/upstream/mistral/README.md, "fact N").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import ConversionError
from harness.mapping.config_kinds import Count, Divides, PositiveFloat, PositiveInt
from harness.mapping.config_map import Field
from harness.mapping.conversion import SourceCheckpoint
from harness.mapping.rules import Rename, Rotary

__all__ = ["ATTENTION", "CHECKS", "EMBEDDING", "FIELDS", "FILES", "HEAD", "INDEX", "PARAMS", "dims", "weight_files",
           "write_consolidated"]

PARAMS = "params.json"
INDEX = "consolidated.safetensors.index.json"
# Every container upstream or the Hub ships, by the name ``write`` takes: its file (or files) in the folder.
FILES = {"pth": "consolidated.00.pth", "safetensors": "consolidated.safetensors", "pt-shards": "consolidated.NN.pt",
         "sharded": "consolidated-NNNNN-of-NNNNN.safetensors"}
_GLOBS = {**FILES, "pt-shards": "consolidated.[0-9][0-9].pt",
          "sharded": "consolidated-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].safetensors"}

# The fields both families read the same way (fact 13).
FIELDS = [
    Field("dim", "hidden_size", kind=PositiveInt),
    Field("n_layers", "num_hidden_layers", kind=Count),
    # its own field (args.py L34; fact 4): Nemo has 32 heads x 128 != 5120; transformers' default dim/heads is wrong
    Field("head_dim", "head_dim", kind=PositiveInt),
    Field("hidden_dim", "intermediate_size", kind=PositiveInt),
    Field("n_heads", "num_attention_heads", kind=PositiveInt),
    Field("n_kv_heads", "num_key_value_heads", kind=PositiveInt),
    # used for every norm (transformer_layers.py L145-146, transformer.py L78); the constructor's 1e-6 never is
    Field("norm_eps", "rms_norm_eps", kind=PositiveFloat),
    Field("vocab_size", "vocab_size", kind=PositiveInt),
]

CHECKS = [
    Divides("n_kv_heads", "n_heads", why="each kv head serves a whole group of q heads"),
    Divides(2, "head_dim", why="rotary embeddings turn interleaved pairs of dimensions (rope.py L12-21)"),
]

_L, _H = "layers.{layer}", "model.layers.{layer}"
EMBEDDING = Rename("tok_embeddings.weight", "model.embed_tokens.weight")
ATTENTION = [
    # Upstream rotates interleaved pairs (fact 3), transformers halves: permute q/k rows per head, k per kv head.
    Rotary(f"{_L}.attention.wq.weight", f"{_H}.self_attn.q_proj.weight", heads="n_heads"),
    Rotary(f"{_L}.attention.wk.weight", f"{_H}.self_attn.k_proj.weight", heads="n_kv_heads"),
    Rename(f"{_L}.attention.wv.weight", f"{_H}.self_attn.v_proj.weight"),
    Rename(f"{_L}.attention.wo.weight", f"{_H}.self_attn.o_proj.weight"),
    Rename(f"{_L}.attention_norm.weight", f"{_H}.input_layernorm.weight"),
    Rename(f"{_L}.ffn_norm.weight", f"{_H}.post_attention_layernorm.weight"),
]
HEAD = [Rename("norm.weight", "model.norm.weight"), Rename("output.weight", "lm_head.weight")]


def dims(c: dict[str, Any]) -> dict[str, int]:
    """The integers the attention rules name."""
    return {k: c[k] for k in ("n_layers", "n_heads", "n_kv_heads", "head_dim")}


def weight_files(folder: Path, containers: tuple[str, ...]) -> list[Path]:
    """The files of the one container of ``containers`` that ``folder`` holds; none or several is an error."""
    present = {FILES[c]: files for c in containers if (files := sorted(folder.glob(_GLOBS[c])))}
    if len(present) == 1:
        return next(iter(present.values()))
    if not present and sorted(folder.glob("consolidated.00.pth-split*")):
        raise ConversionError(f"{folder} holds byte-split consolidated.00.pth-splitN parts; join them first: "
                              f"cat consolidated.00.pth-split* > consolidated.00.pth")
    if not present:
        raise ConversionError(f"no weights in {folder}: expected one of {', '.join(FILES[c] for c in containers)}")
    raise ConversionError(f"{folder} holds several weight containers ({', '.join(present)}); keep one")


def write_consolidated(checkpoint: SourceCheckpoint, path: Path, container: str, shards: int) -> None:
    """``params.json`` and the weights into the directory ``path`` as ``container`` names them (``FILES``); the
    sharded ones hold contiguous runs of keys, so that no file holds a whole layer."""
    import safetensors.torch
    import torch

    path.mkdir(parents=True, exist_ok=True)
    (path / PARAMS).write_text(json.dumps(checkpoint.config, indent=4) + "\n")
    keys = list(checkpoint.tensors)
    if container in ("pth", "safetensors"):
        shards = 1
    parts = [{k: checkpoint.tensors[k].contiguous() for k in keys[i * len(keys) // shards:
                                                                   (i + 1) * len(keys) // shards]}
             for i in range(shards)]
    if container == "pth":
        torch.save(parts[0], path / FILES["pth"])
    elif container == "pt-shards":
        for i, part in enumerate(parts):
            torch.save(part, path / f"consolidated.{i:02d}.pt")
    elif container == "safetensors":
        safetensors.torch.save_file(parts[0], path / FILES["safetensors"])
    else:
        names = [f"consolidated-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
        for name, part in zip(names, parts, strict=True):
            safetensors.torch.save_file(part, path / name)
        weight_map = {k: name for name, part in zip(names, parts, strict=True) for k in part}
        (path / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2) + "\n")
