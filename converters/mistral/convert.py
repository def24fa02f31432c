"""Mistral (dense): ``params.json`` + ``consolidated.*`` -> transformers ``MistralForCausalLM``, or
``MinistralForCausalLM`` where a per-layer window pattern mixes sliding and full layers.

Mirrors mistral-inference @ 2557e12d (``args.py``, ``transformer.py``, ``transformer_layers.py``, ``cache.py``;
"fact N" is golden/upstream/mistral/README.md) and, for v0.1 files, its first commit c18d5b91. Both classes load in
transformers 4.57 (``rope_theta``) and 5.x (which reads it into ``rope_parameters``). Newer params.json features
that no upstream code runs are refused by name (``UNSUPPORTED``), where mistral-inference drops them silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from converters.mistral import tokenizer
from converters.mistral.params import ATTENTION, CHECKS, EMBEDDING, FIELDS, HEAD, PARAMS, dims
from converters.mistral.source import shapes
from converters.mistral.tokenizer import EXTRA
from harness.errors import ConversionError
from harness.family.tables import KeyTables
from harness.mapping.config_kinds import Check, Kind, NonNegativeFloat, Optional, PositiveInt
from harness.mapping.config_map import ConfigMap, Field
from harness.mapping.conversion import Converted, SourceCheckpoint
from harness.mapping.keymap import KeyMap, Layouts
from harness.mapping.rules import Rename

__all__ = ["CONFIG", "KEYS", "TABLES", "UNSUPPORTED", "convert"]

# params.json fields of newer releases that no mistral-inference code implements (README "Newer params.json
# features"): refused by name, since no oracle can show what their conversion must compute.
UNSUPPORTED = {
    "yarn": "YaRN rope scaling (Mistral-Small-3.2, Magistral, Devstral)",
    "llama_4_scaling": "Llama-4 position-dependent query scaling (Ministral-3, Mistral-Large-3)",
    "quantization": "FP8 weights with qscale_weight/qscale_act tensors",
    "tied_embeddings": "tied embeddings (upstream always builds its own output projection, fact 10)",
    "vision_encoder": "a vision encoder (Pixtral), outside this text-only family",
    "moe": "a mixture of experts: convert it with `convparity convert mixtral`",
    "lora": "LoRA adapters: merge them into the weights first",
}
SUPPORTED = "dim, n_layers, head_dim, hidden_dim, n_heads, n_kv_heads, norm_eps, vocab_size, rope_theta, " \
            "sliding_window or _sliding_window (an int, or a list of ints and nulls repeated over the layers)"


class _Windows(Kind):
    """A window (int), or a non-empty list of windows and nulls (full attention) repeated over the layers."""

    def __init__(self) -> None:
        super().__init__("a positive integer, or a list of positive integers and nulls")

    def accepts(self, value: Any) -> bool:
        if isinstance(value, list):
            return bool(value) and all(w is None or PositiveInt.accepts(w) for w in value)
        return PositiveInt.accepts(value)


@dataclass(frozen=True)
class _OneWindowPattern(Check):
    """args.py L56 (at most one of the two fields), cache.py L160 (a list divides the layers) and transformers'
    one ``sliding_window`` for every sliding layer."""

    def problem(self, config: Mapping[str, Any]) -> str | None:
        plain, underscored = config.get("sliding_window"), config.get("_sliding_window")
        if plain is not None and underscored is not None:
            return "sliding_window and _sliding_window are both set; upstream allows one (args.py L56)"
        pattern = plain if plain is not None else underscored
        if not isinstance(pattern, list):
            return None
        if config["n_layers"] % len(pattern):
            return f"n_layers {config['n_layers']} is not a multiple of the window pattern's length {len(pattern)} " \
                   "(cache.py L160)"
        if len({w for w in pattern if w is not None}) > 1:
            return f"window pattern {pattern} has several sizes; transformers holds one sliding_window for all " \
                   "sliding layers"
        return None


def _theta(theta: float | None, window: Any) -> float:
    """HEAD: ``rope_theta or 1e6`` (transformer.py L113-116); the v0.1 code, whose files state a window and no
    theta, hard-codes 10000 (c18d5b91 rope.py L5; fact 5)."""
    return float(theta) if theta else 1e4 if PositiveInt.accepts(window) else 1e6


def _windows(plain: Any, underscored: Any, n_layers: int) -> tuple[Any, ...]:
    """sliding_window, layer_types, model_type, architectures: layer i gets pattern[i % len] (cache.py L13-24,
    L220-221); a mix of sliding and full layers needs Ministral's ``layer_types``."""
    pattern = plain if plain is not None else underscored
    per_layer = [pattern[i % len(pattern)] for i in range(n_layers)] if isinstance(pattern, list) else \
        [pattern] * n_layers
    window = next((w for w in per_layer if w is not None), None)
    if len(set(per_layer)) == 1:
        return window, None, "mistral", ["MistralForCausalLM"]
    types = ["full_attention" if w is None else "sliding_attention" for w in per_layer]
    return window, types, "ministral", ["MinistralForCausalLM"]


