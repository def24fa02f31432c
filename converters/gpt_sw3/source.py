"""NeMo 1.x Megatron GPT checkpoints, as GPT-SW3 was trained and released: a Lightning ``.ckpt`` or a ``.nemo``.

A ``.ckpt`` is ``{'hyper_parameters': {'cfg': CFG}, 'state_dict': SD, ...}``; NeMo saves CFG as an omegaconf
``DictConfig`` (NeMo @ 4a566310 ``core/classes/modelPT.py`` L118), older tools as a plain dict. A ``.nemo`` is a
tar of ``model_config.yaml``, ``model_weights.ckpt`` (SD alone) and the tokenizer model (NeMo
``core/connectors/save_restore_connector.py``). The real vocabulary size is in neither cfg nor weights: the
word embedding is padded to a multiple of ``make_vocab_size_divisible_by`` (fact 12 of the oracle README), so it
comes from ``vocab_size=`` or the tokenizer. ``SourceCheckpoint.config`` is the cfg plus two fields of ours,
``vocab_size`` (real) and ``padded_vocab_size`` (embedding rows); ``write`` leaves both out of the cfg again.
The byte-level container code (restricted unpickling, tar, sentencepiece) is in ``nemo.py``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from converters.gpt_sw3.nemo import count_pieces, parse_yaml, read_ckpt, read_nemo, write_ckpt, write_nemo
from harness.errors import ConversionError
from harness.family.cases import Case
from harness.io.source_files import read_bytes
from harness.io.tensor_store import TensorStore
from harness.io.tiny import random_weights
from harness.mapping.conversion import SourceCheckpoint

__all__ = ["CASES", "CONTAINERS", "HUB_FILES", "OPTIONS", "SIZES", "UPSTREAM_OPTIONS", "read", "shapes", "tiny",
           "write"]

# What `convert`/`verify` fetch for a Hub id as SOURCE: one .nemo (config and tokenizer inside) or .ckpt.
HUB_FILES = ("*.nemo", "*.ckpt")

CONTAINERS = ("ckpt", "ckpt-dictconfig", "nemo")
OURS = ("vocab_size", "padded_vocab_size")  # not NeMo cfg fields: what read() learns about the vocabulary
PREFIX = "model.language_model."
OPTIONS = {"--vocab-size": dict(type=int, metavar="N", help="the tokenizer's real vocabulary size (GPT-SW3: "
                                "64000); the checkpoint only holds the padded embedding")}
UPSTREAM_OPTIONS = ("vocab_size",)

_COMMON = dict(max_position_embeddings=2048, encoder_seq_length=2048, layernorm_epsilon=1e-5, vocab_size=64000,
               make_vocab_size_divisible_by=128, kv_channels=None)
# Released sizes as NeMo cfg fields; numbers from the Hub config.json of AI-Sweden-Models/gpt-sw3-<size>
# (n_embd, n_layer, n_head, n_inner, n_positions 2048, vocab_size 64000, layer_norm_epsilon 1e-5).
SIZES: dict[str, dict[str, Any]] = {
    "126m": dict(hidden_size=768, num_layers=12, num_attention_heads=12, ffn_hidden_size=3072, **_COMMON),
    "356m": dict(hidden_size=1024, num_layers=24, num_attention_heads=16, ffn_hidden_size=4096, **_COMMON),
    "1.3b": dict(hidden_size=2048, num_layers=24, num_attention_heads=32, ffn_hidden_size=8192, **_COMMON),
    "6.7b": dict(hidden_size=4096, num_layers=32, num_attention_heads=32, ffn_hidden_size=16384, **_COMMON),
    "20b": dict(hidden_size=6144, num_layers=44, num_attention_heads=48, ffn_hidden_size=24576, **_COMMON),
    "40b": dict(hidden_size=8192, num_layers=48, num_attention_heads=64, ffn_hidden_size=32768, **_COMMON),
}

# A cut-down NeMo 1.16 `model:` section (megatron_gpt_config.yaml); the upstream cases carry the whole one.
TINY: dict[str, Any] = dict(
    hidden_size=32, num_layers=2, num_attention_heads=4, ffn_hidden_size=128, kv_channels=None,
    max_position_embeddings=64, encoder_seq_length=64, layernorm_epsilon=1e-5, vocab_size=128,
    make_vocab_size_divisible_by=128, tensor_model_parallel_size=1, apply_query_key_layer_scaling=True,
    normalization="layernorm", bias=True, activation="gelu", openai_gelu=False, bias_activation_fusion=True,
    position_embedding_type="learned_absolute", share_embeddings_and_output_weights=True, hidden_dropout=0.1,
    precision=16, tokenizer=dict(library="sentencepiece", model="nemo:tokenizer.model"),
    optim=dict(name="fused_adam", lr=2e-4, betas=[0.9, 0.98]), nemo_version="1.16.0rc0",
    target="nemo.collections.nlp.models.language_modeling.megatron_gpt_model.MegatronGPTModel",
)

CASES: dict[str, Case] = {
    "nemo-padvocab": Case(".nemo archive; vocab 200 read from its tokenizer.model, embedding padded to 256, "
                          "tanh GELU (NeMo's default bias_activation_fusion)", dict(vocab_size=200), "nemo"),
    "dictconfig-erf": Case("cfg as an omegaconf DictConfig (safe allow-list), bias_activation_fusion False -> "
                           "exact GELU, 3 layers, ffn 72 (not 4h)", dict(bias_activation_fusion=False, num_layers=3,
                                                                         ffn_hidden_size=72), "ckpt-dictconfig"),
    "openai-gelu": Case("plain-dict cfg, openai_gelu (tanh), 2 heads of 16, eps 1e-6, no query-key layer scaling",
                        dict(openai_gelu=True, num_attention_heads=2, layernorm_epsilon=1e-6,
                             apply_query_key_layer_scaling=False)),
}


def padded_vocab(config: dict[str, Any]) -> int:
    """Embedding rows: as read, or NeMo's padding (megatron_base_model.py L190-203) of the real vocabulary."""
    if config.get("padded_vocab_size"):
        return int(config["padded_vocab_size"])
    multiple = config.get("make_vocab_size_divisible_by", 128) * config.get("tensor_model_parallel_size", 1)
    return math.ceil(config["vocab_size"] / multiple) * multiple


