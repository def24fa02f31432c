"""Planted bugs of transformers' old ``models/rwkv/convert_rwkv_checkpoint_to_hf.py`` @ 0851a87d
(golden/upstream/rwkv/README.md), and a mutation-only case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.family.cases import MutationCase
from harness.mutation.planting import Catalogue, Mutable, swap_names

if TYPE_CHECKING:
    pass

__all__ = ["CASES", "MUTANTS"]

MUTANTS = Catalogue()  # in the order the functions below are defined


@MUTANTS.add
def layers_from_name(m: Mutable) -> None:
    """The size guessed from the file name (``NUM_HIDDEN_LAYERS_MAPPING[size]``): a layer count that is not the
    checkpoint's (here one fewer), while every block's tensors are still written."""
    m.config["num_hidden_layers"] -= 1


@MUTANTS.add
def intermediate_size_default(m: Mutable) -> None:
    """``intermediate_size`` left to RwkvConfig's default 4 * hidden_size instead of ``ffn.key``'s row count."""
    m.config["intermediate_size"] = 4 * m.config["hidden_size"]


@MUTANTS.add
def time_decay_exponentiated(m: Mutable) -> None:
    """``time_decay`` stored as ``-exp(w)`` (the runtime's load-time form) though transformers applies it itself
    (README: 3.96)."""
    import torch

    for name in [n for n in m.tensors if n.endswith("time_decay")]:
        m.tensors[name] = -torch.exp(m.tensors[name])


@MUTANTS.add
def time_first_exponentiated(m: Mutable) -> None:
    """``time_first`` stored as ``exp(u)``, the RWKV-5/6 form, on a v4 model (README: 2.43)."""
    import torch

    for name in [n for n in m.tensors if n.endswith("time_first")]:
        m.tensors[name] = torch.exp(m.tensors[name])


@MUTANTS.add
def time_mix_key_receptance_swapped(m: Mutable) -> None:
    """Attention ``time_mix_k`` and ``time_mix_r`` exchanged (README: 0.76)."""
    swap_names(m, "attention.time_mix_key", "attention.time_mix_receptance")



CASES = {
    # RWKV-LM initialises emb uniform in +-1e-4 (model.py), so ln0 sees tiny inputs and its epsilon matters.
    "small-emb": MutationCase("embeddings scaled by 1e-2, as RWKV-LM's small init: ln0's epsilon matters",
                              {}, scale={"emb.weight": 1e-2}),
}
