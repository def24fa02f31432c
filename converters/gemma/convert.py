"""Gemma 1: google/gemma_pytorch checkpoints -> transformers ``GemmaForCausalLM``.

Mirrors ``gemma/model.py`` and ``gemma/config.py`` of github.com/google/gemma_pytorch @ 014acb7a (the
``Architecture.GEMMA_1`` path; line numbers below). Facts from golden/upstream/gemma/README.md: the fused
``qkv_proj`` is split by rows; q/k need no rotary permutation (upstream rotates halves, as transformers does);
norm weights are copied as stored (both sides apply 1 + w); the LM head is the embedder.
"""

from __future__ import annotations

from typing import Any

from converters.gemma.source import DEFAULTS, shapes
from harness.family.tables import KeyTables
from harness.mapping.config_kinds import Bool, Count, Divides, OneOf, PositiveFloat, PositiveInt, Valid
from harness.mapping.config_map import ConfigMap, Field
from harness.mapping.keymap import KeyMap, Layouts
from harness.mapping.rules import Dequantize, DequantizeSplit, Drop, Rename, Split, Tie

__all__ = ["CONFIG", "KEYS", "TABLES"]

# reference.py's hidden_activation -> transformers hidden_act. "gelu" would be rewritten to tanh by
# GemmaConfig.__post_init__ (transformers 5.x), so exact erf GELU is spelled "gelu_python".
_ACT = {"gelu_tanh": "gelu_pytorch_tanh", "gelu_exact": "gelu_python"}
_LATER = "a Gemma 2/3 feature; source.read refuses it unless null/false"

CONFIG = ConfigMap(
    [
        # no padding rows: embedder has exactly vocab_size rows (L524)
        Field("vocab_size", "vocab_size", kind=PositiveInt),
        Field("hidden_size", "hidden_size", kind=PositiveInt),
        Field("intermediate_size", "intermediate_size", kind=PositiveInt),
        Field("num_hidden_layers", "num_hidden_layers", kind=Count),
        Field("num_attention_heads", "num_attention_heads", kind=PositiveInt),
        Field("num_key_value_heads", "num_key_value_heads", kind=PositiveInt),
        # Independent of hidden/heads (7b: 16 * 256 != 3072); transformers must be told (L226-239).
        Field("head_dim", "head_dim", default=DEFAULTS["head_dim"], kind=PositiveInt),
        Field("rms_norm_eps", "rms_norm_eps", default=DEFAULTS["rms_norm_eps"], kind=PositiveFloat),
        Field("max_position_embeddings", "max_position_embeddings", default=DEFAULTS["max_position_embeddings"],
              kind=PositiveInt),
        # F.gelu(approximate="tanh") since 0a7afad (L206-212); --gelu exact for the Feb-2024 code (09eee7b L197).
        Field("hidden_activation", "hidden_act", default="gelu_tanh", to_target=lambda v: _ACT[v],
              to_source=lambda v: {hf: ours for ours, hf in _ACT.items()}[v], kind=OneOf(*_ACT)),
    ],
    fixed={
        "model_type": "gemma",
        "architectures": ["GemmaForCausalLM"],
        "tie_word_embeddings": True,  # Sampler: logits = h @ embedder.weight.T (L50, 608-619)
        "attention_bias": False,  # Linear has no bias (L116-138)
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},  # _register_freqs_cis (L551-556)
        "rope_theta": 10000.0,  # where transformers 4.x reads it (5.x reads rope_parameters)
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,  # the SentencePiece model's ids
    },
    ignored={
        "architecture": "must be GEMMA_1 (source.read checks it)",
        "dtype": "activation dtype chosen at load time; tensors carry their own",
        "quant": "selects the int8 key table; weights are dequantised",
        "tokenizer": "path of the SentencePiece model, not part of the weights",
        "rope_scaling_factor": _LATER, **dict.fromkeys(
            ["attn_types", "sliding_window_size", "final_logit_softcapping", "attn_logit_softcapping",
             "query_pre_attn_scalar", "use_pre_ffw_norm", "use_post_ffw_norm", "rope_wave_length",
             "use_qk_norm", "vision_config"], _LATER),
    },
    name="config.json",
    checks=[
        Divides("num_key_value_heads", "num_attention_heads", why="each kv head serves a whole group of q heads "
                "(L301-306)"),
        Divides(2, "head_dim", why="rotary embeddings pair the two halves of each head (L91-101)"),
        Valid("quant", Bool),  # selects the int8 key table
    ],
)

_L = "model.layers.{layer}"  # upstream and transformers share the per-layer names
_QKV = [f"{_L}.self_attn.q_proj.weight", f"{_L}.self_attn.k_proj.weight", f"{_L}.self_attn.v_proj.weight"]
_LINEAR = ["self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]  # same names both sides
_NORMS = [
    # (1 + w) on both sides (RMSNorm add_unit_offset, L166-190; GemmaRMSNorm): copy w as stored.
    Rename(f"{_L}.input_layernorm.weight", f"{_L}.input_layernorm.weight"),
    Rename(f"{_L}.post_attention_layernorm.weight", f"{_L}.post_attention_layernorm.weight"),  # pre-MLP norm
    Rename("model.norm.weight", "model.norm.weight"),
    Tie("lm_head.weight", to="model.embed_tokens.weight"),
    Drop("freqs_cis", reason="rotary table (L554-555); transformers recomputes it", optional=True),
]
_RANGES = {"layer": "n_layers"}


def _dims(c: dict[str, Any]) -> dict[str, int]:
    return {"n_layers": c["num_hidden_layers"], "n_heads": c["num_attention_heads"],
            "n_kv_heads": c["num_key_value_heads"], "head_dim": c["head_dim"]}


KEYS = Layouts("gemma", {
    "default": KeyMap([
        Rename("embedder.weight", "model.embed_tokens.weight"),  # sqrt(hidden) is applied at run time (L593-598)
        # Rows [heads*hd | kv*hd | kv*hd], head-major (L277-283); kv head grouping matches repeat_kv (L301-306).
        Split(f"{_L}.self_attn.qkv_proj.weight", _QKV),
        *(Rename(f"{_L}.{m}.weight", f"{_L}.{m}.weight") for m in _LINEAR),
        *_NORMS,
    ], _RANGES, _dims),
    # quant=True: every Linear and the Embedding hold int8 weight + weight_scaler [out] (L133-138, 158-163).
    "quant": KeyMap([
        Dequantize("embedder.weight", "embedder.weight_scaler", "model.embed_tokens.weight"),
        DequantizeSplit(f"{_L}.self_attn.qkv_proj.weight", f"{_L}.self_attn.qkv_proj.weight_scaler", _QKV),
        *(Dequantize(f"{_L}.{m}.weight", f"{_L}.{m}.weight_scaler", f"{_L}.{m}.weight") for m in _LINEAR),
        *_NORMS,
    ], _RANGES, _dims),
}, title="Gemma")

# gemma_pytorch stores int8 weights with their scales when its config says quant=True: the layout follows the config.
TABLES = KeyTables(CONFIG, KEYS, shapes, layout=lambda source: "quant" if source.config.get("quant") else "default")
