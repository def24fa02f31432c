"""Mixtral's named points: reference.py's probe names -> the ``MixtralForCausalLM`` sub-modules computing them, the
dense family's around its experts and its router."""

from converters.mistral.points import around
from harness.mapping.points import Point

MOE = ("num_local_experts", "num_experts_per_tok", "intermediate_size", "hidden_act", "router_jitter_noise")

POINTS = around(
    Point("layers.{layer}.feed_forward", "model.layers.{layer}.mlp", MOE, "router and experts"),
    Point("layers.{layer}.feed_forward.router", "model.layers.{layer}.mlp.gate", ("num_local_experts",),
          "router (gate logits, one per expert)"),
)
