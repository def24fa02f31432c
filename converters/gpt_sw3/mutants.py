"""Planted bugs of transformers' old ``models/gpt_sw3/convert_megatron_to_pytorch.py`` @ 01192f05
(golden/upstream/gpt_sw3/README.md), and a mutation-only case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.family.cases import MutationCase
from harness.mapping import transforms
from harness.mapping.keymap import Step
from harness.mapping.rules import CutVocab, GroupQKV
from harness.mutation.planting import Catalogue, Mutable, rerun

if TYPE_CHECKING:
    import torch

__all__ = ["CASES", "MUTANTS"]

MUTANTS = Catalogue()  # in the order the functions below are defined


@MUTANTS.add
def exact_gelu_hardcoded(m: Mutable) -> None:
    """``activation_function="gelu"`` whatever the cfg says, though NeMo's default bias-GELU fusion computes tanh
    (fact 9: 7e-4 to 3e-3 on the logits)."""
    m.config["activation_function"] = "gelu"


@MUTANTS.add
def attention_buffers_written(m: Mutable) -> None:
    """``attn.bias`` (a uint8 causal tril) and ``attn.masked_bias`` (-1e4) written per layer: buffers GPT-2 no
    longer has; ``masked_bias`` is an unexpected key (fact 13)."""
    import torch

    n = m.config["n_positions"]
    for i in range(m.config["n_layer"]):
        m.tensors[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.uint8))[None, None]
        m.tensors[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4, dtype=torch.bfloat16)


@MUTANTS.add
def vocab_hardcoded_64000(m: Mutable) -> None:
    """``vocab_size = 64000`` and ``word_embeddings[:64000]``: right for the released GPT-SW3 tokenizer only
    (fact 12); on any other vocabulary the padded rows stay and the config lies."""
    m.config["vocab_size"] = 64000
    rerun(m, CutVocab, lambda step, src: [transforms.cut_vocab(src[0], min(64000, src[0].shape[0]))])


@MUTANTS.add
def qkv_not_regrouped(m: Mutable) -> None:
    """Megatron's per-head [head, (q, k, v), hd] rows taken as GPT-2's [q | k | v] (no
    ``fix_query_key_value_ordering``; fact 4: errors 8-12)."""
    def plain(step: Step, src: list[torch.Tensor]) -> list[torch.Tensor]:
        return [transforms.transpose(src[0]) if step.rule.transposes else src[0]]

    rerun(m, GroupQKV, plain)


@MUTANTS.add
def inverse_layer_idx_scaling(m: Mutable) -> None:
    """``apply_query_key_layer_scaling`` mapped to GPT-2's ``scale_attn_by_inverse_layer_idx``, which really
    divides by the layer index; Megatron's trick cancels in the fp32 softmax (fact 6: 0.83)."""
    m.config["scale_attn_by_inverse_layer_idx"] = True



CASES = {
    "eps-1e-3": MutationCase("layernorm_epsilon 1e-3: a norm epsilon that matters next to unit-scale activations",
                             dict(layernorm_epsilon=1e-3)),
}
