"""GPT-SW3: NeMo 1.x Megatron GPT (``.ckpt`` / ``.nemo``) -> transformers ``GPT2LMHeadModel``.

Mirrors Megatron-LM's legacy GPT (``megatron/legacy/model`` @ fd443f26) as NeMo @ 4a566310 configures it;
"fact N" is golden/upstream/gpt_sw3/README.md. Replaces transformers' ``gpt_sw3/convert_megatron_to_pytorch.py``
(@ 01192f05), which hard-coded exact GELU and vocab 64000 and wrote attention buffers GPT-2 no longer has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from converters.gpt_sw3.source import shapes
from harness.errors import ConversionError
from harness.family.tables import KeyTables
from harness.mapping.config_kinds import Bool, Count, Divides, NotAbove, Optional, PositiveFloat, PositiveInt, Valid
from harness.mapping.config_map import REQUIRED, ConfigMap, Field
from harness.mapping.conversion import Converted, SourceCheckpoint, convert_with
from harness.mapping.keymap import KeyMap, Layouts
from harness.mapping.rules import CutVocab, Drop, GroupQKV, Rename, Tie, Transpose

__all__ = ["CONFIG", "IGNORED", "KEYS", "ONNX_SAFE_NOTE", "TABLES", "convert"]


def _activation(fusion: bool, openai_gelu: bool, onnx_safe: bool) -> str:
    # ParallelMLP (legacy/model/transformer.py L132-147): openai_gelu (tanh), else onnx_safe erf_gelu (erf with
    # x/1.41421: the nearest transformers activation, exact GELU, differs by ~1e-6 relative per activation; see
    # ONNX_SAFE_NOTE), else the bias-GELU fusion, which is tanh and NeMo's default (fact 9).
    tanh = openai_gelu or (not onnx_safe and fusion)
    return "gelu_pytorch_tanh" if tanh else "gelu"


_CHECKED = "only the value GPT-2 computes is accepted (checked in convert)"
_TRAINING = "training-only setting; no effect on the forward pass"
IGNORED: dict[str, str] = {
    **dict.fromkeys(["micro_batch_size", "global_batch_size", "init_method_std", "use_scaled_init_method",
                     "do_layer_norm_weight_decay", "native_amp_init_scale", "native_amp_growth_interval",
                     "hysteresis", "fp16_lm_cross_entropy", "grad_allreduce_chunk_size_mb", "grad_div_ar_fusion",
                     "gradient_accumulation_fusion", "bias_dropout_add_fusion", "masked_softmax_fusion", "seed",
                     "resume_from_checkpoint", "use_cpu_initialization", "apex_transformer_log_level",
                     "gradient_as_bucket_view", "sync_batch_comm", "activations_checkpoint_granularity",
                     "activations_checkpoint_method", "activations_checkpoint_num_layers",
                     "num_micro_batches_with_partial_activation_checkpoints", "sequence_parallel",
                     "activations_checkpoint_layers_per_pipeline", "persist_layer_norm", "optim", "data",
                     "fp32_residual_connection", "megatron_amp_O2"], _TRAINING),
    **dict.fromkeys(["hidden_dropout", "attention_dropout", "ffn_dropout"], "dropout is off in eval; GPT-2 "
                    "defaults apply for fine-tuning"),
    **dict.fromkeys(["tensor_model_parallel_size", "pipeline_model_parallel_size",
                     "virtual_pipeline_model_parallel_size", "pre_process", "post_process"],
                    "a .ckpt of one rank holds whole tensors; shards fail the shape check"),
    **dict.fromkeys(["normalization", "bias", "activation", "headscale", "transformer_block_type",
                     "normalize_attention_scores", "position_embedding_type", "attention_type",
                     "share_embeddings_and_output_weights", "kv_channels"], _CHECKED),
    "rotary_percentage": "used only by rotary position embeddings, which GPT-SW3 does not use",
    "encoder_seq_length": "training sequence length; positions come from max_position_embeddings (fact 8)",
    "apply_query_key_layer_scaling": "a numerical trick that cancels in the fp32 softmax (fact 6)",
    "make_vocab_size_divisible_by": "the padded size is the stored embedding's row count (fact 12)",
    "tokenizer": "token ids and vocabulary live in the tokenizer, not the model (fact 14)",
    "precision": "the training precision; tensor dtypes are read from the weights (fact 14)",
    "target": "NeMo class path added on save", "nemo_version": "added on save",
}

CONFIG = ConfigMap(
    [
        Field("hidden_size", "n_embd", kind=PositiveInt),
        Field("num_layers", "n_layer", kind=Count),
        Field("num_attention_heads", "n_head", kind=PositiveInt),
        Field("ffn_hidden_size", "n_inner", kind=PositiveInt),  # not always 4·h (fact 14)
        Field("max_position_embeddings", "n_positions", kind=PositiveInt),
        # megatron_gpt_config.yaml default
        Field("layernorm_epsilon", "layer_norm_epsilon", default=1e-5, kind=PositiveFloat),
        # vocab_size is the real vocabulary (fact 12), set by read(); the embedding's padded row count leaves
        # config.json as that. Inverted, NeMo's default padding to a multiple of 128 (make_vocab_size_divisible_by).
        Field(("vocab_size", "padded_vocab_size"), "vocab_size", default=(REQUIRED, None),
              kind=(PositiveInt, Optional(PositiveInt)), to_target=lambda vocab, padded: vocab,
              to_source=lambda vocab: (vocab, math.ceil(vocab / 128) * 128),
              lossy="padded_vocab_size comes back as the next multiple of 128"),
        # Three cfg switches pick one activation (fact 9); absent fusion means True (megatron_gpt_model.py L192).
        Field(("bias_activation_fusion", "openai_gelu", "onnx_safe"), "activation_function",
              default=(True, False, False), kind=Bool, to_target=_activation,
              to_source=lambda act: (act != "gelu", False, False),
              lossy="tanh comes back as the fusion (not openai_gelu), exact GELU as no switch (not onnx_safe)"),
    ],
    fixed={
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "scale_attn_weights": True,  # softmax(QKᵀ/√hd): query-key layer scaling cancels (fact 6)
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,  # logits use the word embedding (fact 11)
        "bos_token_id": None,  # tokenizer facts, not in the cfg (fact 14); GPT-2's 50256 would be wrong
        "eos_token_id": None,
    },
    ignored=IGNORED,
    name="NeMo cfg",
    checks=[
        Divides("num_attention_heads", "hidden_size", why="GPT-2 splits n_embd into n_head heads (fact 5)"),
        NotAbove("vocab_size", "padded_vocab_size", why="the real vocabulary is cut from the padded embedding "
                 "(fact 12)"),
        Valid("kv_channels", Optional(PositiveInt)),  # checked against hidden_size in convert
    ],
)

P, L, H = "model.language_model.", "model.language_model.encoder.layers.{layer}.", "transformer.h.{layer}."


def _dims(c: Mapping[str, Any]) -> dict[str, int]:
    padded = c["padded_vocab_size"] or c["vocab_size"]
    return {"num_layers": c["num_layers"], "n_heads": c["num_attention_heads"],
            "head_dim": c["hidden_size"] // c["num_attention_heads"], "vocab_size": c["vocab_size"],
            "padded_vocab_size": padded}


KEYS = Layouts("gpt_sw3", KeyMap(
    [
        CutVocab(P + "embedding.word_embeddings.weight", "transformer.wte.weight"),  # padded rows (fact 12)
        Rename(P + "embedding.position_embeddings.weight", "transformer.wpe.weight"),
        Rename(L + "input_layernorm.weight", H + "ln_1.weight"),
        Rename(L + "input_layernorm.bias", H + "ln_1.bias"),
        # Rows per head [head, (q, k, v), hd] (legacy transformer.py L695-717) -> Conv1D [h, q | k | v] (fact 4).
        GroupQKV(L + "self_attention.query_key_value.weight", H + "attn.c_attn.weight", transpose=True),
        GroupQKV(L + "self_attention.query_key_value.bias", H + "attn.c_attn.bias", transpose=False),
        # Megatron linears are [out, in] (tensor_parallel/layers.py L871, L1220); Conv1D is [in, out] (fact 3).
        Transpose(L + "self_attention.dense.weight", H + "attn.c_proj.weight"),
        Rename(L + "self_attention.dense.bias", H + "attn.c_proj.bias"),
        Rename(L + "post_attention_layernorm.weight", H + "ln_2.weight"),
        Rename(L + "post_attention_layernorm.bias", H + "ln_2.bias"),
        Transpose(L + "mlp.dense_h_to_4h.weight", H + "mlp.c_fc.weight"),
        Rename(L + "mlp.dense_h_to_4h.bias", H + "mlp.c_fc.bias"),
        Transpose(L + "mlp.dense_4h_to_h.weight", H + "mlp.c_proj.weight"),
        Rename(L + "mlp.dense_4h_to_h.bias", H + "mlp.c_proj.bias"),
        Rename(P + "encoder.final_layernorm.weight", "transformer.ln_f.weight"),
        Rename(P + "encoder.final_layernorm.bias", "transformer.ln_f.bias"),
        Drop("*._extra_state", reason="TransformerEngine / megatron.core metadata, no weights (fact 13)",
             optional=True),
        Tie("lm_head.weight", to="transformer.wte.weight"),  # no output layer is stored (fact 11)
    ],
    ranges={"layer": "num_layers"},
    dims=_dims,
), title="GPT-SW3")


def convert(source: SourceCheckpoint) -> Converted:
    """Config and tensor stream for ``GPT2LMHeadModel``; cfg values GPT-2 cannot compute are refused first."""
    completed = CONFIG.complete(source.config)  # every value of the right kind first
    _check_gpt2_can_compute(source.config)
    expected = shapes({**source.config, "padded_vocab_size": _dims(completed)["padded_vocab_size"]})
    converted = convert_with(source, CONFIG, KEYS.pick(source.layout), expected)
    if completed["onnx_safe"] and not completed["openai_gelu"]:
        converted.notes.append(ONNX_SAFE_NOTE)
    return converted


# Measured: 1.4e-4 max abs logit error on a 3-layer hidden-4 tiny model (tests/test_gpt_sw3.py).
ONNX_SAFE_NOTE = ("onnx_safe: Megatron's erf_gelu divides by 1.41421, not sqrt(2); transformers has no such "
                  "activation, so exact GELU is used: about 1e-6 relative per activation, which can reach 1e-4 "
                  "in the logits and fail a float32 parity check")


TABLES = KeyTables(CONFIG, KEYS, shapes, custom_convert=convert)


# NeMo cfg values (NeMo 1.16 yaml defaults) outside which the network is not GPT-2 (facts 5, 6, 10, 11).
_GPT2_VALUES = {"normalization": "layernorm", "bias": True, "activation": "gelu", "headscale": False,
                "transformer_block_type": "pre_ln", "normalize_attention_scores": True,
                "position_embedding_type": "learned_absolute", "attention_type": "multihead",
                "share_embeddings_and_output_weights": True}


def _check_gpt2_can_compute(config: Mapping[str, Any]) -> None:
    bad = {k: config[k] for k, want in _GPT2_VALUES.items() if config.get(k, want) != want}
    if bad:
        raise ConversionError(f"NeMo cfg has {bad}; GPT-2 computes only {({k: _GPT2_VALUES[k] for k in bad})}, "
                              "so this checkpoint cannot be converted to GPT2LMHeadModel")
    h, heads = config.get("hidden_size"), config.get("num_attention_heads")
    kv = config.get("kv_channels")
    if kv and h and heads and kv * heads != h:
        raise ConversionError(f"NeMo cfg has kv_channels {kv} x num_attention_heads {heads} = {kv * heads}, but "
                              f"hidden_size {h}; GPT-2 needs heads x head_dim = hidden_size (fact 5)")
