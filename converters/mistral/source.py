"""Mistral AI's dense releases: ``params.json`` beside ``consolidated.*`` (golden/upstream/mistral/README.md, "fact N").

Upstream ``Transformer.from_folder`` (mistral-inference @ 2557e12d, transformer.py L321-336) reads exactly one of
``consolidated.00.pth`` (Mistral-7B v0.1/v0.2) or ``consolidated.safetensors`` (v0.3 and later); the largest
releases on the Hub are cut into ``consolidated-NNNNN-of-NNNNN.safetensors`` with a
``consolidated.safetensors.index.json``. All three containers are read and written here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converters.llama.meta_tensors import meta_tensor_shapes
from converters.mistral.params import INDEX, PARAMS, weight_files, write_consolidated
from harness.errors import ConversionError
from harness.family.cases import Case
from harness.io.source_files import index_shards, open_weights, read_json_config
from harness.io.tensor_store import TensorStore
from harness.mapping.conversion import SourceCheckpoint

__all__ = ["CASES", "CONTAINERS", "HUB_FILES", "SIZES", "read", "shapes", "tiny", "write"]

# What `convert`/`verify` fetch for a Hub id as SOURCE: params.json, the weights and the tokenizer file.
HUB_FILES = ("params.json", "consolidated*", "tokenizer.model*", "tekken.json")

CONTAINERS = ("safetensors", "pth", "sharded")  # converters/mistral/params.py FILES names their files

# Released sizes in params.json field names (the text model only).
SIZES: dict[str, dict[str, Any]] = {
    # mistralai/Mistral-7B-v0.1: the 2023 torrent's params.json (no rope_theta: 10000, fact 5)
    "7b-v0.1": dict(dim=4096, n_layers=32, head_dim=128, hidden_dim=14336, n_heads=32, n_kv_heads=8, norm_eps=1e-5,
                    sliding_window=4096, vocab_size=32000),
    # mistralai/Mistral-7B-v0.3 params.json
    "7b-v0.3": dict(dim=4096, n_layers=32, head_dim=128, hidden_dim=14336, n_heads=32, n_kv_heads=8, norm_eps=1e-5,
                    vocab_size=32768, rope_theta=1e6),
    # mistralai/Mistral-Nemo-Base-2407 params.json: 32 heads x 128 = 4096 != dim 5120
    "nemo-12b": dict(dim=5120, n_layers=40, head_dim=128, hidden_dim=14336, n_heads=32, n_kv_heads=8,
                     rope_theta=1e6, norm_eps=1e-5, vocab_size=131072),
    # mistralai/Mistral-Small-3.1-24B-Base-2503 params.json, without its vision_encoder (outside this family)
    "small-3.1-24b": dict(dim=5120, n_layers=40, head_dim=128, hidden_dim=32768, n_heads=32, n_kv_heads=8,
                          rope_theta=1e9, norm_eps=1e-5, vocab_size=131072),
}

TINY: dict[str, Any] = dict(dim=32, n_layers=2, head_dim=8, hidden_dim=64, n_heads=4, n_kv_heads=2, norm_eps=1e-5,
                            vocab_size=128, rope_theta=1e6)

CASES: dict[str, Case] = {
    "v01-window": Case("Mistral-7B v0.1: sliding_window 6 < 24 tokens, no rope_theta (-> 10000), consolidated.00.pth",
                       dict(rope_theta=None, sliding_window=6), container="pth"),
    "nemo-headdim": Case("Nemo: head_dim 16 with 4 heads and dim 32 (64 != 32), consolidated.safetensors",
                         dict(head_dim=16)),
    "layer-pattern": Case("Ministral: _sliding_window [5, null] repeated over 4 layers, 3 sharded safetensors files",
                          dict(n_layers=4, _sliding_window=[5, None], rope_theta=1e8), container="sharded"),
    "mqa": Case("one kv head, full attention, rope_theta 1e4 stated, consolidated.00.pth",
                dict(n_kv_heads=1, rope_theta=1e4), container="pth"),
}


def shapes(config: dict[str, Any], layout: str = "default") -> dict[str, tuple[int, ...]]:
    """Every tensor upstream's ``Transformer`` holds (fact 2; transformer_layers.py L51-54, L101-103)."""
    hd = config["head_dim"]
    return meta_tensor_shapes(config["n_layers"], config["dim"], config["vocab_size"], config["n_heads"] * hd,
                              config["n_kv_heads"] * hd, config["hidden_dim"])


def tiny(seed: int = 0, layout: str = "default", **overrides: Any) -> SourceCheckpoint:
    """A random dense Mistral; ``rope_theta=None`` leaves the field out, as the v0.1 release does."""
    from harness.io.tiny import random_weights  # torch: reading and converting never need it

    config = {**TINY, **overrides}
    if config.get("rope_theta", 0) is None:
        del config["rope_theta"]
    weights = random_weights(shapes(config), seed, norms=["*norm.weight"], embeddings=["tok_embeddings.weight"],
                             # as the oracle data draws them: larger q/k make attention vary between tokens
                             gains={"*.wq.weight": 2.0, "*.wk.weight": 2.0, "output.weight": 2.0})
    return SourceCheckpoint(config, TensorStore.from_dict(weights), layout)


def read(path: Path, config: Path | None = None) -> SourceCheckpoint:
    """Read a directory (or one weights file in it) in any container; ``config`` replaces params.json."""
    folder = path if path.is_dir() else path.parent
    params = read_json_config(config or folder / PARAMS, "pass --config FILE")
    files = [path] if path.is_file() else _whole(weight_files(folder, CONTAINERS), folder / INDEX)
    return SourceCheckpoint(params, open_weights(files), "default", path)


def write(checkpoint: SourceCheckpoint, path: Path, container: str = "safetensors", shards: int = 3) -> None:
    """Write ``params.json`` and the weights in one of ``CONTAINERS`` into the directory ``path``."""
    container = "safetensors" if container == "default" else container
    if container not in CONTAINERS:
        raise ConversionError(f"unknown container {container!r}; choose one of {', '.join(CONTAINERS)}")
    write_consolidated(checkpoint, path, container, shards)


def _whole(files: list[Path], index: Path) -> list[Path]:
    """Sharded files must all be there: the index names them, or without one ``-of-NNNNN`` says how many."""
    if "-of-" in files[0].name and index.exists():
        return index_shards(index)
    total = {int(f.stem[-5:]) for f in files if "-of-" in f.name}
    if total and (len(total) > 1 or len(files) != total.pop()):
        raise ConversionError(f"{files[0].parent} holds {len(files)} consolidated-NNNNN-of-NNNNN.safetensors "
                              f"files, not the number their names give ({files[0].name}); copy every shard there")
    return files
