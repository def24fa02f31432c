"""Config entries that say what they are: several upstream fields in, several targets out, one writer per target."""

from __future__ import annotations

import pytest

from harness.errors import ConversionError
from harness.mapping.config_kinds import Bool, PositiveInt
from harness.mapping.config_map import REQUIRED, ConfigMap, Field
from harness.registry import families


def _activation(fusion: bool, openai_gelu: bool, onnx_safe: bool) -> str:
    return "tanh" if openai_gelu or (fusion and not onnx_safe) else "exact"


SWITCHES = Field(("fusion", "openai_gelu", "onnx_safe"), "act", default=(True, False, False), kind=Bool,
                 to_target=_activation, to_source=lambda act: (act == "tanh", False, False), lossy="openai_gelu")


def test_a_multi_source_entry_gets_the_values_of_its_own_fields() -> None:
    seen = []
    spy = Field(("a", "b"), "ab", to_target=lambda a, b: seen.append((a, b)) or a * 10 + b,
                to_source=lambda ab: divmod(ab, 10))
    cm = ConfigMap([Field("dim", "hidden_size"), spy])
    assert cm.to_target({"b": 2, "dim": 8, "a": 1}) == {"hidden_size": 8, "ab": 12}
    assert seen == [(1, 2)]
    assert cm.to_source({"hidden_size": 8, "ab": 12}) == {"dim": 8, "a": 1, "b": 2}


@pytest.mark.parametrize(("config", "act"), [
    ({}, "tanh"), ({"fusion": False}, "exact"), ({"onnx_safe": True}, "exact"),
    ({"onnx_safe": True, "openai_gelu": True}, "tanh"),
])
def test_each_source_field_of_an_entry_has_its_own_default(config: dict, act: str) -> None:
    assert ConfigMap([SWITCHES]).to_target(config) == {"act": act}


def test_each_source_field_of_an_entry_has_its_own_kind() -> None:
    cm = ConfigMap([Field(("n", "flag"), "nf", default=(REQUIRED, False), kind=(PositiveInt, Bool),
                          to_target=lambda n, flag: (n, flag), to_source=lambda nf: nf)], name="cfg")
    with pytest.raises(ConversionError, match=r"^cfg: flag is 'yes' \(a string\); expected true or false$"):
        cm.complete({"n": 2, "flag": "yes"})
    with pytest.raises(ConversionError, match=r"missing required field\(s\) \['n'\]"):
        cm.complete({})
    assert cm.kind("n") is PositiveInt and cm.kind("flag") is Bool and cm.kind("other") is None


def test_an_entry_writes_several_targets_and_reads_declared_fields() -> None:
    heads = Field("n_heads", ("num_attention_heads", "head_dim"), reads=("dim",),
                  to_target=lambda n, dim: (n, dim // n), to_source=lambda n, head_dim, dim: n)
    cm = ConfigMap([heads, Field("dim", "hidden_size")])  # the owner of a read may come later
    target = cm.to_target({"dim": 32, "n_heads": 4})
    assert target == {"num_attention_heads": 4, "head_dim": 8, "hidden_size": 32}
    assert cm.to_source(target) == {"n_heads": 4, "dim": 32}


def test_display_names_join_the_fields() -> None:
    assert (SWITCHES.source, SWITCHES.target) == ("fusion, openai_gelu, onnx_safe", "act")
    assert repr(SWITCHES) == "Field(fusion, openai_gelu, onnx_safe -> act)"


def test_a_second_writer_of_a_target_is_refused_when_the_table_is_built() -> None:
    with pytest.raises(ValueError, match=r"^cfg: act is written by Field\(fusion, openai_gelu, onnx_safe -> act\) "
                                         r"and by Field\(gelu -> act\); one entry must write it from both$"):
        ConfigMap([SWITCHES, Field("gelu", "act")], name="cfg")
    with pytest.raises(ValueError, match=r"model_type is written by fixed= and by Field\(kind -> model_type\)"):
        ConfigMap([Field("kind", "model_type")], fixed={"model_type": "x"})


def test_a_source_field_read_by_two_entries_must_be_declared() -> None:
    with pytest.raises(ValueError, match=r"^cfg: dim is owned by Field\(dim -> hidden_size\) and by "
                                         r"Field\(dim -> head_dim\); own it in one entry and name it in reads="):
        ConfigMap([Field("dim", "hidden_size"), Field("dim", "head_dim")], name="cfg")
    with pytest.raises(ValueError, match=r"Field\(n -> m\) reads \['dim'\], which no entry owns"):
        ConfigMap([Field("n", "m", reads=("dim",))])


def test_entries_that_read_each_other_are_refused() -> None:
    a = Field("a", "x", reads=("b",))
    b = Field("b", "y", reads=("a",))
    with pytest.raises(ValueError, match=r"read each other's fields \(Field\(a -> x\) -> Field\(b -> y\) -> "
                                         r"Field\(a -> x\)\); merge them"):
        ConfigMap([a, b])


def test_an_entry_that_is_not_one_to_one_gives_both_directions() -> None:
    with pytest.raises(ValueError, match=r"Field\(a, b -> c\) is not one-to-one: give to_target and to_source"):
        Field(("a", "b"), "c", to_target=lambda a, b: a)
    with pytest.raises(ValueError, match="one default and one kind per source field"):
        Field(("a", "b"), "c", default=(1, 2, 3), to_target=max, to_source=lambda c: (c, c))


def test_a_multi_target_entry_must_return_one_value_per_target() -> None:
    cm = ConfigMap([Field("a", ("x", "y"), to_target=lambda a: a, to_source=lambda x, y: x)])
    with pytest.raises(TypeError, match=r"Field\(a -> x, y\): to_target returned 1; expected a tuple of 2 values"):
        cm.to_target({"a": 1})


@pytest.mark.parametrize("name", sorted(families()))
def test_every_family_table_round_trips_its_cases(name: str) -> None:
    """to_target ∘ to_source ∘ to_target is to_target: what an inverse cannot restore is not needed."""
    fam = families()[name]
    config_map = families()[name].config
    for case in fam.cases.values():
        target = config_map.to_target(fam.tiny(layout=case.layout, **case.config).config)
        assert config_map.to_target(config_map.to_source(target)) == target
