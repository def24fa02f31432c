"""Planted bugs of transformers' old ``models/mistral/convert_mistral_weights_to_hf.py`` and of the traps the
oracle data measured (golden/upstream/mistral/README.md, "fact N"), and mutation-only cases.

The generic catalogue (``harness/mutation/catalogue.py``) covers the rest: the rotary permutation, q/k or gate/up
swapped, layers swapped, a transposed square matrix, a tied head, a wrong norm epsilon or rope theta.
"""

from __future__ import annotations

from harness.mutation.planting import Catalogue

__all__ = ["CASES", "MUTANTS"]

MUTANTS = Catalogue()  # in the order the functions below are defined

CASES: dict = {}
