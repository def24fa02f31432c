"""Meta's original Llama release: ``params.json`` beside ``consolidated.00.pth`` … ``consolidated.NN.pth``, one file
per model-parallel rank (golden/upstream/llama/README.md, "Facts a converter must get right", cited as "fact N").

Two generations of upstream code read the same layout: meta-llama/llama @ 689c7f26 (Llama 1 and 2, ``L2`` =
``llama/model.py``, ``L2gen`` = ``llama/generation.py``) and meta-llama/llama-models @ a9c89c47 (Llama 3 and 3.1,
``L3`` = ``models/llama3/model.py``, ``L3args`` = ``models/llama3/args.py``). On disk they differ in one place:
the embedding is split over its columns (``ParallelEmbedding``, layout ``llama2``) or over the vocabulary
(``VocabParallelEmbedding``, layout ``llama3``). Rank files are opened lazily and stacked by name: each tensor is
[ranks, *rank-local shape], rank r's slice at index r, read only when the converter asks for it, so that the
key table merges one tensor at a time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from converters.llama import tokenizer
from converters.llama.meta_tensors import meta_tensor_shapes
from converters.llama.ranks import local_shape, model_parallel_size, open_ranks, rank_files, reshard, split_dim
from harness.errors import ConversionError
from harness.family.cases import Case
from harness.io.source_files import read_json_config
from harness.io.tensor_store import TensorStore
from harness.mapping.conversion import SourceCheckpoint

__all__ = ["CASES", "HUB_FILES", "LAYOUTS", "OPTIONS", "SIZES", "ffn_hidden_dim", "generation", "read", "shapes",
           "sizes", "tiny", "write"]

# What `convert`/`verify` fetch for a Hub id as SOURCE: Meta's files; the Hub keeps them under original/.
HUB_FILES = ("params.json", "consolidated.*.pth", "tokenizer.model", "original/params.json",
             "original/consolidated.*.pth", "original/tokenizer.model")

PARAMS, TOKENIZER = "params.json", "tokenizer.model"
LAYOUTS = ("llama2", "llama3")
STORAGE = ("float32", "bfloat16", "float16")  # what ``tiny`` stores its weights as
# Extra `convparity convert llama` flags, passed to `read`.
OPTIONS = {"--check-tokenizer": dict(action="store_true", help="refuse to convert unless tokenizer.model is present "
                                     "and its conversion is checked against sentencepiece / tiktoken")}

# Released sizes: each release's params.json (Meta's download; the Hub's original/params.json), MP = its number of
# consolidated.NN.pth files. Llama 2 writes vocab_size -1 (the tokenizer's 32000 is filled in here).
SIZES: dict[str, dict[str, Any]] = {
    # Llama-2-7b params.json, MP 1
    "2-7b": dict(dim=4096, multiple_of=256, n_heads=32, n_layers=32, norm_eps=1e-5, vocab_size=32000),
    # Llama-2-13b params.json, MP 2
    "2-13b": dict(dim=5120, multiple_of=256, n_heads=40, n_layers=40, norm_eps=1e-5, vocab_size=32000),
    # Llama-2-70b params.json, MP 8
    "2-70b": dict(dim=8192, multiple_of=4096, ffn_dim_multiplier=1.3, n_heads=64, n_kv_heads=8, n_layers=80,
                  norm_eps=1e-5, vocab_size=32000),
    # Meta-Llama-3-8B original/params.json, MP 1
    "3-8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, multiple_of=1024,
                 ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0),
    # Meta-Llama-3-70B original/params.json, MP 8
    "3-70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=128256, multiple_of=4096,
                  ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0),
    # Llama-3.1-8B original/params.json, MP 1
    "3.1-8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, multiple_of=1024,
                   ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True),
    # Llama-3.1-70B original/params.json, MP 8
    "3.1-70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=128256, multiple_of=4096,
                    ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True),
    # Llama-3.1-405B original/params.json, MP 8 (a download with more ranks than kv heads is refused by the ledger)
    "3.1-405b": dict(dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, vocab_size=128256, multiple_of=4096,
                     ffn_dim_multiplier=1.2, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True),
}

TINY: dict[str, Any] = dict(dim=64, n_layers=2, n_heads=4, multiple_of=32, norm_eps=1e-5, vocab_size=-1)

CASES: dict[str, Case] = {
    "mha-mp2": Case("Llama-2-13B style: no n_kv_heads, vocab_size -1, 2 rank files, embedding split on its columns",
                    {}, container="mp2"),
    "gqa-mp2": Case("Llama-2-70B style: 4 q heads / 2 kv heads (k permuted per kv head), FFN x1.3 -> 224, 2 ranks",
                    dict(n_kv_heads=2, ffn_dim_multiplier=1.3), container="mp2"),
    "llama3-mp2": Case("Llama 3: rope_theta 5e5, vocab 512 split over 2 ranks by rows, 8 q / 2 kv heads",
                       dict(dim=128, n_heads=8, n_kv_heads=2, vocab_size=512, rope_theta=500000.0,
                            ffn_dim_multiplier=1.3, multiple_of=64), container="mp2"),
    "llama31-scaled": Case("Llama 3.1: use_scaled_rope (rope_type llama3, factor 8), head_dim 32, 1 kv head, MP 1",
                           dict(n_heads=2, n_kv_heads=1, vocab_size=512, rope_theta=500000.0, use_scaled_rope=True)),
    "llama1-mp4-bf16": Case("Llama 1 style: norm_eps 1e-6, bf16 storage, 4 rank files of one head each",
                            dict(norm_eps=1e-6, storage="bfloat16"), container="mp4"),
}


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """``FeedForward.__init__`` (L2 331-335, L3 214-218) called with hidden_dim = 4 * dim (L2 378, L3 237)."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def sizes(config: dict[str, Any]) -> dict[str, int]:
    """The integers a params.json implies, checked as upstream's ModelArgs checks them (L3args 74-78)."""
    n_heads = config["n_heads"]
    n_kv_heads = config.get("n_kv_heads") or n_heads  # absent or null: full attention (L2 200, L3args 74-75)
    if config["dim"] % n_heads:
        raise ConversionError(f"params.json: dim {config['dim']} is not a multiple of n_heads {n_heads}; "
                              "head_dim is dim // n_heads (L2 205)")
    if n_heads % n_kv_heads:
        raise ConversionError(f"params.json: n_kv_heads {n_kv_heads} does not divide n_heads {n_heads}; each kv "
                              "head serves n_heads / n_kv_heads query heads (L2 204)")
    hidden = ffn_hidden_dim(config["dim"], config.get("multiple_of", 256), config.get("ffn_dim_multiplier"))
    return {"dim": config["dim"], "n_layers": config["n_layers"], "n_heads": n_heads, "n_kv_heads": n_kv_heads,
            "head_dim": config["dim"] // n_heads, "hidden_dim": hidden, "vocab_size": config["vocab_size"]}


def generation(params: dict[str, Any]) -> str:
    """The layout a params.json implies where the files cannot say (one rank): Llama 3 states rope_theta 5e5 and
    may set use_scaled_rope; Llama 1/2 ModelArgs has neither field (L2 19-31), so its files leave them out."""
    theta = params.get("rope_theta")
    return "llama3" if params.get("use_scaled_rope") or theta not in (None, 10000.0) else "llama2"


def shapes(config: dict[str, Any], layout: str = "default", ranks: int = 1) -> dict[str, tuple[int, ...]]:
    """Every tensor of the rank files for ``config``, stacked by rank: (ranks, *rank-local shape)."""
    s = sizes(config)
    layout = generation(config) if layout == "default" else layout
    for heads in ("n_heads", "n_kv_heads"):
        if s[heads] % ranks:
            raise ConversionError(f"params.json: {heads} {s[heads]} does not split over {ranks} rank files; each rank "
                                  "holds whole heads (L2 201-204)")
    hd = s["head_dim"]
    full = meta_tensor_shapes(s["n_layers"], s["dim"], s["vocab_size"], s["n_heads"] * hd, s["n_kv_heads"] * hd,
                              s["hidden_dim"])
    if layout == "llama2":
        full["rope.freqs"] = (s["head_dim"] // 2,)  # a buffer of the Llama 1/2 training code, in every rank file
    return {k: (ranks, *local_shape(shape, split_dim(k, layout), ranks)) for k, shape in full.items()}


def tiny(seed: int = 0, layout: str = "default", storage: str = "float32", n_words: int = 256,
         **overrides: Any) -> SourceCheckpoint:
    """A random one-rank Llama; ``vocab_size=-1`` takes ``n_words`` rows (a tokenizer's size), a None value leaves
    its field out of params.json; ``write`` splits it into any number of rank files."""
    import torch

    from harness.io.tiny import random_weights

    if storage not in STORAGE:
        raise ConversionError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGE)}")
    config = {k: v for k, v in {**TINY, **overrides}.items() if v is not None}
    layout = generation(config) if layout == "default" else layout
    rows = config["vocab_size"] if config["vocab_size"] > 0 else n_words
    weights = random_weights(shapes({**config, "vocab_size": rows}, layout), seed, norms=["*norm.weight"],
                             embeddings=["tok_embeddings.weight"],
                             gains={"*.wq.weight": 1.5, "*.wk.weight": 1.5, "output.weight": 2.0})
    if "rope.freqs" in weights:  # its real values (1 / 10000^(2i/head_dim)), though nothing reads them
        half = weights["rope.freqs"].shape[-1]
        weights["rope.freqs"] = (1.0 / 10000.0 ** (torch.arange(half) / half))[None]
    tensors = {k: t.to(getattr(torch, storage)) for k, t in weights.items()}
    return SourceCheckpoint(config, TensorStore.from_dict(tensors), layout)


