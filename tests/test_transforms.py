"""The transforms: what each rearrangement does, and, through the rule that runs it, that the inverse derived from
its one layout undoes it bit for bit (``harness.mapping.rules.moves_data``); the computing pairs round-trip."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.mapping import transforms as T
from harness.mapping.rules import CutVocab, GroupQKV, MergeRanks, Replicated, Rotary, Split, Unstack

small = st.integers(min_value=1, max_value=5)


def _rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


@given(n_heads=small, half=small, cols=small, bias=st.booleans())
def test_rotary_permutation_round_trips(n_heads: int, half: int, cols: int, bias: bool) -> None:
    w = _rand(n_heads * 2 * half) if bias else _rand(n_heads * 2 * half, cols)
    out = T.permute_rotary(w, n_heads, 2 * half)
    assert out.shape == w.shape
    rule = Rotary("a", "b", heads="h")
    assert torch.equal(rule.inverse([out], {"h": n_heads, "head_dim": 2 * half})[0], w)


def test_rotary_permutation_moves_even_rows_first() -> None:
    w = torch.arange(8.0).reshape(8, 1)  # one head of 8 rows: pairs (0,1) (2,3) (4,5) (6,7)
    assert T.permute_rotary(w, 1, 8).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


@given(kv=small, group=small, head_dim=small, cols=small)
def test_split_qkv_round_trips(kv: int, group: int, head_dim: int, cols: int) -> None:
    heads = kv * group
    w = _rand((heads + 2 * kv) * head_dim, cols)
    q, k, v = T.split_qkv(w, heads, kv, head_dim)
    assert (q.shape[0], k.shape[0], v.shape[0]) == (heads * head_dim, kv * head_dim, kv * head_dim)
    assert torch.equal(Split("a", "qkv").inverse([q, k, v], {"n_heads": heads, "n_kv_heads": kv,
                                                               "head_dim": head_dim})[0], w)


def test_split_qkv_rejects_wrong_row_count() -> None:
    with pytest.raises(ValueError, match="rows"):
        T.split_qkv(torch.zeros(10, 2), 2, 1, 3)


@given(heads=small, head_dim=small, cols=small, transpose=st.booleans())
def test_group_qkv_round_trips(heads: int, head_dim: int, cols: int, transpose: bool) -> None:
    w, rule, dims = _rand(3 * heads * head_dim, cols), GroupQKV("a", "b", transpose=transpose), {"n_heads": heads,
                                                                                                "head_dim": head_dim}
    (out,) = rule.forward([w], dims)
    assert out.numel() == w.numel() and torch.equal(out, T.group_qkv_by_kind(w, heads, head_dim).t() if transpose
                                                    else T.group_qkv_by_kind(w, heads, head_dim))
    assert torch.equal(rule.inverse([out], dims)[0], w)


def test_group_qkv_puts_all_queries_first() -> None:
    # rows per head: q, k, v (head_dim 1): h0q h0k h0v h1q h1k h1v -> h0q h1q h0k h1k h0v h1v
    w = torch.tensor([0.0, 1, 2, 3, 4, 5])
    assert T.group_qkv_by_kind(w, 2, 1).tolist() == [0, 3, 1, 4, 2, 5]


@given(experts=small, rows=small, cols=small, transpose=st.booleans())
def test_experts_round_trip(experts: int, rows: int, cols: int, transpose: bool) -> None:
    w, rule = _rand(experts * rows, cols), Unstack("a", "b.{expert}", transpose_blocks=transpose)
    blocks = rule.forward([w], {"n_experts": experts})
    assert len(blocks) == experts and sum(b.numel() for b in blocks) == w.numel()
    assert all(b.shape == ((cols, rows) if transpose else (rows, cols)) for b in blocks)
    assert torch.equal(rule.inverse(blocks, {"n_experts": experts})[0], w)


@given(rows=small, extra=st.integers(0, 4), cols=small)
def test_vocab_cut_round_trips_zero_padding(rows: int, extra: int, cols: int) -> None:
    w = torch.cat([_rand(rows, cols), torch.zeros(extra, cols)])
    rule, dims = CutVocab("a", "b"), {"vocab_size": rows, "padded_vocab_size": rows + extra}
    assert torch.equal(rule.inverse(rule.forward([w], dims), dims)[0], w)


def test_cut_vocab_rejects_larger_vocab() -> None:
    with pytest.raises(ValueError, match="fewer than the vocabulary"):
        T.cut_vocab(torch.zeros(3, 2), 4)


@given(rows=small, cols=small)
def test_quantize_round_trips_dequantized_values(rows: int, cols: int) -> None:
    w8, scale = T.quantize(_rand(rows, cols))
    assert torch.equal(T.quantize(T.dequantize(w8, scale))[0], w8)


@given(n=small)
def test_unit_offset_round_trips_dyadic_values(n: int) -> None:
    w = torch.arange(n, dtype=torch.float32) / 4  # exactly representable: w + 1 - 1 == w
    assert torch.equal(T.remove_unit_offset(T.add_unit_offset(w)), w)


def test_transforms_run_on_meta() -> None:
    w = torch.empty(12, 4, device="meta")
    assert T.permute_rotary(w, 3, 4).shape == (12, 4)
    assert [t.shape[0] for t in T.split_qkv(w, 2, 1, 3)] == [6, 3, 3]


@given(ranks=small, rows=small, cols=small, dim=st.sampled_from([0, 1]))
def test_rank_merge_round_trips(ranks: int, rows: int, cols: int, dim: int) -> None:
    stacked = _rand(ranks, rows, cols)  # rank r's slice at index r
    merged = T.concat_ranks(stacked, dim)
    assert merged.numel() == stacked.numel()
    assert merged.shape == ((ranks * rows, cols) if dim == 0 else (rows, ranks * cols))
    rule = MergeRanks("a", "b", dim=dim, ranks="ranks")
    assert torch.equal(rule.forward([stacked], {})[0], merged)
    assert torch.equal(rule.inverse([merged], {"ranks": ranks})[0], stacked)


@given(ranks=small, n=small)
def test_replicated_rank_round_trips(ranks: int, n: int) -> None:
    w = _rand(n)
    rule = Replicated("a", "b", ranks="ranks")
    (stacked,) = rule.inverse([w], {"ranks": ranks})
    assert stacked.shape == (ranks, n) and torch.equal(rule.forward([stacked], {})[0], w)


def test_rank_merge_joins_slices_in_rank_order() -> None:
    # column-parallel (dim 0) stacks rank 0's rows first; row-parallel (dim 1) puts rank 0's columns first
    stacked = torch.arange(8.0).reshape(2, 2, 2)  # rank 0: [[0, 1], [2, 3]], rank 1: [[4, 5], [6, 7]]
    assert T.concat_ranks(stacked, 0).tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert T.concat_ranks(stacked, 1).tolist() == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert T.concat_ranks(torch.empty(8, 3, 5, device="meta"), 1).shape == (3, 40)
    with pytest.raises(ValueError, match="does not split into 3 equal rank slices"):
        MergeRanks("a", "b", dim=0, ranks="r").inverse([torch.zeros(4, 2)], {"r": 3})
