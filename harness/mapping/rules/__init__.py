"""Declarative key-map rules: one line per source -> target mapping, read forwards and backwards; one rule kind
per module.

A pattern names its indices: ``layers.{layer}.attention.wq.weight`` (``pattern``). A rule that only moves data
(``moves_data``: rename, transpose, rotary permutation, split, expert unstack, qkv regroup, vocabulary cut, rank
merge, rank 0's copy) states its layout once, and its torch forward, inverse and torch-free byte plan are all run
from it. A rule that computes (``dequantize``, ``dequantize_split``) writes its forward, inverse and ``express``.
``Drop`` and ``Tie`` are the table's other entries: a source tensor left out with a reason, a target that
transformers ties instead of loading.
"""

from __future__ import annotations

from harness.mapping.rules.cut_vocab import CutVocab
from harness.mapping.rules.dequantize import Dequantize
from harness.mapping.rules.dequantize_split import DequantizeSplit
from harness.mapping.rules.drop import Drop
from harness.mapping.rules.group_qkv import GroupQKV
from harness.mapping.rules.merge_ranks import MergeRanks
from harness.mapping.rules.merge_rotary import MergeRotary
from harness.mapping.rules.moves_data import MovesData
from harness.mapping.rules.pattern import Pattern
from harness.mapping.rules.rename import Rename
from harness.mapping.rules.rename_at import RenameAt
from harness.mapping.rules.replicated import Replicated
from harness.mapping.rules.rotary import Rotary
from harness.mapping.rules.rule import Dims, DimsFn, Rule
from harness.mapping.rules.split import Split
from harness.mapping.rules.tie import Tie
from harness.mapping.rules.transpose import Transpose
from harness.mapping.rules.unstack import Unstack

__all__ = [
    "CutVocab", "Dequantize", "DequantizeSplit", "Dims", "DimsFn", "Drop", "GroupQKV", "MergeRanks", "MergeRotary",
    "MovesData", "Pattern", "Rename", "RenameAt", "Replicated", "Rotary", "Rule", "RuleLike", "Split", "Tie",
    "Transpose", "Unstack",
]

RuleLike = Rule | Drop | Tie
