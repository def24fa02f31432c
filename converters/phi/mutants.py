"""Planted bugs of transformers' old ``models/phi/convert_phi_weights_to_hf.py`` (golden/upstream/phi/README.md),
and a mutation-only case. The hard-coded ``gelu_new`` is the generic ``wrong_gelu`` (6.2e-4 on the exact case).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.family.cases import MutationCase
from harness.mapping.keymap import Step
from harness.mapping.rules import Split
from harness.mutation.planting import Catalogue, Mutable, rerun, set_config

if TYPE_CHECKING:
    import torch

__all__ = ["CASES", "MUTANTS"]

MUTANTS = Catalogue()  # in the order the functions below are defined


@MUTANTS.add
def wqkv_interleaved_reshuffle(m: Mutable) -> None:
    """``Wqkv.view(3, heads, -1, hidden).transpose(0, 1)``: the [Q | K | V] rows reshuffled per head (for an
    early HF Phi), then chunked into q/k/v (README fact 5: errors 2.3-4.0). Only expressible without GQA."""
    heads, kv = m.config["num_attention_heads"], m.config["num_key_value_heads"]

    def reshuffle(step: Step, src: list[torch.Tensor]) -> list[torch.Tensor] | None:
        w = src[0]
        if heads != kv:
            return None
        rest = w.shape[1:]
        # (3, heads, head_dim, *rest) -> (heads, 3, head_dim, *rest)
        shuffled = w.reshape(3, heads, -1, *rest).transpose(0, 1).reshape(w.shape)
        return list(shuffled.chunk(3, dim=0))

    rerun(m, Split, reshuffle)


@MUTANTS.add
def rotary_over_whole_head(m: Mutable) -> None:
    """Rotary applied to every head dimension instead of ``rotary_dim`` of them (README: errors 0.9-1.3)."""
    set_config(m, lambda k: k == "partial_rotary_factor", lambda v: 1.0)



CASES = {
    "eps-1e-3": MutationCase("layer_norm_epsilon 1e-3: a norm epsilon that matters next to unit-scale activations",
                             dict(layer_norm_epsilon=1e-3)),
}