def _window_fields(window: Any, types: list[str] | None, *_: Any) -> tuple[Any, Any]:
    if types is None:
        return window, None
    return None, [window if t == "sliding_attention" else None for t in types]


CONFIG = ConfigMap(
    [
        *FIELDS,
        Field(("sliding_window", "_sliding_window"), ("sliding_window", "layer_types", "model_type", "architectures"),
              default=(None, None), kind=Optional(_Windows()), reads=("n_layers",), to_target=_windows,
              to_source=_window_fields, lossy="a list comes back as _sliding_window, one entry per layer; a list "
                                              "of one size as that int, in sliding_window"),
        Field("rope_theta", "rope_theta", default=None, kind=Optional(NonNegativeFloat), reads=("sliding_window",),
              to_target=_theta, to_source=lambda theta, window: theta, lossy="absent comes back as its value"),
    ],
    fixed={
        "hidden_act": "silu",  # w2(silu(w1 x) * w3 x), exact SiLU (transformer_layers.py L105-106)
        "tie_word_embeddings": False,  # `output` is its own Linear (transformer.py L79; fact 10)
        "max_position_embeddings": 32768,  # unused by default rope; Mistral 7B's context length
    },
    ignored={"max_batch_size": "a runtime argument that sizes only the KV cache (args.py)",
             "tied_embeddings": "false is upstream's only behaviour (fact 10); true is refused (UNSUPPORTED)"},
    name=PARAMS,
    checks=[*CHECKS, _OneWindowPattern()],
)

_L, _H = "layers.{layer}", "model.layers.{layer}"
KEYS = Layouts("mistral", KeyMap([
    EMBEDDING,
    *ATTENTION,
    # w1 goes through SiLU: gate; w3 is the linear branch: up (fact 2)
    Rename(f"{_L}.feed_forward.w1.weight", f"{_H}.mlp.gate_proj.weight"),
    Rename(f"{_L}.feed_forward.w2.weight", f"{_H}.mlp.down_proj.weight"),
    Rename(f"{_L}.feed_forward.w3.weight", f"{_H}.mlp.up_proj.weight"),
    *HEAD,
], {"layer": "n_layers"}, dims), title="Mistral")


def convert(source: SourceCheckpoint) -> Converted:
    """Config and tensor stream; a config without per-layer types writes no ``layer_types`` (MistralConfig
    would warn). The tokenizer file beside the weights is converted too (and checked against mistral_common where
    the ``tokenizer`` extra is installed)."""
    refuse_unsupported(source.config, source.tensors)
    converted = TABLES.derived_convert(source)
    if converted.config["layer_types"] is None:
        del converted.config["layer_types"]
    folder = source.path if source.path is None or source.path.is_dir() else source.path.parent
    if folder is not None and (file := tokenizer.find(folder)) is not None:
        checked = tokenizer.available()
        converted.files = partial(tokenizer.convert_tokenizer, file, source.config["vocab_size"], verify=checked)
        converted.notes.append(f"{file.name} -> tokenizer.json" + ("" if checked else f" (not checked against "
                                                                                       f"mistral_common: {EXTRA})"))
    return converted


def refuse_unsupported(params: Mapping[str, Any], tensors: Any = ()) -> None:
    """A ConversionError naming each feature of ``UNSUPPORTED`` that ``params`` uses, and what is supported."""
    used = [f"{k} ({UNSUPPORTED[k]})" for k in UNSUPPORTED if params.get(k) not in (None, False, {})]
    if any(str(k).endswith((".qscale_weight", ".qscale_act")) for k in tensors):
        used.append("qscale_weight/qscale_act tensors (FP8 weights)")
    if used:
        raise ConversionError(f"{PARAMS}: {'; '.join(used)} not supported: no upstream code runs it on CPU to "
                              f"prove its conversion; supported fields: {SUPPORTED}")


@dataclass(frozen=True)
class _Tables(KeyTables):
    def invert(self, config: dict[str, Any], tensors: dict[str, Any]) -> SourceCheckpoint:
        return super().invert({"layer_types": None, **config}, tensors)  # a MistralConfig has none


TABLES = _Tables(CONFIG, KEYS, shapes, custom_convert=convert)
