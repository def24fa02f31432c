"""Planted bugs of transformers' old ``models/mixtral/convert_mixtral_weights_to_hf.py``, and mutation-only cases.

The generic catalogue (``harness/mutation/catalogue.py``) covers the rest of what that script could get wrong:
the rotary permutation, q/k, experts, gate/up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.family.cases import MutationCase
from harness.mapping import transforms
from harness.mapping.keymap import Step
from harness.mapping.rules import Unstack
from harness.mutation.planting import Catalogue, Mutable, rerun, set_config

if TYPE_CHECKING:
    import torch

__all__ = ["CASES", "MUTANTS"]

MUTANTS = Catalogue()  # in the order the functions below are defined


@MUTANTS.add
def rope_theta_default_10000(m: Mutable) -> None:
    """``params.get("rope_theta", 10000.0)``: a params.json without rope_theta gets 1e4, not upstream's 1e6
    (moe_one_file_ref.py L312 ``rope_theta or 1000000.0``; golden/upstream/mixtral/README.md fact 3)."""
    if m.source_config.get("rope_theta") is None:
        set_config(m, lambda k: k == "rope_theta", lambda v: 10000.0)


@MUTANTS.add
def fused_w2_not_transposed(m: Mutable) -> None:
    """The Hub's fused ``block_sparse_moe.w2`` cut into row blocks without transposing each one (README fact 10:
    row block e of w2 is w2_e transposed)."""
    def untransposed(step: Step, src: list[torch.Tensor]) -> list[torch.Tensor] | None:
        if not step.rule.transposes:
            return None
        return transforms.unstack_experts(src[0], m.converted.dims[step.rule.count])

    rerun(m, Unstack, untransposed)



CASES = {
    # Mixtral ships 1e-5; at 1e-3 a hard-coded epsilon moves the logits far past the float32 bound.
    "eps-1e-3": MutationCase("norm_eps 1e-3: a norm epsilon that matters next to unit-scale activations",
                             dict(norm_eps=1e-3)),
}
