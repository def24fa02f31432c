"""Planted bugs of transformers' old ``models/gemma/convert_gemma_weights_to_hf.py`` (golden/upstream/gemma/README.md).

Also in the generic catalogue, and caught there: (1 + w) norms (fact 8), exact vs tanh GELU (fact 11, the
Feb-2024 code), a Llama-style rotary permutation applied to half-split weights (fact 5).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from harness.family.cases import MutationCase
from harness.mapping.keymap import Step
from harness.mapping.rules import DequantizeSplit, Split
from harness.mutation.planting import Catalogue, Mutable, rerun

if TYPE_CHECKING:
    import torch

__all__ = ["CASES", "MUTANTS"]

MUTANTS = Catalogue()  # in the order the functions below are defined


@MUTANTS.add
def qkv_equal_thirds(m: Mutable) -> None:
    """``torch.split(qkv, qkv.shape[0] // 3)`` for every non-MQA model: right only for MHA, garbage for GQA
    (README fact 3). The first three pieces are kept, as the script's unpacking would."""
    import torch

    kv = m.config["num_key_value_heads"]

    def thirds(step: Step, src: list[torch.Tensor]) -> list[torch.Tensor] | None:
        w = step.rule.forward(src, m.converted.dims)
        fused = torch.cat(w, dim=0)
        return None if kv == 1 else list(fused.split(fused.shape[0] // 3, dim=0)[:3])

    rerun(m, Split, thirds)
    rerun(m, DequantizeSplit, thirds)


@MUTANTS.add
def embedding_scale_baked_in(m: Mutable) -> None:
    """sqrt(hidden_size) multiplied into the embedding, which transformers applies again at run time
    (README fact 7: model.py L593-598)."""
    name = "model.embed_tokens.weight"
    m.tensors[name] = m.tensors[name] * math.sqrt(m.config["hidden_size"])


CASES: dict[str, MutationCase] = {}