def read(path: Path, config: Path | None = None, check_tokenizer: bool = False) -> SourceCheckpoint:
    """Read the folder ``path`` (or the folder of one of its rank files); ``config`` replaces params.json;
    ``check_tokenizer`` demands a tokenizer.model and the library to check its conversion with."""
    folder = path if path.is_dir() else path.parent
    params = read_json_config(config or folder / PARAMS, "pass --config FILE")
    if check_tokenizer and not (folder / TOKENIZER).is_file():
        raise ConversionError(f"--check-tokenizer: no {TOKENIZER} in {folder}")
    if check_tokenizer and not tokenizer.available(folder / TOKENIZER):
        raise ConversionError(f"--check-tokenizer needs the tokenizer extra to compare {TOKENIZER} with Meta's own "
                              f"library: {tokenizer.EXTRA}")
    files = rank_files(folder)
    if path.is_file() and path.resolve() not in [f.resolve() for f in files]:
        raise ConversionError(f"{path} is not a rank file; expected consolidated.NN.pth beside params.json")
    tensors, shown = open_ranks(files, params.get("dim"))
    layout = shown or generation(params)  # the files tell where they can: rows or columns of the embedding
    notes = [f"merging {len(files)} model-parallel rank files ({layout} layout)"] if len(files) > 1 else []
    return SourceCheckpoint(params, tensors, layout, path, notes)


def write(checkpoint: SourceCheckpoint, path: Path, container: str = "default") -> None:
    """``params.json`` and one ``consolidated.NN.pth`` per rank into ``path``: ``mpN`` reshards to N ranks,
    ``default`` keeps the checkpoint's own number."""
    ranks = model_parallel_size(checkpoint.tensors)
    if container != "default":
        if not re.fullmatch(r"mp[1-9]\d?", container):
            raise ConversionError(f"unknown container {container!r}; choose default or mpN (N rank files)")
        ranks = int(container[2:])
    layout = checkpoint.layout if checkpoint.layout in LAYOUTS else generation(checkpoint.config)
    path.mkdir(parents=True, exist_ok=True)
    (path / PARAMS).write_text(json.dumps(checkpoint.config) + "\n")
    import torch

    stacked = {k: reshard(k, checkpoint.tensors[k], ranks, layout) for k in checkpoint.tensors}
    for r in range(ranks):  # clone: torch.save writes a view's whole storage
        torch.save({k: t[r].clone() for k, t in stacked.items()}, path / f"consolidated.{r:02d}.pth")
