"""Planted bugs of transformers' old ``models/mistral/convert_mistral_weights_to_hf.py`` and the traps the oracle
data measured (golden/upstream/mistral/README.md, "fact N"; cross_checks in each meta.json), and mutation-only cases.

The generic catalogue (``harness/mutation/catalogue.py``) covers the rest: the rotary permutation dropped or
reversed, q/k or gate/up swapped, layers swapped, a transposed square matrix, a tied head, a wrong norm epsilon or
rope theta.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.family.cases import MutationCase
from harness.mapping import transforms
from harness.mapping.keymap import Step
from harness.mapping.rules import Rotary
from harness.mutation.planting import Catalogue, Mutable, rerun, set_config

if TYPE_CHECKING:
    import torch

__all__ = ["CASES", "MUTANTS"]

MUTANTS = Catalogue()  # in the order the functions below are defined


@MUTANTS.add
def v01_rope_theta_default_1e6(m: Mutable) -> None:
    """A v0.1 params.json (a window, no rope_theta) given today's default 1e6 instead of the 10000 its release
    code hard-codes (fact 5: 1.09 on the oracle case)."""
    c = m.source_config
    if not c.get("rope_theta") and isinstance(c.get("sliding_window"), int):
        set_config(m, lambda k: k == "rope_theta", lambda v: 1e6)


@MUTANTS.add
def sliding_window_off_by_one(m: Mutable) -> None:
    """The 2023 ``one_file_ref.py`` band ``triu(mask, -W)``: W + 1 keys instead of W (fact 8: 7.2 on the oracle)."""
    if m.config.get("sliding_window") is not None:
        m.config["sliding_window"] += 1


@MUTANTS.add
def sliding_window_dropped(m: Mutable) -> None:
    """The window left out: full causal attention everywhere, as Mixtral's reference has it (fact 8: 8.9)."""
    if m.config.get("sliding_window") is not None:
        m.config |= {"sliding_window": None, "model_type": "mistral", "architectures": ["MistralForCausalLM"]}
        m.config.pop("layer_types", None)


@MUTANTS.add
def window_pattern_collapsed(m: Mutable) -> None:
    """A per-layer window list collapsed to its one size for every layer (fact 9: 7.9 on the held-back case)."""
    if "layer_types" in m.config:
        m.config["layer_types"] = ["sliding_attention"] * len(m.config["layer_types"])


@MUTANTS.add
def head_dim_left_to_default(m: Mutable) -> None:
    """No ``head_dim`` in config.json: transformers takes dim // n_heads (fact 4: Nemo's 128 would be 160)."""
    if m.config["head_dim"] != m.config["hidden_size"] // m.config["num_attention_heads"]:
        del m.config["head_dim"]


@MUTANTS.add
def rotary_permuted_with_dim_over_heads(m: Mutable) -> None:
    """q/k rows permuted in blocks of dim // n_heads, the old script's ``dims_per_head``, instead of head_dim."""
    wrong = m.config["hidden_size"] // m.config["num_attention_heads"]

    def permute(step: Step, src: list[torch.Tensor]) -> list[torch.Tensor] | None:
        rows = src[0].shape[0]
        if wrong == m.converted.dims["head_dim"] or wrong % 2 or rows % wrong:
            return None
        return [transforms.permute_rotary(src[0], rows // wrong, wrong)]

    rerun(m, Rotary, permute)


@MUTANTS.add
def k_permuted_with_n_heads(m: Mutable) -> None:
    """``permute(wk, n_heads, ...)``: the k rows cut into n_heads groups instead of n_kv_heads (fact 3; the old
    script's grouped-query trap). Only where the rows split evenly; otherwise the script crashed."""
    dims = m.converted.dims

    def wrong(step: Step, src: list[torch.Tensor]) -> list[torch.Tensor] | None:
        rows, n = src[0].shape[0], dims["n_heads"]
        if step.rule.heads != "n_kv_heads" or dims["n_kv_heads"] == n or rows % (2 * n):
            return None
        return [transforms.permute_rotary(src[0], n, rows // n)]

    rerun(m, Rotary, wrong)


CASES = {
    # Releases ship 1e-5; at 1e-3 a hard-coded epsilon moves the logits far past the float32 bound.
    "eps-1e-3": MutationCase("norm_eps 1e-3: a norm epsilon that matters next to unit-scale activations; full "
                             "multi-head attention (q and k of one shape)", dict(norm_eps=1e-3, n_kv_heads=4)),
}
