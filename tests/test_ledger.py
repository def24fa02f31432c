"""The key table and its ledger: placeholders checked at construction, every violation named."""

from __future__ import annotations

import pytest
import torch

from harness.errors import ConversionError
from harness.mapping.config_map import ConfigMap, Field
from harness.mapping.keymap import KeyMap, LedgerError
from harness.mapping.rules import Drop, Rename, Rotary, Tie, Unstack

DIMS = {"n_layers": 2, "n_heads": 2, "head_dim": 4, "n_experts": 3}
TABLE = KeyMap([
    Rename("emb", "model.emb"),
    Rotary("layers.{layer}.wq", "model.layers.{layer}.q", heads="n_heads"),
    Drop("layers.{layer}.cache", reason="recomputed", optional=True),
    Tie("lm_head.weight", to="model.emb"),
], ranges={"layer": "n_layers"})
KEYS = ["emb", "layers.0.wq", "layers.1.wq"]


def test_plan_expands_every_layer() -> None:
    steps = TABLE.plan(KEYS, DIMS)
    assert [s.targets for s in steps] == [("model.emb",), ("model.layers.0.q",), ("model.layers.1.q",)]


def test_mismatched_placeholders_fail_at_construction() -> None:
    with pytest.raises(ValueError, match=r"'layers.\{layer\}.w'.*'model.w'"):
        Rename("layers.{layer}.w", "model.w")


def test_placeholder_without_range_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="no range"):
        KeyMap([Rename("layers.{layer}.w", "m.{layer}.w")])


def test_offset_placeholder() -> None:
    table = KeyMap([Rename("layers.{layer+1}.w", "m.{layer}.w")], ranges={"layer": "n_layers"})
    assert [s.sources for s in table.plan(["layers.1.w", "layers.2.w"], DIMS)] == [("layers.1.w",), ("layers.2.w",)]


@pytest.mark.parametrize(("keys", "message"), [
    (KEYS + ["stray"], "unmatched in source: stray"),
    (KEYS[:-1], r"missing in source: layers.1.wq"),
    (["layers.0.wq", "layers.1.wq"], r"unused rules: Rename\(emb -> model.emb\)"),
])
def test_ledger_names_the_keys(keys: list[str], message: str) -> None:
    with pytest.raises(LedgerError, match=message):
        TABLE.plan(keys, DIMS)


def test_ledger_reports_targets_produced_twice() -> None:
    table = KeyMap([Rename("a", "x"), Rename("b", "x")])
    with pytest.raises(LedgerError, match="produced twice: x"):
        table.plan(["a", "b"], {})


def test_drops_consume_matching_keys_and_required_drops_must_match() -> None:
    TABLE.plan(KEYS + ["layers.0.cache", "layers.1.cache"], DIMS)
    required = KeyMap([Rename("a", "x"), Drop("*._extra_state", reason="TransformerEngine state")])
    required.plan(["a", "b._extra_state"], {})
    with pytest.raises(LedgerError, match="unused rules: Drop"):
        required.plan(["a"], {})


def test_ledger_reports_mis_shaped_tensors() -> None:
    shapes = {"emb": (4, 2), "layers.0.wq": (8, 2), "layers.1.wq": (7, 2)}
    expected = {**shapes, "layers.1.wq": (8, 2)}
    with pytest.raises(LedgerError, match=r"mis-shaped: layers.1.wq is \(7, 2\), expected \(8, 2\)"):
        TABLE.plan(KEYS, DIMS, expected, shapes)


def test_unstack_expands_the_extra_placeholder() -> None:
    table = KeyMap([Unstack("l.{layer}.w1", "m.{layer}.e.{expert}.w1")], ranges={"layer": "n_layers"})
    steps = table.plan(["l.0.w1", "l.1.w1"], DIMS)
    assert steps[0].targets == ("m.0.e.0.w1", "m.0.e.1.w1", "m.0.e.2.w1")


def test_invert_walks_the_table_backwards() -> None:
    tensors = {"emb": torch.randn(4, 2), "layers.0.wq": torch.randn(8, 2), "layers.1.wq": torch.randn(8, 2)}
    steps = TABLE.plan(tensors, DIMS)
    out = {t: o for s in steps for t, o in zip(s.targets, s.run([tensors[k] for k in s.sources], DIMS), strict=True)}
    back = TABLE.invert(out, DIMS)
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)


CONFIG = ConfigMap([Field("dim", "hidden_size"), Field("moe.k", "top_k"), Field("theta", "rope_theta", default=1e6)],
                   fixed={"model_type": "m"}, ignored={"sliding_window": "not used"}, name="params.json")


def test_config_map_reads_both_ways_with_defaults() -> None:
    target = CONFIG.to_target({"dim": 8, "moe": {"k": 2}, "sliding_window": 4})
    assert target == {"model_type": "m", "hidden_size": 8, "top_k": 2, "rope_theta": 1e6}
    assert CONFIG.to_source(target) == {"dim": 8, "moe": {"k": 2}, "theta": 1e6}


@pytest.mark.parametrize(("config", "message"), [
    ({"dim": 8, "moe": {"k": 2}, "hidden_size": 8}, r"params.json: unknown field\(s\) \['hidden_size'\]"),
    ({"moe": {"k": 2}}, r"params.json: missing required field\(s\) \['dim'\]"),
])
def test_config_map_rejects_unknown_and_missing_fields(config: dict, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        CONFIG.to_target(config)
