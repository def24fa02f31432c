"""Llama: Meta's ``params.json`` + ``consolidated.NN.pth`` rank files -> transformers ``LlamaForCausalLM``.

Mirrors meta-llama/llama @ 689c7f26 ``llama/model.py`` (``L2``, Llama 1 and 2) and meta-llama/llama-models @
a9c89c47 ``models/llama3/model.py`` (``L3``, Llama 3 and 3.1; ``L3args`` = ``models/llama3/args.py``); "fact N"
is golden/upstream/llama/README.md. Rank slices are merged by rule as fairscale split them (fact 12), q and k are
permuted after the merge, per head of the whole model (fact 8). The config is read by transformers 4.57
(``rope_theta``, ``rope_scaling``) and 5.x (``rope_parameters``; ``rope_scaling`` takes precedence there and
says the same).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Any

from converters.llama.ranks import model_parallel_size
from converters.llama.source import TOKENIZER, ffn_hidden_dim, generation, shapes, sizes
from converters.llama.tokenizer import EXTRA, available, convert_tokenizer
from harness.family.tables import KeyTables
from harness.mapping.config_kinds import AnyOf, Bool, Count, OneOf, Optional, PositiveFloat, PositiveInt
from harness.mapping.config_map import ConfigMap, Field
from harness.mapping.conversion import Converted, SourceCheckpoint
from harness.mapping.keymap import KeyMap, Layouts
from harness.mapping.rules import Drop, MergeRanks, MergeRotary, Replicated

__all__ = ["CONFIG", "KEYS", "LLAMA31_ROPE", "TABLES", "convert"]

# apply_scaling's constants (L3 45-62): hard-coded upstream, not in params.json; transformers' "llama3" rope.
LLAMA31_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}


def _ffn_fields(size: int, dim: int) -> tuple[int, float | None]:
    """Inverted with multiple_of = intermediate_size: any multiplier that lands in (0, size] rounds up to size."""
    base = int(2 * (4 * dim) / 3)
    return size, None if base <= size else size / base


def _rope(theta: float, scaled: bool) -> tuple[float, dict[str, Any], dict[str, Any] | None, int]:
    """rope_theta (transformers 4.x), rope_parameters (5.x), rope_scaling (read by 4.x, and first by 5.x) and
    max_position_embeddings: upstream's context is a runtime argument (max_seq_len, L2gen 111-115), so each
    release's own is written."""
    llama31 = LLAMA31_ROPE if scaled else {}
    parameters = {"rope_type": "llama3" if scaled else "default", "rope_theta": float(theta), **llama31}
    scaling = {"rope_type": "llama3", **LLAMA31_ROPE} if scaled else None
    llama3 = generation({"rope_theta": theta, "use_scaled_rope": scaled}) == "llama3"
    return float(theta), parameters, scaling, 131072 if scaled else 8192 if llama3 else 4096


