"""Key steps in the declared order, layer by layer; one table per layout, picked by name; errors say whose table."""

from __future__ import annotations

import importlib
import re

import pytest
import torch

from converters.gpt_sw3.source import tiny as gpt_sw3_tiny
from converters.mixtral.source import tiny as mixtral_tiny
from converters.phi.source import tiny as phi_tiny
from converters.rwkv.convert import KEYS as RWKV_KEYS
from harness.errors import ConversionError
from harness.mapping.keymap import KeyMap, Layouts, LedgerError, check_dtypes
from harness.mapping.rules import Rename
from harness.registry import families

# The modules, not the functions that each family's package exports under the same name.
gpt_sw3, mixtral, phi = (importlib.import_module(f"converters.{f}.convert") for f in ("gpt_sw3", "mixtral", "phi"))
L, E = 2, 3  # layers, experts of the tiny Mixtral below
_MOE = "model.layers.{}.block_sparse_moe"
MIXTRAL_ORDER = (
    ["model.embed_tokens.weight"]
    + [name.format(layer) for layer in range(L) for name in [
        *(f"model.layers.{{}}.self_attn.{p}_proj.weight" for p in "qkvo"),
        "model.layers.{}.input_layernorm.weight", "model.layers.{}.post_attention_layernorm.weight",
        _MOE + ".gate.weight",
        *(f"{_MOE}.experts.{e}.{w}.weight" for w in ("w1", "w2", "w3") for e in range(E)),  # expert inside its rule
    ]]
    + ["model.norm.weight", "lm_head.weight"]
)


@pytest.mark.parametrize("layout", ["experts", "fused"])
def test_mixtral_steps_come_layer_by_layer_experts_inside_their_layer(layout: str) -> None:
    source = mixtral_tiny(layout=layout, n_layers=L, moe={"num_experts": E, "num_experts_per_tok": 2})
    converted = mixtral.TABLES.convert(source)
    assert [t for s in converted.steps for t in s.targets] == MIXTRAL_ORDER
    assert [s.name for s in converted.plan()] == MIXTRAL_ORDER  # what the writer lays out in the shards


@pytest.mark.parametrize("layout", ["phi-msft", "mixformer-sequential"])
def test_phi_steps_come_embedding_then_each_layer_then_the_head(layout: str) -> None:
    names = [t for s in phi.TABLES.convert(phi_tiny(layout=layout, n_layer=3)).steps for t in s.targets]
    layer_of = [int(m.group(1)) if (m := re.match(r"model\.layers\.(\d+)\.", n)) else None for n in names]
    assert names[0] == "model.embed_tokens.weight"
    assert names[-4:] == ["model.final_layernorm.weight", "lm_head.weight", "model.final_layernorm.bias",
                          "lm_head.bias"]
    assert layer_of[1:-4] == sorted(layer_of[1:-4]) == [i for i in range(3) for _ in range(14)]
    per_layer = [n.split(".", 3)[3] for n in names[1:15]]
    assert per_layer[:4] == ["input_layernorm.weight", "self_attn.dense.weight", "mlp.fc1.weight", "mlp.fc2.weight"]


def test_a_rule_without_layer_between_layer_rules_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^Rename\(norm -> m.norm\) has no \{layer\} but is declared between rules "
                                         r"that have one; declare it before the first such rule or after the last$"):
        KeyMap([Rename("l.{layer}.a", "m.{layer}.a"), Rename("norm", "m.norm"), Rename("l.{layer}.b", "m.{layer}.b")],
               ranges={"layer": "n"})


@pytest.mark.parametrize("name", sorted(families()))
def test_every_family_keys_are_layouts_with_a_default(name: str) -> None:
    keys = families()[name].keys
    assert isinstance(keys, Layouts) and keys.family == name and keys.default in keys
    assert all(isinstance(table, KeyMap) for _, table in keys.items())  # what `convparity describe` lists
    assert keys.pick("default").layout == keys.default


def test_a_single_table_is_the_default_layout() -> None:
    assert list(RWKV_KEYS) == ["default"] and RWKV_KEYS.pick("default").layout == "default"


@pytest.mark.parametrize(("module", "message"), [
    (mixtral, r"^mixtral has no key layout 'split'; known layouts: experts \(the default\), fused$"),
    (phi, r"^phi has no key layout 'split'; known layouts: phi-msft \(the default\), mixformer-sequential, "
          r"mixformer-v0$"),
])
def test_an_unknown_layout_is_refused_naming_the_known_ones(module, message: str) -> None:
    source = (mixtral_tiny if module is mixtral else phi_tiny)()
    source.layout = "split"
    with pytest.raises(ConversionError, match=message):
        module.TABLES.convert(source)


MIXTRAL_NEXT = (r" \(mixtral, layout 'fused'\): is SOURCE a Mixtral checkpoint in this layout\? "
                r"`convparity describe mixtral` lists the keys each layout expects\.$")


def test_ledger_errors_end_with_family_layout_and_what_to_do() -> None:
    source = mixtral_tiny(layout="experts")
    source.layout = "fused"  # per-expert keys read with the fused table
    with pytest.raises(LedgerError, match=r"^key ledger: unused rules: .*; unmatched in source: .*" + MIXTRAL_NEXT):
        mixtral.TABLES.convert(source)
    source = mixtral_tiny(layout="fused")
    shapes = {k: source.tensors.meta(k)[0] for k in source.tensors}
    shapes["norm.weight"] = (1, *shapes["norm.weight"])
    with pytest.raises(LedgerError, match=r"^key ledger: mis-shaped: norm.weight is \(1, 32\), expected \(32,\)"
                                          + MIXTRAL_NEXT):
        mixtral.KEYS.pick("fused").plan(source.tensors.keys(), mixtral._dims(mixtral.CONFIG.complete(source.config)),
                                        {k: v[1:] if k == "norm.weight" else v for k, v in shapes.items()}, shapes)


def test_dtype_refusals_end_with_family_and_what_to_do() -> None:
    converted = gpt_sw3.TABLES.convert(gpt_sw3_tiny())
    with pytest.raises(ConversionError, match=r"^tensor dtypes: .* is int64, expected .* \(gpt_sw3\): is SOURCE a "
                                              r"GPT-SW3 checkpoint\? `convparity describe gpt_sw3` lists the keys it "
                                              r"expects\.$"):
        check_dtypes(converted.steps, lambda k: ((2,), torch.int64))


def test_single_layout_errors_need_no_layout_name() -> None:
    with pytest.raises(LedgerError, match=r"unmatched in source: stray \(rwkv\): is SOURCE an RWKV checkpoint\? "
                                          r"`convparity describe rwkv` lists the keys it expects\.$"):
        RWKV_KEYS.pick("default").plan(["stray"], {"n_layer": 0})
