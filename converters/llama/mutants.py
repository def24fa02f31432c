"""Planted bugs of transformers' old ``models/llama/convert_llama_weights_to_hf.py`` and of llama-models'
resharder (golden/upstream/llama/README.md, "fact N"), and mutation-only cases.

The generic catalogue (``harness/mutation/catalogue.py``) covers the rest: q/k or gate/up swapped, layers swapped, a
transposed square matrix, a tied head, a wrong norm epsilon or rope theta, a hard-coded vocabulary; its
"rotary convention reversed" finds no ``Rotary`` rule here and permutes the output's q/k a second time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from converters.llama.source import ffn_hidden_dim
from harness.family.cases import MutationCase
from harness.mapping import transforms
from harness.mapping.keymap import Step
from harness.mapping.rules import MergeRanks, MergeRotary
from harness.mutation.planting import Catalogue, Mutable, rerun, set_config

if TYPE_CHECKING:
    import torch

__all__ = ["CASES", "MUTANTS"]

MUTANTS = Catalogue()  # in the order the functions below are defined


@MUTANTS.add
def rotary_not_permuted(m: Mutable) -> None:
    """wq/wk rank slices merged but copied without the interleaved -> rotate-half permutation (fact 8: the
    logits move by 1.7-3.7)."""
    rerun(m, MergeRotary, lambda step, src: [transforms.concat_ranks(src[0], 0)])


@MUTANTS.add
def gqa_k_permuted_with_n_heads(m: Mutable) -> None:
    """``permute(wk, n_heads, key_value_dim)``: the k rows cut into n_heads groups instead of n_kv_heads (the
    old script's grouped-query trap, fact 8). Only where the rows split evenly; otherwise the script crashed."""
    dims = m.converted.dims

    def wrong(step: Step, src: list[torch.Tensor]) -> list[torch.Tensor] | None:
        merged = transforms.concat_ranks(src[0], 0)
        rows, n = merged.shape[0], dims["n_heads"]
        if step.rule.heads != "n_kv_heads" or dims["n_kv_heads"] == n or rows % (2 * n):
            return None
        return [transforms.permute_rotary(merged, n, rows // n)]

    rerun(m, MergeRotary, wrong)


@MUTANTS.add
def embedding_merged_on_wrong_dim(m: Mutable) -> None:
    """The embedding's rank slices joined along the other axis: Llama 3's vocabulary split joined on dim 1 (the
    old script's ``concat_dim`` for a version it does not know as 3), or Llama 2's column split on dim 0, as
    llama-models' ``reshard_mp`` does for every file (fact 12: [512, 32] instead of [256, 64])."""
    def other_axis(step: Step, src: list[torch.Tensor]) -> list[torch.Tensor] | None:
        if step.targets != ("model.embed_tokens.weight",) or src[0].shape[0] == 1:
            return None
        return [transforms.concat_ranks(src[0], 1 - step.rule.dim)]

    rerun(m, MergeRanks, other_axis)


@MUTANTS.add
def ranks_in_reverse_order(m: Mutable) -> None:
    """Rank files joined in the wrong order (a glob without ``sorted``; fact 1: file i is rank i)."""
    rerun(m, MergeRanks, lambda step, src: step.rule.forward([src[0].flip(0)], m.converted.dims)
          if src[0].shape[0] > 1 else None)


@MUTANTS.add
def ffn_size_without_multiplier(m: Mutable) -> None:
    """intermediate_size from dim and multiple_of alone, ffn_dim_multiplier ignored (fact 4: 224 -> 192)."""
    c = m.source_config
    if c.get("ffn_dim_multiplier") is not None:
        m.config["intermediate_size"] = ffn_hidden_dim(c["dim"], c.get("multiple_of", 256), None)


@MUTANTS.add
def rope_theta_10000_for_llama3(m: Mutable) -> None:
    """The rotary base left at Llama 2's 10000 for a Llama 3 file that states 500000 (fact 2)."""
    if m.source_config.get("rope_theta") not in (None, 10000.0):
        set_config(m, lambda k: k == "rope_theta", lambda v: 10000.0)


@MUTANTS.add
def scaled_rope_dropped(m: Mutable) -> None:
    """Llama 3.1's ``use_scaled_rope`` ignored: plain rotary frequencies (fact 9: 0.030 on the oracle case)."""
    if m.config.get("rope_scaling"):
        m.config["rope_scaling"] = None
        m.config["rope_parameters"] = {"rope_type": "default", "rope_theta": m.config["rope_parameters"]["rope_theta"]}



CASES = {
    # With unit-scale embeddings eps 1e-5 vs 1e-6 moves the logits by ~4e-5 only; at Llama's real embedding
    # scale (std 0.02) by ~0.1 (README "Traps hit while running the upstream").
    "llama1-eps": MutationCase("Llama 1's norm_eps 1e-6 next to embeddings of std 0.02", dict(norm_eps=1e-6),
                               scale={"tok_embeddings.weight": 0.02}),
}
