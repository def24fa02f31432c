"""google/gemma_pytorch's own layout: ``{'model_state_dict': ...}`` in one ``.ckpt``, or an index + shards.

Mirrors ``gemma/model.py`` ``GemmaForCausalLM.load_weights`` (L737-755) @ 014acb7a: a file is unpickled and
its ``'model_state_dict'`` entry used (here with ``weights_only=True``); a directory holds
``pytorch_model.bin.index.json`` whose ``weight_map`` names plain state-dict shards. Upstream keeps
hyper-parameters in code (``gemma/config.py`` ``get_config_for_2b/7b``, picked by ``--variant``); here they
come from a ``config.json`` in ``GemmaConfig`` field names beside the weights, from ``--config FILE``, or from
a ``--variant`` preset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConversionError
from harness.family.cases import Case
from harness.io.source_files import index_shards, read_json_config
from harness.io.tensor_store import TensorStore, open_torch
from harness.mapping.conversion import SourceCheckpoint
from harness.mapping.transforms import quantize

if TYPE_CHECKING:  # reading a checkpoint needs no torch; making or writing one imports it
    import torch

__all__ = ["CASES", "CONTAINERS", "DEFAULTS", "GELU", "HUB_FILES", "OPTIONS", "SIZES", "read", "shapes", "tiny",
           "write"]

# What `convert`/`verify` fetch for a Hub id as SOURCE: config.json, one .ckpt, or an index + shards (read).
HUB_FILES = ("config.json", "*.ckpt", "pytorch_model*.bin", "*.index.json")

CONTAINERS = ("ckpt", "sharded")
CONFIG_JSON, CKPT, INDEX = "config.json", "model.ckpt", "pytorch_model.bin.index.json"
# --gelu: "tanh" is upstream since 0a7afad (2024-03-02); "exact" is the Feb-2024 release (09eee7b model.py:197).
GELU = {"tanh": "gelu_tanh", "exact": "gelu_exact"}
# GemmaConfig fields that switch on Gemma 2/3 code paths; Gemma 1 leaves every one None/False (config.py).
LATER_FIELDS = ("attn_types", "sliding_window_size", "final_logit_softcapping", "attn_logit_softcapping",
                "query_pre_attn_scalar", "use_pre_ffw_norm", "use_post_ffw_norm", "rope_wave_length",
                "use_qk_norm", "vision_config")
# GemmaConfig dataclass defaults (config.py) for the fields a config file may leave out.
DEFAULTS: dict[str, Any] = dict(architecture="GEMMA_1", max_position_embeddings=8192, head_dim=256,
                                rms_norm_eps=1e-6, quant=False)

_COMMON = dict(architecture="GEMMA_1", vocab_size=256000, max_position_embeddings=8192, head_dim=256,
               rms_norm_eps=1e-6, dtype="bfloat16", quant=False)
SIZES: dict[str, dict[str, Any]] = {
    # config.py get_config_for_2b: 18 layers, MQA (8 q heads, 1 kv head)
    "2b": _COMMON | dict(num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1, hidden_size=2048,
                         intermediate_size=16384),
    # config.py get_config_for_7b (= the GemmaConfig defaults): MHA, 16 * 256 = 4096 != hidden 3072
    "7b": _COMMON | dict(num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=16, hidden_size=3072,
                         intermediate_size=24576),
}
# Kaggle's 7b-quant checkpoints: the 7b config run with --quant (README @ 09eee7b L22-23).
SIZES["7b-quant"] = SIZES["7b"] | dict(quant=True)

OPTIONS = {
    "--variant": dict(choices=sorted(SIZES), help="use gemma_pytorch's preset for this size instead of a "
                                                  "config.json (-it and 1.1 checkpoints share their size's preset)"),
    "--gelu": dict(choices=sorted(GELU), default="tanh", help="MLP GELU: tanh (upstream since March 2024, the "
                                                               "default) or exact (the February 2024 release)"),
}

TINY: dict[str, Any] = dict(architecture="GEMMA_1", vocab_size=128, max_position_embeddings=32,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, hidden_size=32,
                            intermediate_size=64, head_dim=8, rms_norm_eps=1e-6, dtype="float32", quant=False,
                            tokenizer=None)

CASES: dict[str, Case] = {
    "mqa": Case("4 q heads on 1 kv head (the 2b ratio), model.ckpt with freqs_cis", {}),
    "mha-wide-heads": Case("4/4 heads of head_dim 16: heads*head_dim 64 != hidden 32 (as 7b's 4096 vs 3072)",
                           dict(num_key_value_heads=4, head_dim=16, intermediate_size=80, vocab_size=192)),
    "gqa-sharded-eps": Case("2 q heads per kv head, 3 layers, odd vocab 311, eps 1e-3, index + 2 shards, "
                            "no freqs_cis", dict(num_key_value_heads=2, num_hidden_layers=3, vocab_size=311,
                                                 rms_norm_eps=1e-3, freqs_cis=False), container="sharded"),
    "quant": Case("quant=True: int8 weights + per-row weight_scaler (the 7b-quant layout), GQA",
                  dict(quant=True, num_key_value_heads=2, head_dim=12, hidden_size=48)),
}


def shapes(config: dict[str, Any], layout: str = "default") -> dict[str, tuple[int, ...]]:
    """Every tensor ``GemmaForCausalLM`` holds for ``config`` (model.py L116-163, 200-212, 226-283, 517-556)."""
    c = DEFAULTS | config
    D, I, V, hd = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["head_dim"]  # noqa: E741
    qkv = (c["num_attention_heads"] + 2 * c["num_key_value_heads"]) * hd
    linear = {"embedder": (V, D)}
    out: dict[str, tuple[int, ...]] = {"freqs_cis": (2 * c["max_position_embeddings"], hd // 2)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        linear |= {p + "self_attn.qkv_proj": (qkv, D), p + "self_attn.o_proj": (D, c["num_attention_heads"] * hd),
                   p + "mlp.gate_proj": (I, D), p + "mlp.up_proj": (I, D), p + "mlp.down_proj": (D, I)}
        out |= {p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,)}
    for name, shape in linear.items():
        out[name + ".weight"] = shape
        if c["quant"] or layout == "quant":  # Linear/Embedding with quant=True: int8 weight + scaler [out]
            out[name + ".weight_scaler"] = shape[:1]
    return out | {"model.norm.weight": (D,)}


def tiny(seed: int = 0, layout: str = "default", freqs_cis: bool = True, **overrides: Any) -> SourceCheckpoint:
    """A random Gemma 1; ``layout="quant"`` (or ``quant=True``) stores int8 weights as ``quant=True`` does."""
    from harness.io.tiny import random_weights

    config = {**TINY, **overrides, **({"quant": True} if layout == "quant" else {})}
    floats = {k: s for k, s in shapes(config).items() if k != "freqs_cis" and not k.endswith("_scaler")}
    norms = ["*norm.weight"]
    # Gains as in the oracle data (README step 2): embedder 2/sqrt(H), qkv 1.5/sqrt(H).
    weights = random_weights(floats, seed, norms=norms, gains={"embedder.weight": 2.0, "*qkv_proj.weight": 1.5})
    for name in [k for k in weights if k.endswith("norm.weight")]:
        weights[name] -= 1  # upstream stores w and scales by (1 + w): keep the effective scale near 1, not 2
    if config["quant"]:
        for name in [k for k in weights if not k.endswith("norm.weight")]:
            weights[name], weights[name + "_scaler"] = quantize(weights[name])
    if freqs_cis:
        weights = {"freqs_cis": _freqs_cis(config["head_dim"], 2 * config["max_position_embeddings"])} | weights
    return SourceCheckpoint(config, TensorStore.from_dict(weights), "quant" if config["quant"] else "default")


def read(path: Path, config: Path | None = None, *, variant: str | None = None, gelu: str = "tanh"
         ) -> SourceCheckpoint:
    """A ``.ckpt`` file, or a directory holding one ``.ckpt`` or ``pytorch_model.bin.index.json`` + shards."""
    folder = path if path.is_dir() else path.parent
    params = _params(folder, config, variant)
    if gelu not in GELU:
        raise ConversionError(f"--gelu must be one of {', '.join(sorted(GELU))}, found {gelu!r}")
    if gelu != "tanh":
        params["hidden_activation"] = GELU[gelu]  # read by reference.py; not a GemmaConfig field
    if path.is_file():
        tensors = open_torch(path, key="model_state_dict")
    elif (folder / INDEX).is_file():
        tensors = TensorStore.merge(open_torch(f) for f in index_shards(folder / INDEX))
    else:
        ckpts = sorted(folder.glob("*.ckpt"))
        if len(ckpts) != 1:
            raise ConversionError(f"expected one .ckpt or {INDEX} in {folder}, found {len(ckpts)} .ckpt files; "
                                  f"pass the weights file itself")
        tensors = open_torch(ckpts[0], key="model_state_dict")
    scaled = any(k.endswith(".weight_scaler") for k in tensors)
    if scaled != bool(params["quant"]):
        raise ConversionError(f"config says quant={params['quant']} but the weights in {path} "
                              f"{'hold' if scaled else 'lack'} *.weight_scaler tensors; set quant to {scaled}")
    return SourceCheckpoint(params, tensors, "quant" if scaled else "default", path)


def write(checkpoint: SourceCheckpoint, path: Path, container: str = "ckpt", shards: int = 2) -> None:
    """``config.json`` plus ``model.ckpt`` ({'model_state_dict': ...}) or an index + plain-dict shards."""
    import torch

    container = "ckpt" if container == "default" else container
    if container not in CONTAINERS:
        raise ConversionError(f"unknown container {container!r}; choose one of {', '.join(CONTAINERS)}")
    path.mkdir(parents=True, exist_ok=True)
    # hidden_activation is the --gelu conversion option, not a GemmaConfig field: it is not written.
    config = {k: v for k, v in checkpoint.config.items() if k != "hidden_activation"}
    (path / CONFIG_JSON).write_text(json.dumps(config, indent=2) + "\n")
    tensors = {k: checkpoint.tensors[k].contiguous() for k in checkpoint.tensors}
    if container == "ckpt":
        torch.save({"model_state_dict": tensors}, path / CKPT)
        return
    keys, weight_map = list(tensors), {}
    for i in range(shards):  # contiguous runs of keys, as save_pretrained-style sharding does
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = keys[i * len(keys) // shards: (i + 1) * len(keys) // shards]
        torch.save({k: tensors[k] for k in part}, path / name)
        weight_map |= dict.fromkeys(part, name)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (path / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _params(folder: Path, config: Path | None, variant: str | None) -> dict[str, Any]:
    if variant is not None:
        if config is not None:
            raise ConversionError("pass either --config FILE or --variant, not both")
        if variant not in SIZES:
            raise ConversionError(f"unknown --variant {variant!r}; choose one of {', '.join(sorted(SIZES))}")
        return dict(SIZES[variant])
    file = config or folder / CONFIG_JSON
    params = read_json_config(file, f"gemma_pytorch GemmaConfig fields; pass --config FILE or "
                                    f"--variant {{{','.join(sorted(SIZES))}}}")
    if "hidden_activation" in params:
        raise ConversionError(f"{file}: hidden_activation is not a GemmaConfig field; pass --gelu exact instead")
    _check_gemma_1(params, file)
    return DEFAULTS | params


def _check_gemma_1(params: dict[str, Any], file: Path) -> None:
    """Gemma 2/3 reuse GemmaConfig; their fields select code (model.py L470-471) this converter lacks."""
    if params.get("architecture", "GEMMA_1") not in ("GEMMA_1", 1):
        raise ConversionError(f"{file}: architecture is {params['architecture']!r}, expected GEMMA_1; "
                              f"this converter handles Gemma 1 only")
    enabled = sorted(k for k in LATER_FIELDS if params.get(k)) + (
        ["rope_scaling_factor"] if params.get("rope_scaling_factor") not in (None, 1) else [])
    if enabled:
        raise ConversionError(f"{file}: Gemma 2/3 field(s) {enabled} are set; Gemma 1 leaves them null/false")


def _freqs_cis(head_dim: int, n: int) -> torch.Tensor:
    """model.py L91-101 ``precompute_freqs_cis`` (theta 10000): the buffer released checkpoints carry."""
    import torch

    # Computed in float64 and rounded once, so that the stored buffer has the same bits on every CPU.
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2)[: head_dim // 2].double() / head_dim)
    angles = torch.outer(torch.arange(n).double(), inv_freq)  # (n, head_dim/2)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)
