"""Mistral AI's own Mixtral layout: ``params.json`` beside ``consolidated.*`` weights.

Upstream ``moe_one_file_ref.py`` (mistral-inference @ 26a52a14, L425-440) reads exactly one of
``consolidated.00.pth`` or ``consolidated.safetensors``. The Hub repo ``mistralai/Mixtral-8x7B-v0.1`` also
hosted ``consolidated.00.pt`` ... ``consolidated.07.pt`` with disjoint keys and the experts fused per layer
(``layers.N.block_sparse_moe.w1/w2/w3``, w2's row blocks transposed). All three containers and both expert
layouts are read and written here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converters.mistral.params import PARAMS, weight_files, write_consolidated
from harness.errors import ConversionError
from harness.family.cases import Case
from harness.io.source_files import open_weights, read_json_config
from harness.io.tensor_store import TensorStore
from harness.mapping.conversion import SourceCheckpoint

__all__ = ["CASES", "CONTAINERS", "HUB_FILES", "SIZES", "read", "shapes", "tiny", "write"]

# What `convert`/`verify` fetch for a Hub id as SOURCE: params.json + consolidated.safetensors / .00.pth / .NN.pt.
HUB_FILES = ("params.json", "consolidated.*")

CONTAINERS = ("pth", "pt-shards", "safetensors")

# Released sizes in params.json field names.
SIZES: dict[str, dict[str, Any]] = {
    # mlx-examples llms/mixtral/params.json (the torrent's params.json; no rope_theta -> 1e6)
    "8x7b": dict(dim=4096, n_layers=32, head_dim=128, hidden_dim=14336, n_heads=32, n_kv_heads=8,
                 norm_eps=1e-5, vocab_size=32000, moe=dict(num_experts=8, num_experts_per_tok=2)),
    # mistralai/Mixtral-8x22B-v0.1 params.json
    "8x22b": dict(dim=6144, n_layers=56, head_dim=128, hidden_dim=16384, n_heads=48, n_kv_heads=8,
                  norm_eps=1e-5, vocab_size=32768, rope_theta=1e6, moe=dict(num_experts=8, num_experts_per_tok=2)),
}

TINY: dict[str, Any] = dict(dim=32, n_layers=2, head_dim=8, hidden_dim=48, n_heads=4, n_kv_heads=2, norm_eps=1e-5,
                            vocab_size=128, rope_theta=1e6, moe=dict(num_experts=4, num_experts_per_tok=2))

CASES: dict[str, Case] = {
    "gqa": Case("4 q heads per kv head, head_dim*heads != dim, per-expert keys, consolidated.00.pth",
                dict(dim=48, n_heads=8, n_kv_heads=2, head_dim=8)),
    "mqa-top1": Case("one kv head, top-1 routing, 8 experts, consolidated.safetensors",
                     dict(n_kv_heads=1, moe=dict(num_experts=8, num_experts_per_tok=1)), container="safetensors"),
    "fused-shards": Case("Hub layout: fused w1/w2/w3 over 8 consolidated.NN.pt files, no rope_theta (-> 1e6)",
                         dict(rope_theta=None, n_layers=3), container="pt-shards", layout="fused"),
    "mha-top3": Case("full multi-head attention, top-3 of 6 experts, rope_theta 1e4",
                     dict(n_kv_heads=4, rope_theta=1e4, moe=dict(num_experts=6, num_experts_per_tok=3))),
}


def shapes(config: dict[str, Any], layout: str = "experts") -> dict[str, tuple[int, ...]]:
    """Every tensor upstream's ``Transformer`` holds for ``config`` (moe_one_file_ref.py L94-97, L236-288)."""
    D, V, hd, I = config["dim"], config["vocab_size"], config["head_dim"], config["hidden_dim"]  # noqa: E741
    q, kv, E = config["n_heads"] * hd, config["n_kv_heads"] * hd, config["moe"]["num_experts"]
    out: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (V, D)}
    for i in range(config["n_layers"]):
        p = f"layers.{i}."
        out |= {p + "attention.wq.weight": (q, D), p + "attention.wk.weight": (kv, D),
                p + "attention.wv.weight": (kv, D), p + "attention.wo.weight": (D, q),
                p + "attention_norm.weight": (D,), p + "ffn_norm.weight": (D,)}
        if layout == "fused":
            out |= {p + "block_sparse_moe.gate.weight": (E, D)}
            out |= {p + f"block_sparse_moe.{w}": (E * I, D) for w in ("w1", "w2", "w3")}
        else:
            out |= {p + "feed_forward.gate.weight": (E, D)}
            for e in range(E):
                x = f"{p}feed_forward.experts.{e}."
                out |= {x + "w1.weight": (I, D), x + "w2.weight": (D, I), x + "w3.weight": (I, D)}
    return out | {"norm.weight": (D,), "output.weight": (V, D)}


def tiny(seed: int = 0, layout: str = "experts", **overrides: Any) -> SourceCheckpoint:
    """A random Mixtral of the given size; ``rope_theta=None`` leaves the field out as the 8x7B release does."""
    from harness.io.tiny import random_weights  # torch: reading and converting never need it

    config = {**TINY, **overrides}
    if config.get("rope_theta", 0) is None:
        del config["rope_theta"]
    weights = random_weights(
        shapes(config, layout), seed, norms=["*norm.weight"], embeddings=["tok_embeddings.weight"],
        # Larger q/k and router gains make attention and routing vary between tokens (as in the oracle data).
        gains={"*.wq.weight": 1.5, "*.wk.weight": 1.5, "*gate.weight": 3.0, "output.weight": 2.0})
    return SourceCheckpoint(config, TensorStore.from_dict(weights), layout)


def read(path: Path, config: Path | None = None) -> SourceCheckpoint:
    """Read a directory (or one weights file in it) in any container; ``config`` replaces params.json."""
    folder = path if path.is_dir() else path.parent
    params = read_json_config(config or folder / PARAMS, "pass --config FILE")
    tensors = open_weights([path] if path.is_file() else weight_files(folder, CONTAINERS))
    layout = "fused" if any(".block_sparse_moe.w1" in k for k in tensors) else "experts"
    return SourceCheckpoint(params, tensors, layout, path)


def write(checkpoint: SourceCheckpoint, path: Path, container: str = "pth", shards: int = 8) -> None:
    """Write ``params.json`` and the weights in one of ``CONTAINERS`` into the directory ``path``."""
    container = "pth" if container == "default" else container
    if container not in CONTAINERS:
        raise ConversionError(f"unknown container {container!r}; choose one of {', '.join(CONTAINERS)}")
    write_consolidated(checkpoint, path, container, shards)
