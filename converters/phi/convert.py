"""Phi: Microsoft's original phi-msft / mixformer-sequential checkpoints -> transformers ``PhiForCausalLM``.

Mirrors the remote code on the Hub (golden/upstream/phi/README.md): phi-msft ``modeling_phi.py`` @
awilliamson10/phineas@fe9cf5fb (``msft:``), its ``configuration_phi.py`` (``cfg:``) and mixformer
``modeling_mixformer_sequential.py`` @ StarHawkMK1/myphi@92557d03 (``mix:``, first upload ``mix0:`` @ 16982066).
The target is transformers 5.23 ``models/phi`` (``tf5:``). Its ``conversion_mapping.py`` knows neither original
layout, so every key is renamed here. Both layouts share one block: a single LayerNorm feeding attention and
MLP in parallel (msft:767-781), which is ``input_layernorm`` in transformers (tf5:257, 286).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from converters.phi.source import DEFAULTS, shapes, sizes
from harness.errors import ConversionError
from harness.family.tables import KeyTables
from harness.mapping.config_kinds import (
    Bool,
    Count,
    Divides,
    NonNegativeFloat,
    Optional,
    PositiveFloat,
    PositiveInt,
    Probability,
    String,
)
from harness.mapping.config_map import REQUIRED, ConfigMap, Field
from harness.mapping.keymap import KeyMap, Layouts
from harness.mapping.rules import Drop, Rename, RenameAt, RuleLike, Split

__all__ = ["CONFIG", "KEYS", "TABLES"]

ROPE_THETA = 10000.0  # MHA(rotary_base=10000.0) (msft:518); never read from the config


def _model_type(value: str) -> str:
    if value not in ("phi-msft", "mixformer-sequential"):
        raise ConversionError(f"config.json: model_type {value!r} is not an original Phi layout; expected 'phi-msft'"
                              " or 'mixformer-sequential' (a transformers 'phi' folder needs no conversion)")
    return "phi"


def _rope(rotary_dim: int, n_embd: int, n_head: int) -> tuple[dict[str, Any], float]:
    """tf5:168 takes ``int(head_dim * factor)`` dims: pick the smallest float factor that gives exactly rotary_dim.

    rotary_dim/head_dim can round down (30/44·44 = 29.999...); nudging it up one ulp at a time fixes that.
    transformers 4.x reads the factor at the top level and ignores rope_parameters: it is written there too.
    """
    head_dim = n_embd // n_head
    rotary = min(rotary_dim, head_dim)  # clamped to head_dim by the config class (cfg:51)
    factor = rotary / head_dim
    while int(head_dim * factor) < rotary:
        factor = math.nextafter(factor, math.inf)
    return {"rope_type": "default", "rope_theta": ROPE_THETA, "partial_rotary_factor": factor}, factor


def _rotary_dim(rope: Mapping[str, Any], factor: float, n_embd: int, n_head: int) -> int:
    return int(n_embd // n_head * factor)


def _untied(value: bool) -> bool:
    if value:
        raise ConversionError("config.json: tie_word_embeddings is true, but Phi's lm_head.linear is its own biased "
                              "Linear (msft:798-803); set it to false")
    return False


def _vocab_rows(vocab_size: int, multiple: int) -> int:
    return math.ceil(vocab_size / multiple) * multiple  # padded by the config class (cfg:44)


_AS_STATED = "a null comes back as the number it stands for"
CONFIG = ConfigMap(
    [
        Field("model_type", "model_type", default="phi-msft", to_target=_model_type, to_source=lambda v: "phi-msft",
              kind=String, lossy="mixformer-sequential comes back as phi-msft, the newer layout"),
        Field("n_embd", "hidden_size", kind=PositiveInt),
        Field("n_layer", "num_hidden_layers", kind=Count),
        Field("n_head", "num_attention_heads", kind=PositiveInt),
        Field("n_head_kv", "num_key_value_heads", default=DEFAULTS["n_head_kv"], reads=("n_head",),
              to_target=lambda kv, n_head: kv or n_head, kind=Optional(PositiveInt), lossy=_AS_STATED),  # msft:473
        Field("n_inner", "intermediate_size", default=DEFAULTS["n_inner"], reads=("n_embd",),
              to_target=lambda inner, n_embd: inner or 4 * n_embd, kind=Optional(PositiveInt),
              lossy=_AS_STATED),  # msft:313
        Field("n_positions", "max_position_embeddings", default=DEFAULTS["n_positions"], kind=PositiveInt),
        Field("rotary_dim", ("rope_parameters", "partial_rotary_factor"), default=DEFAULTS["rotary_dim"],
              reads=("n_embd", "n_head"), to_target=_rope, to_source=_rotary_dim, kind=PositiveInt,
              lossy="a rotary_dim above head_dim comes back as head_dim"),
        Field("activation_function", "hidden_act", default=DEFAULTS["activation_function"],  # ACT2FN (msft:317)
              kind=String),
        Field("layer_norm_epsilon", "layer_norm_eps", default=DEFAULTS["layer_norm_epsilon"], kind=PositiveFloat),
        # The embedding has the padded row count (cfg:44) and so do the logits: vocab_size = rows, never cut.
        Field(("vocab_size", "pad_vocab_size_multiple"), "vocab_size",
              default=(REQUIRED, DEFAULTS["pad_vocab_size_multiple"]), kind=PositiveInt, to_target=_vocab_rows,
              to_source=lambda rows: (rows, 1), lossy="the padded rows come back as the vocabulary (multiple 1)"),
        Field("resid_pdrop", "resid_pdrop", default=DEFAULTS["resid_pdrop"], kind=Probability),
        Field("embd_pdrop", "embd_pdrop", default=DEFAULTS["embd_pdrop"], kind=Probability),
        Field("attn_pdrop", "attention_dropout", default=DEFAULTS["attn_pdrop"], kind=Probability),
        Field("initializer_range", "initializer_range", default=DEFAULTS["initializer_range"], kind=NonNegativeFloat),
        Field("tie_word_embeddings", "tie_word_embeddings", default=False, to_target=_untied, kind=Bool),
    ],
    fixed={
        "architectures": ["PhiForCausalLM"],
        "qk_layernorm": False,  # the original has no q/k LayerNorm
        "rope_theta": ROPE_THETA,  # transformers 4.x reads it here; 5.x from rope_parameters
    },
    ignored={
        "_name_or_path": "where save_pretrained loaded from; no numerics",
        "architectures": "the original class name; the output is PhiForCausalLM",
        "auto_map": "remote-code entry points; the output needs no remote code",
        "torch_dtype": "storage dtype of the weights; the tensors carry their own",
        "transformers_version": "the version that wrote the file",
        "flash_attn": "picks FlashSelfAttention over SelfAttention, same math (MHA.__init__)",
        "flash_rotary": "picks FlashRotaryEmbedding over RotaryEmbedding, same math (MHA.__init__)",
        "fused_dense": "picks FusedDense over nn.Linear, same weights (MHA.__init__)",
        "architecture": "first-upload block/mixer/mlp classes; only 'parallel' + 'mlp' exist in the released "
                        "files, and any other MLP class names keys that the ledger rejects",
        "embd_layer": "first-upload embedding class; 'default' is the plain wte lookup",
        "phyagi_version": "version of Microsoft's training library",
        "img_processor": "phi-2's unused multimodal hook; null in every release",
    },
    name="config.json",
    checks=[
        Divides("n_head", "n_embd", why="out_proj is Linear(n_embd, n_embd) over n_head heads (msft:563)"),
        Divides("n_head_kv", "n_head", why="each kv head serves a whole group of q heads"),
        Divides(2, "rotary_dim", why="rotary embeddings rotate dimensions in pairs"),
    ],
)

_BLOCK = {  # source block suffix -> transformers decoder-layer suffix (msft:753, 562-563, 315-316)
    "ln": "input_layernorm", "mixer.out_proj": "self_attn.dense", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_ATTN = "model.layers.{layer}.self_attn"
_DROP = Drop("*rotary_emb.inv_freq", reason="rotary cache, recomputed from rope_theta (mix0:75 stored it)",
             optional=True)


def _table(embed: str, block: str, head: str, at: str | None = None) -> list[RuleLike]:
    """One layout's rules: ``block`` is the decoder layer's key prefix, ``head`` the LM head's (indexed by ``at``)."""
    rules: list[RuleLike] = [Rename(embed, "model.embed_tokens.weight"), _DROP]
    for p in ("weight", "bias"):
        rules += [Rename(f"{block}.{src}.{p}", f"model.layers.{{layer}}.{dst}.{p}") for src, dst in _BLOCK.items()]
        # Wqkv rows are [Q | K | V], each head-major (msft:594, 633-637): a plain row split, NOT per-head interleaved.
        rules.append(Split(f"{block}.mixer.Wqkv.{p}", [f"{_ATTN}.{x}_proj.{p}" for x in "qkv"],
                           heads="n_head", kv_heads="n_head_kv"))
    for p in ("weight", "bias"):
        for src, dst in ((f"{head}.ln.{p}", f"model.final_layernorm.{p}"), (f"{head}.linear.{p}", f"lm_head.{p}")):
            rules.append(Rename(src, dst) if at is None else RenameAt(src, dst, at=at))  # msft:798-803
    return rules


_MIXFORMER = KeyMap(_table("layers.0.wte.weight", "layers.{layer+1}", "layers.{head}", at="head"),
                    {"layer": "n_layer", "head": lambda d: [d["n_layer"] + 1]}, sizes)  # mix:817-821
KEYS = Layouts("phi", {
    "phi-msft": KeyMap(_table("transformer.embd.wte.weight", "transformer.h.{layer}", "lm_head"),
                       {"layer": "n_layer"}, sizes),  # msft:895-896, 933-934
    "mixformer-sequential": _MIXFORMER,
    "mixformer-v0": _MIXFORMER,  # same keys plus the inv_freq buffers that _DROP removes
}, default="phi-msft", title="Phi")

TABLES = KeyTables(CONFIG, KEYS, shapes)  # convert and invert as the tables say