def shapes(config: dict[str, Any], layout: str = "default") -> dict[str, tuple[int, ...]]:
    """Every tensor of NeMo's ``MegatronGPTModel`` state dict (TP = PP = 1, tied output, legacy names)."""
    h, heads, ffn = config["hidden_size"], config["num_attention_heads"], config["ffn_hidden_size"]
    inner = heads * (config.get("kv_channels") or h // heads)  # projection width (legacy transformer.py)
    out: dict[str, tuple[int, ...]] = {PREFIX + "embedding.word_embeddings.weight": (padded_vocab(config), h),
                                       PREFIX + "embedding.position_embeddings.weight":
                                           (config["max_position_embeddings"], h)}
    layer = {"input_layernorm.weight": (h,), "input_layernorm.bias": (h,),
             "self_attention.query_key_value.weight": (3 * inner, h),
             "self_attention.query_key_value.bias": (3 * inner,),
             "self_attention.dense.weight": (h, inner), "self_attention.dense.bias": (h,),
             "post_attention_layernorm.weight": (h,), "post_attention_layernorm.bias": (h,),
             "mlp.dense_h_to_4h.weight": (ffn, h), "mlp.dense_h_to_4h.bias": (ffn,),
             "mlp.dense_4h_to_h.weight": (h, ffn), "mlp.dense_4h_to_h.bias": (h,)}
    for i in range(config["num_layers"]):
        out |= {f"{PREFIX}encoder.layers.{i}.{k}": s for k, s in layer.items()}
    return out | {PREFIX + "encoder.final_layernorm.weight": (h,), PREFIX + "encoder.final_layernorm.bias": (h,)}


def tiny(seed: int = 0, layout: str = "default", **overrides: Any) -> SourceCheckpoint:
    """A random NeMo GPT; ``vocab_size`` is the real vocabulary, padded as NeMo pads it."""
    config = {**TINY, **overrides}
    config["padded_vocab_size"] = padded_vocab({**config, "padded_vocab_size": None})
    words = PREFIX + "embedding.word_embeddings.weight"
    weights = random_weights(shapes(config), seed, norms=["*layernorm.weight"], embeddings=["*embeddings.weight"],
                             gains={"*query_key_value.weight": 1.5})
    # Zero padding rows: invert() cannot know them, so the invert round trip stays bit-exact. The upstream
    # cases keep Megatron's random non-zero padding rows.
    weights[words][config["vocab_size"]:] = 0
    return SourceCheckpoint(config, TensorStore.from_dict(weights))


def read(path: Path, config: Path | None = None, vocab_size: int | None = None) -> SourceCheckpoint:
    """A ``.ckpt`` or ``.nemo`` file, or the directory holding exactly one; ``config`` replaces the stored cfg."""
    path = _only_checkpoint(path)
    if path.suffix == ".nemo":
        cfg, tensors, tokenizer = read_nemo(path)
    else:
        cfg, tensors, tokenizer = (*read_ckpt(path), None)
    if config is not None:
        cfg = _read_config_file(config)
    words = PREFIX + "embedding.word_embeddings.weight"
    shape = tensors.meta(words)[0] if words in tensors else None
    if shape is None or len(shape) != 2:
        found = "no" if shape is None else f"a {shape}-shaped"
        raise ConversionError(f"{path} has {found} {words}; expected NeMo's 2-D word embedding [padded "
                              "vocabulary, hidden_size], from which the vocabulary size is read")
    rows = shape[0]
    real, notes = _vocab_size(vocab_size, tokenizer, rows, path)
    return SourceCheckpoint({**cfg, "vocab_size": real, "padded_vocab_size": rows}, tensors, path=path, notes=notes)


def write(checkpoint: SourceCheckpoint, path: Path, container: str = "ckpt") -> None:
    """``model.ckpt`` (plain-dict or DictConfig cfg) or ``model.nemo`` with a tokenizer model, into ``path``."""
    container = "ckpt" if container == "default" else container
    if container not in CONTAINERS:
        raise ConversionError(f"unknown container {container!r}; choose one of {', '.join(CONTAINERS)}")
    path.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in checkpoint.config.items() if k not in OURS}
    state = {k: checkpoint.tensors[k].contiguous() for k in checkpoint.tensors}
    if container == "nemo":
        write_nemo(path / "model.nemo", cfg, state, checkpoint.config["vocab_size"])
    else:
        write_ckpt(path / "model.ckpt", cfg, state, dictconfig=container == "ckpt-dictconfig")


