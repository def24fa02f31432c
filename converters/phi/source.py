"""Microsoft's original Phi layouts: ``config.json`` (upstream field names) beside the weights.

Two key layouts, both written by the remote code Microsoft shipped on the Hub (see
golden/upstream/phi/README.md for the commits):

* ``phi-msft`` (phi-2, ``modeling_phi.py``): ``transformer.embd.wte``, ``transformer.h.N.*``, ``lm_head.{ln,linear}``;
* ``mixformer-sequential`` (phi-1, phi-1.5, ``modeling_mixformer_sequential.py``): one ``nn.Sequential``:
  ``layers.0.wte``, blocks ``layers.1..n_layer``, head ``layers.{n_layer+1}.{ln,linear}``. The first upload
  (``mixformer-v0``) also stored the rotary ``inv_freq`` buffers (mix0:75, persistent).

Containers, as ``save_pretrained`` writes them: ``pytorch_model.bin``, ``model.safetensors``, or safetensors
shards with ``model.safetensors.index.json`` (phi-2's layout).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from harness.errors import ConversionError
from harness.family.cases import Case
from harness.io.source_files import index_shards, open_weights, read_json_config
from harness.io.tensor_store import TensorStore
from harness.mapping.conversion import SourceCheckpoint

__all__ = ["CASES", "CONTAINERS", "DEFAULTS", "HUB_FILES", "LAYOUTS", "SIZES", "read", "shapes", "sizes", "tiny",
           "write"]

# What `convert`/`verify` fetch for a Hub id as SOURCE: config.json + pytorch_model.bin / model.safetensors / shards
# + index (read).
HUB_FILES = ("config.json", "*.bin", "*.safetensors", "*.index.json")

CONFIG_FILE = "config.json"
CONTAINERS = ("bin", "safetensors", "shards")
LAYOUTS = ("phi-msft", "mixformer-sequential", "mixformer-v0")
INDEX = "model.safetensors.index.json"

# PhiConfig.__init__ / MixFormerSequentialConfig.__init__ defaults (identical in both) for absent fields.
DEFAULTS: dict[str, Any] = {
    "n_positions": 2048, "n_inner": None, "n_head_kv": None, "rotary_dim": 32, "activation_function": "gelu_new",
    "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0, "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02, "tie_word_embeddings": False, "pad_vocab_size_multiple": 64,
}

# Released sizes in config.json field names (n_head 32, rotary_dim 32, n_inner null = 4·n_embd, gelu_new).
_RELEASED = dict(n_head=32, n_head_kv=None, n_inner=None, rotary_dim=32, n_positions=2048,
                 layer_norm_epsilon=1e-5, activation_function="gelu_new", vocab_size=51200)
SIZES: dict[str, dict[str, Any]] = {
    # Inferred, not copied: no original phi-1 config.json was found; these numbers come from the converted HF
    # microsoft/phi-1 config.json (hidden_size 2048, 24 layers, 32 heads, partial_rotary_factor 0.5 = 32/64).
    "phi-1": dict(_RELEASED, model_type="mixformer-sequential", n_embd=2048, n_layer=24),
    # StarHawkMK1/myphi@e656142a config.json, a git mirror of microsoft/phi-1_5 (Sept 2023 upload).
    "phi-1.5": dict(_RELEASED, model_type="mixformer-sequential", n_embd=2048, n_layer=24),
    # phi-msft config.json copies of microsoft/phi-2 (e.g. the phixtral configs built on it): resid_pdrop 0.1.
    "phi-2": dict(_RELEASED, model_type="phi-msft", n_embd=2560, n_layer=32, resid_pdrop=0.1),
}

TINY: dict[str, Any] = dict(n_embd=32, n_layer=2, n_head=4, n_head_kv=None, n_inner=None, rotary_dim=4,
                            activation_function="gelu_new", layer_norm_epsilon=1e-5, vocab_size=128)

CASES: dict[str, Case] = {
    "partial-rotary": Case("phi-2-like: rotary on 4 of 10 head dims (factor 0.4), 2 safetensors shards + index",
                           dict(n_embd=40, n_head=4, rotary_dim=4, resid_pdrop=0.1), container="shards"),
    "gqa": Case("2 q heads per kv head (n_head_kv 2), n_inner 80 != 4·n_embd, model.safetensors",
                dict(n_head_kv=2, n_inner=80), container="safetensors"),
    "mixformer-padded": Case("mixformer-sequential (head at layers.4), vocab 100 padded to 128 rows, 3 layers, .bin",
                             dict(n_layer=3, vocab_size=100, pad_vocab_size_multiple=64, rotary_dim=8),
                             layout="mixformer-sequential"),
    "mixformer-v0": Case("first mixformer upload: stored rotary_emb.inv_freq dropped; exact gelu, eps 1e-6",
                         dict(activation_function="gelu", layer_norm_epsilon=1e-6), layout="mixformer-v0"),
    "odd-rotary": Case("rotary_dim 30 of head_dim 44: 30/44·44 < 30 as a float, so the factor is nudged up",
                       dict(n_embd=88, n_head=2, rotary_dim=30)),
}


def sizes(config: dict[str, Any]) -> dict[str, int]:
    """The integers the upstream classes derive from a config (absent fields take ``DEFAULTS``)."""
    c = {**DEFAULTS, **config}
    n_embd, n_head = c["n_embd"], c["n_head"]
    n_head_kv = c["n_head_kv"] or n_head  # None means n_head (msft:473)
    if n_embd % n_head or n_head % n_head_kv:
        raise ConversionError(f"{CONFIG_FILE}: n_embd {n_embd} must be a multiple of n_head {n_head}, and n_head of "
                              f"n_head_kv {n_head_kv} (out_proj is Linear(n_embd, n_embd), msft:563); fix the config")
    multiple = c["pad_vocab_size_multiple"]
    return {"n_embd": n_embd, "n_layer": c["n_layer"], "n_head": n_head, "n_head_kv": n_head_kv,
            "head_dim": n_embd // n_head,
            "rotary_dim": min(c["rotary_dim"], n_embd // n_head),  # clamped by the config class (cfg:51)
            "n_inner": c["n_inner"] or 4 * n_embd,  # None means 4·n_embd (msft:313)
            "vocab_rows": math.ceil(c["vocab_size"] / multiple) * multiple}  # padded by the config class (cfg:44)


def shapes(config: dict[str, Any], layout: str = "phi-msft") -> dict[str, tuple[int, ...]]:
    """Every tensor the upstream model holds for ``config`` in ``layout`` (msft:553-563, 313-316, 753, 798)."""
    s = sizes(config)
    D, hd, n_layer = s["n_embd"], s["head_dim"], s["n_layer"]
    qkv = hd * (s["n_head"] + 2 * s["n_head_kv"])  # msft:555
    mixformer = layout.startswith("mixformer")
    block = "layers.{}." if mixformer else "transformer.h.{}."
    out: dict[str, tuple[int, ...]] = {("layers.0." if mixformer else "transformer.embd.") + "wte.weight":
                                       (s["vocab_rows"], D)}
    for i in range(n_layer):
        p = block.format(i + 1 if mixformer else i)
        out |= {p + "ln.weight": (D,), p + "ln.bias": (D,), p + "mixer.Wqkv.weight": (qkv, D),
                p + "mixer.Wqkv.bias": (qkv,), p + "mixer.out_proj.weight": (D, D), p + "mixer.out_proj.bias": (D,),
                p + "mlp.fc1.weight": (s["n_inner"], D), p + "mlp.fc1.bias": (s["n_inner"],),
                p + "mlp.fc2.weight": (D, s["n_inner"]), p + "mlp.fc2.bias": (D,)}
        if layout == "mixformer-v0":
            out[p + "mixer.rotary_emb.inv_freq"] = (s["rotary_dim"] // 2,)
    head = f"layers.{n_layer + 1}." if mixformer else "lm_head."
    return out | {head + "ln.weight": (D,), head + "ln.bias": (D,), head + "linear.weight": (s["vocab_rows"], D),
                  head + "linear.bias": (s["vocab_rows"],)}


def tiny(seed: int = 0, layout: str = "phi-msft", **overrides: Any) -> SourceCheckpoint:
    """A random Phi of the given size in ``layout`` (``default`` is phi-msft)."""
    import torch

    from harness.io.tiny import random_weights  # torch: reading and converting never need it

    layout = "phi-msft" if layout == "default" else layout
    model_type = "phi-msft" if layout == "phi-msft" else "mixformer-sequential"
    config = {"model_type": model_type, **TINY, **overrides}
    weights = random_weights(shapes(config, layout), seed, norms=["*ln.weight"], embeddings=["*wte.weight"],
                             # Larger q/k gains make attention vary between tokens, as in the oracle data.
                             gains={"*Wqkv.weight": 1.5})
    rotary_dim = sizes(config)["rotary_dim"]
    for name in weights:
        if name.endswith("inv_freq"):  # the real buffer, as mix0:75 stores it
            # float64, rounded once: the same bits on every CPU
            weights[name] = (1.0 / 10000 ** (torch.arange(0, rotary_dim, 2).double() / rotary_dim)).float()
    return SourceCheckpoint(config, TensorStore.from_dict(weights), layout)


def read(path: Path, config: Path | None = None) -> SourceCheckpoint:
    """Read a directory (or one weights file in it) in any container; ``config`` replaces config.json."""
    folder = path if path.is_dir() else path.parent
    params = read_json_config(config or folder / CONFIG_FILE, "pass --config FILE")
    files = [path] if path.is_file() else _weight_files(folder)
    tensors = open_weights(files)
    return SourceCheckpoint(params, tensors, _layout(tensors, params), path)


def write(checkpoint: SourceCheckpoint, path: Path, container: str = "bin", shards: int = 2) -> None:
    """Write ``config.json`` and the weights in one of ``CONTAINERS`` into the directory ``path``."""
    container = "bin" if container == "default" else container
    if container not in CONTAINERS:
        raise ConversionError(f"unknown container {container!r}; choose one of {', '.join(CONTAINERS)}")
    import safetensors.torch
    import torch

    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(checkpoint.config, indent=2) + "\n")
    tensors = {k: checkpoint.tensors[k].contiguous() for k in checkpoint.tensors}
    if container == "bin":
        torch.save(tensors, path / "pytorch_model.bin")
    elif container == "safetensors":
        safetensors.torch.save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    else:  # contiguous runs of keys, named and indexed as save_pretrained(max_shard_size=...) does
        keys, weight_map = list(tensors), {}
        for i in range(shards):
            name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = keys[i * len(keys) // shards: (i + 1) * len(keys) // shards]
            safetensors.torch.save_file({k: tensors[k] for k in part}, path / name, metadata={"format": "pt"})
            weight_map |= dict.fromkeys(part, name)
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (path / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _weight_files(folder: Path) -> list[Path]:
    found = {name: folder / name for name in ("pytorch_model.bin", "model.safetensors", INDEX)
             if (folder / name).exists()}  # a directory by that name is reported as such when it is opened
    if len(found) > 1:
        raise ConversionError(f"{folder} holds several weight containers ({', '.join(found)}); keep one")
    if not found:
        raise ConversionError(f"no weights in {folder}: expected pytorch_model.bin, model.safetensors or {INDEX}")
    if INDEX not in found:
        return list(found.values())
    return index_shards(found[INDEX])


def _layout(tensors: TensorStore, config: dict[str, Any]) -> str:
    """The key layout, from the keys (the embedding's name), else from model_type."""
    if "layers.0.wte.weight" in tensors or config.get("model_type") == "mixformer-sequential":
        return "mixformer-v0" if any(k.endswith("rotary_emb.inv_freq") for k in tensors) else "mixformer-sequential"
    return "phi-msft"