CONFIG = ConfigMap(
    [
        Field("dim", "hidden_size", kind=PositiveInt),
        Field("n_layers", "num_hidden_layers", kind=Count),
        # head_dim = dim // n_heads (L2 205, L3 116); there is no field for it upstream.
        Field("n_heads", ("num_attention_heads", "head_dim"), reads=("dim",), kind=PositiveInt,
              to_target=lambda heads, dim: (heads, dim // heads), to_source=lambda heads, head_dim, dim: heads),
        # Absent or null: as many kv heads as q heads (L2 200, L3args 74-75).
        Field("n_kv_heads", "num_key_value_heads", default=None, reads=("n_heads",), to_target=lambda v, n: v or n,
              kind=Optional(PositiveInt), lossy="a null comes back as n_heads"),
        # -1 in Llama 1/2 files: convert() takes the rows of output.weight
        Field("vocab_size", "vocab_size", kind=AnyOf(PositiveInt, OneOf(-1))),
        # FFN size from multiple_of and ffn_dim_multiplier (fact 4); both fold into intermediate_size.
        Field(("multiple_of", "ffn_dim_multiplier"), "intermediate_size", default=(256, None),
              kind=(PositiveInt, Optional(PositiveFloat)), reads=("dim",),
              to_target=lambda multiple, multiplier, dim: ffn_hidden_dim(dim, multiple, multiplier),
              to_source=_ffn_fields, lossy="multiple_of comes back as intermediate_size, with a multiplier that "
                                          "gives it"),
        # ModelArgs default (L2 28, L3args 47); Llama 1 says 1e-6
        Field("norm_eps", "rms_norm_eps", default=1e-5, kind=PositiveFloat),
        # Llama 1/2 ModelArgs has no rope_theta: precompute_freqs_cis's 10000 (L2 80, 450-454). Llama 3 files
        # always state theirs (llama-models' own default, 500000 at L3args 48, is never reached from a release).
        # use_scaled_rope: L3args 49, read as rope_scaling by 4.x, and first by 5.x.
        Field(("rope_theta", "use_scaled_rope"),
              ("rope_theta", "rope_parameters", "rope_scaling", "max_position_embeddings"),
              default=(10000.0, False), kind=(PositiveFloat, Bool), to_target=_rope,
              to_source=lambda theta, parameters, scaling, context: (parameters["rope_theta"], scaling is not None)),
    ],
    fixed={
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_act": "silu",  # w2(silu(w1 x) * w3 x) (L2 348, L3 225)
        "tie_word_embeddings": False,  # `output` is its own ColumnParallelLinear (L2 446-448, L3 271; fact 7)
        "attention_bias": False,  # bias=False everywhere (L2 207-233)
        "mlp_bias": False,
    },
    ignored={"max_seq_len": "a runtime argument of Llama.build (L2gen 111-115), not a weight shape",
             "max_batch_size": "a runtime argument of Llama.build (L2gen 111-115), sizes only the KV cache"},
    name="params.json",
)

_L, _H = "layers.{layer}", "model.layers.{layer}"
_BLOCKS = [
    # Column-parallel: rank r holds rows r*out/ranks ... (fact 12); q per head, k per kv head, after merging.
    MergeRotary(f"{_L}.attention.wq.weight", f"{_H}.self_attn.q_proj.weight", heads="n_heads"),
    MergeRotary(f"{_L}.attention.wk.weight", f"{_H}.self_attn.k_proj.weight", heads="n_kv_heads"),
    MergeRanks(f"{_L}.attention.wv.weight", f"{_H}.self_attn.v_proj.weight", dim=0),
    MergeRanks(f"{_L}.attention.wo.weight", f"{_H}.self_attn.o_proj.weight", dim=1),  # row-parallel
    MergeRanks(f"{_L}.feed_forward.w1.weight", f"{_H}.mlp.gate_proj.weight", dim=0),
    MergeRanks(f"{_L}.feed_forward.w3.weight", f"{_H}.mlp.up_proj.weight", dim=0),  # w3 = up (fact 5)
    MergeRanks(f"{_L}.feed_forward.w2.weight", f"{_H}.mlp.down_proj.weight", dim=1),  # row-parallel
    Replicated(f"{_L}.attention_norm.weight", f"{_H}.input_layernorm.weight"),
    Replicated(f"{_L}.ffn_norm.weight", f"{_H}.post_attention_layernorm.weight"),
    Replicated("norm.weight", "model.norm.weight"),
    MergeRanks("output.weight", "lm_head.weight", dim=0),
    Drop("rope.freqs", reason="a training-code buffer in Llama 1/2 files, unused upstream (strict=False, L2gen "
                              "120; fact 6); transformers recomputes the rotary table", optional=True),
]
_RANGES = {"layer": "n_layers"}


def _dims(c: Mapping[str, Any]) -> dict[str, int]:
    return {k: v for k, v in sizes(dict(c)).items() if k in ("n_layers", "n_heads", "n_kv_heads", "head_dim")}


# A source that names no layout (one rank file cannot tell) gets the one its params.json implies: see convert.
KEYS = Layouts("llama", {
    # ParallelEmbedding: each rank holds every row, dim/ranks columns (L2 437-439).
    "llama2": KeyMap([MergeRanks("tok_embeddings.weight", "model.embed_tokens.weight", dim=1), *_BLOCKS],
                     _RANGES, _dims),
    # VocabParallelEmbedding: each rank holds vocab/ranks whole rows (L3 264).
    "llama3": KeyMap([MergeRanks("tok_embeddings.weight", "model.embed_tokens.weight", dim=0), *_BLOCKS],
                     _RANGES, _dims),
}, default="llama2", title="Llama")


def convert(source: SourceCheckpoint) -> Converted:
    """Config and tensor stream for ``LlamaForCausalLM``; the ledger checks keys and shapes first.

    A vocab_size of -1 (or none) is the tokenizer's word count upstream (L2gen 116-117), which the output
    projection has as rows: that is the size written. A ``tokenizer.model`` beside the weights is converted too
    (and checked against Meta's own library where the ``tokenizer`` extra is installed).
    """
    CONFIG.complete(source.config)  # every field's kind checked before any value is used
    config, notes = dict(source.config), list(source.notes)
    if config.get("vocab_size", -1) <= 0 and "output.weight" in source.tensors:
        shape = source.tensors.raw_meta("output.weight")[0]  # (ranks, rows, dim): the ledger checks the rest
        config["vocab_size"] = shape[0] * shape[1] if len(shape) == 3 else -1
        notes.append(f"params.json vocab_size {source.config.get('vocab_size')}: {config['vocab_size']} from "
                     "output.weight")
    converted = TABLES.derived_convert(replace(source, config=config, notes=notes),
                                       ranks=model_parallel_size(source.tensors))
    folder = source.path if source.path is None or source.path.is_dir() else source.path.parent
    if folder is not None and (folder / TOKENIZER).is_file():
        checked = available(folder / TOKENIZER)
        converted.files = partial(convert_tokenizer, folder / TOKENIZER, config["vocab_size"], verify=checked)
        converted.notes.append(f"{TOKENIZER} -> tokenizer.json" + ("" if checked else f" (not checked against "
                                                                                       f"Meta's library: {EXTRA})"))
    return converted


TABLES = KeyTables(CONFIG, KEYS, shapes, custom_convert=convert, inverse_layout=generation,  # back to one rank file
                   layout=lambda s: generation(s.config) if s.layout == "default" else s.layout)  # params.json tells