def _only_checkpoint(path: Path) -> Path:
    if path.is_file():
        return path
    found = sorted(p for p in path.iterdir() if p.suffix in (".ckpt", ".nemo")) if path.is_dir() else []
    if len(found) != 1:
        what = ", ".join(p.name for p in found) or "none"
        raise ConversionError(f"expected one NeMo .ckpt or .nemo file in {path}, found {what}; pass the file")
    return found[0]


def _vocab_size(given: int | None, tokenizer: tuple[str, bytes] | None, rows: int, path: Path
                ) -> tuple[int, list[str]]:
    pieces = count_pieces(tokenizer[1]) if tokenizer else None
    if given is None and pieces is None:
        return rows, [f"the real vocabulary size is not stored in {path}; kept all {rows} rows of the padded "
                      f"embedding; pass --vocab-size N (GPT-SW3: 64000) to cut the padding rows"]
    real = given if given is not None else pieces
    if not 0 < real <= rows:
        raise ConversionError(f"vocabulary size {real} does not fit the {rows}-row word embedding in {path}; "
                              "pass the tokenizer's real --vocab-size")
    notes = [f"vocabulary size {real} from the tokenizer {tokenizer[0]} in {path}"] if given is None else []
    if given is not None and pieces is not None and pieces != given:
        notes.append(f"--vocab-size {given} overrides the {pieces} pieces of the tokenizer {tokenizer[0]}")
    return real, notes


def _read_config_file(config: Path) -> dict[str, Any]:
    if not config.exists():
        raise ConversionError(f"config file {config} does not exist; pass a NeMo model_config.yaml")
    return parse_yaml(read_bytes(config, "NeMo model_config.yaml"), config)
