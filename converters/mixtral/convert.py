"""Mixtral: Mistral's ``params.json`` + ``consolidated.*`` -> transformers ``MixtralForCausalLM``.

Mirrors mistral-inference ``moe_one_file_ref.py`` @ 26a52a14 (line numbers below). The output uses the
per-expert Hub key layout (``block_sparse_moe.experts.E.w1.weight``), which transformers 4.x loads as is and
5.x fuses on load (``conversion_mapping.py``, "mixtral").
"""

from __future__ import annotations

from typing import Any

from converters.mistral.params import ATTENTION, CHECKS, EMBEDDING, FIELDS, HEAD, PARAMS, dims
from converters.mixtral.source import shapes
from harness.family.tables import KeyTables
from harness.mapping.config_kinds import Count, NonNegativeFloat, NotAbove, Optional, PositiveInt
from harness.mapping.config_map import ConfigMap, Field
from harness.mapping.keymap import KeyMap, Layouts
from harness.mapping.rules import Rename, Unstack

__all__ = ["CONFIG", "KEYS", "TABLES"]

CONFIG = ConfigMap(
    [
        *FIELDS,  # the attention's fields, as the dense family reads them
        Field("moe.num_experts", "num_local_experts", kind=Count),
        Field("moe.num_experts_per_tok", "num_experts_per_tok", kind=PositiveInt),
        # L312 `self.args.rope_theta or 1000000.0`: absent, null or 0 means 1e6 (the 8x7B params.json has none).
        Field("rope_theta", "rope_theta", default=1e6, to_target=lambda v: float(v or 1e6),
              kind=Optional(NonNegativeFloat), lossy="absent, null or 0 comes back as 1e6"),
    ],
    fixed={
        "model_type": "mixtral",
        "architectures": ["MixtralForCausalLM"],
        "hidden_act": "silu",  # SwiGLU experts, exact SiLU (L179-187)
        "tie_word_embeddings": False,  # `output` is its own Linear (L288)
        "sliding_window": None,  # the reference attends over the whole causal prefix (L337-345)
        "max_position_embeddings": 32768,  # unused by default rope; Mixtral's context length
        "router_jitter_noise": 0.0,
    },
    ignored={"sliding_window": "the one-file reference implements no sliding window (Mixtral uses none)"},
    name=PARAMS,
    checks=[
        *CHECKS,
        NotAbove("moe.num_experts_per_tok", "moe.num_experts", why="the router picks its top-k of the experts"),
    ],
)

_MOE = "model.layers.{layer}.block_sparse_moe"
_RANGES = {"layer": "n_layers", "expert": "n_experts"}


def _dims(c: dict[str, Any]) -> dict[str, int]:
    return {**dims(c), "n_experts": c["moe.num_experts"]}


KEYS = Layouts("mixtral", {
    # Per-expert keys, as upstream's module tree names them (w1 = gate_proj, w3 = up_proj, w2 = down_proj).
    "experts": KeyMap([
        EMBEDDING,
        *ATTENTION,
        Rename("layers.{layer}.feed_forward.gate.weight", f"{_MOE}.gate.weight"),
        Rename("layers.{layer}.feed_forward.experts.{expert}.w1.weight", f"{_MOE}.experts.{{expert}}.w1.weight"),
        Rename("layers.{layer}.feed_forward.experts.{expert}.w2.weight", f"{_MOE}.experts.{{expert}}.w2.weight"),
        Rename("layers.{layer}.feed_forward.experts.{expert}.w3.weight", f"{_MOE}.experts.{{expert}}.w3.weight"),
        *HEAD,
    ], _RANGES, _dims),
    # Hub consolidated.0N.pt: experts stacked by rows, no `.weight` suffix; row block e of w2 is w2_e transposed.
    "fused": KeyMap([
        EMBEDDING,
        *ATTENTION,
        Rename("layers.{layer}.block_sparse_moe.gate.weight", f"{_MOE}.gate.weight"),
        Unstack("layers.{layer}.block_sparse_moe.w1", f"{_MOE}.experts.{{expert}}.w1.weight"),
        Unstack("layers.{layer}.block_sparse_moe.w2", f"{_MOE}.experts.{{expert}}.w2.weight", transpose_blocks=True),
        Unstack("layers.{layer}.block_sparse_moe.w3", f"{_MOE}.experts.{{expert}}.w3.weight"),
        *HEAD,
    ], _RANGES, _dims),
}, default="experts", title="Mixtral")

TABLES = KeyTables(CONFIG, KEYS, shapes)  # convert and invert as the tables say
