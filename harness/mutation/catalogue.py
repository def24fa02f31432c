"""The generic mutation catalogue: planted converter bugs, each a named, documented function.

Where the key table already says what a tensor is (a ``Rotary`` rule, a ``Split`` of a fused projection, a
``CutVocab``, the ``{layer}`` a step is bound to), the mutant is derived from the table: it re-runs that rule's
steps with the bug planted. Otherwise it acts on transformers' parameter names and config fields, which are
the same for every family. A mutant that finds nothing to act on leaves the conversion unchanged; the runner
(``harness.mutation.runner``) reports that case as not applicable. Family-specific bugs (those of the
transformers scripts this project replaces) live beside each family in ``converters/<family>/mutants.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.mapping import transforms
from harness.mapping.keymap import Step
from harness.mapping.rules import CutVocab, GroupQKV, Rotary, Split
from harness.mutation.planting import Catalogue, Mutable, config_items, rerun, set_config, swap_blocks, swap_names

if TYPE_CHECKING:
    import torch

__all__ = ["GENERIC"]

GENERIC = Catalogue()  # in the order the functions below are defined


@GENERIC.add
def transpose_square_weight(m: Mutable) -> None:
    """A square matrix written transposed ([in, out] where [out, in] belongs): shape checks cannot see it."""
    import torch

    for name, t in m.tensors.items():
        if t.dim() == 2 and t.shape[0] == t.shape[1] and not torch.equal(t, t.t()):
            m.tensors[name] = t.t().contiguous()
            return


@GENERIC.add
def swap_layers(m: Mutable) -> None:
    """Blocks 0 and 1 exchanged (a layer index off by one, or keys sorted as strings)."""
    by_binding = {(step.rule, step.binding): step for step in m.converted.steps}
    for step in m.converted.steps:
        if dict(step.binding).get("layer") != 0:
            continue
        other = by_binding.get((step.rule, tuple((k, 1 if k == "layer" else v) for k, v in step.binding)))
        for a, b in zip(step.targets, other.targets if other else (), strict=True):
            if a in m.tensors and b in m.tensors and m.tensors[a].shape == m.tensors[b].shape:
                m.tensors[a], m.tensors[b] = m.tensors[b], m.tensors[a]


@GENERIC.add
def swap_q_and_k(m: Mutable) -> None:
    """Query and key projections exchanged (separate q/k weights of equal shape, or the blocks of a fused c_attn)."""
    swap_names(m, "q_proj", "k_proj")
    _swap_fused_qkv_blocks(m, 0, 1)


@GENERIC.add
def drop_rotary_permutation(m: Mutable) -> None:
    """q/k rows copied as stored, without the interleaved -> rotate-half permutation (Llama/Mistral scripts)."""
    rerun(m, Rotary, lambda step, src: src)


@GENERIC.add
def double_rotary_permutation(m: Mutable) -> None:
    """The rotary permutation applied twice (once by a helper, once again by the converter)."""
    rerun(m, Rotary, lambda step, src: step.rule.forward(step.rule.forward(src, m.converted.dims), m.converted.dims))


@GENERIC.add
def rotary_convention_reversed(m: Mutable) -> None:
    """Interleaved-vs-half rotary convention taken the wrong way round.

    Where the table permutes (interleaved upstream), the inverse permutation is applied instead; where it does
    not (upstream already rotates halves, as gemma_pytorch and phi do), a Llama-style permutation is applied to
    q and k anyway (gemma README fact 5: errors 2.3-7.4).
    """
    rerun(m, Rotary, lambda step, src: step.rule.inverse(src, m.converted.dims))
    if any(isinstance(s.rule, Rotary) for s in m.converted.steps) or not _has_rope(m.config):
        return
    heads, kv, hd = _heads(m.config)
    for name, t in list(m.tensors.items()):
        for proj, n in (("q_proj.", heads), ("k_proj.", kv)):
            if proj in name and t.shape[0] == n * hd:
                m.tensors[name] = transforms.permute_rotary(t, n, hd)


@GENERIC.add
def split_order_kv_swapped(m: Mutable) -> None:
    """A fused projection split as [q | v | k] instead of [q | k | v]."""
    rerun(m, Split, lambda step, src: _swap_last_two(step.rule.forward(src, m.converted.dims)))
    _swap_fused_qkv_blocks(m, 1, 2)


@GENERIC.add
def zero_bias(m: Mutable) -> None:
    """The biases of one rule written as zeros (a converter that initialised instead of copying them)."""
    import torch

    for name in _first_bias_rule_targets(m):
        m.tensors[name] = torch.zeros_like(m.tensors[name])


@GENERIC.add
def drop_bias(m: Mutable) -> None:
    """The biases of one rule left out of the output (``from_pretrained`` would initialise them)."""
    for name in _first_bias_rule_targets(m):
        del m.tensors[name]


@GENERIC.add
def tie_untied_head(m: Mutable) -> None:
    """An untied LM head declared tied and not written: transformers reuses the input embedding instead."""
    if m.config.get("tie_word_embeddings") is False:
        m.config["tie_word_embeddings"] = True
        for name in [n for n in m.tensors if n.endswith("head.weight")]:
            del m.tensors[name]


@GENERIC.add
def untie_tied_head(m: Mutable) -> None:
    """A tied LM head declared untied: nothing is written for it, so transformers would initialise it randomly."""
    if m.config.get("tie_word_embeddings") is True:
        m.config["tie_word_embeddings"] = False


@GENERIC.add
def keep_padded_vocab_rows(m: Mutable) -> None:
    """Padded embedding rows copied instead of cut to the real vocabulary (the config keeps the real size)."""
    rerun(m, CutVocab, lambda step, src: None if src[0].shape[0] == m.converted.dims[step.rule.rows] else src)


@GENERIC.add
def cut_vocab_rows(m: Mutable) -> None:
    """The vocabulary cut to a round number below its real size (a hard-coded vocab_size), config to match."""
    V = int(m.config.get("vocab_size", 0))
    cut = V // 64 * 64 if V % 64 else V - 64
    if cut <= 0:
        return
    m.config["vocab_size"] = cut
    for name, t in list(m.tensors.items()):
        if t.dim() >= 1 and t.shape[0] == V and ("embed" in name or "wte" in name or "head" in name):
            m.tensors[name] = t[:cut]


@GENERIC.add
def wrong_gelu(m: Mutable) -> None:
    """Exact (erf) GELU where upstream uses the tanh approximation, or the reverse (~1e-3 on the logits)."""
    set_config(m, lambda k: k in _ACTIVATION_KEYS, lambda v: _OTHER_GELU.get(v, v))


@GENERIC.add
def wrong_norm_eps(m: Mutable) -> None:
    """A hard-coded norm epsilon (1e-6 <-> 1e-5 mix-up, 1e-5 for anything else) instead of the configured one."""
    set_config(m, lambda k: k in _EPS_KEYS, lambda v: 1e-5 if v != 1e-5 else 1e-6)


@GENERIC.add
def norm_unit_offset(m: Mutable) -> None:
    """Norm weights stored as (1 + w) where the target already adds the 1, or expects the plain w (gemma fact 8)."""
    for name, t in list(m.tensors.items()):
        if t.dim() == 1 and name.endswith(".weight") and _is_norm(name):
            m.tensors[name] = transforms.add_unit_offset(t)


@GENERIC.add
def wrong_rope_theta(m: Mutable) -> None:
    """Rotary base 1e4 where 1e6 belongs, or the reverse (a default from another model's script)."""
    set_config(m, lambda k: k == "rope_theta", lambda v: 1e6 if v != 1e6 else 1e4)


@GENERIC.add
def swap_experts(m: Mutable) -> None:
    """Experts 0 and 1 exchanged in every layer, while the router still scores them in the stored order."""
    swap_names(m, ".experts.0.", ".experts.1.")


@GENERIC.add
def swap_gate_up(m: Mutable) -> None:
    """Gate and up projections of a gated MLP exchanged (w1 <-> w3, gate_proj <-> up_proj)."""
    for a, b in _GATE_UP:
        swap_names(m, a, b)


@GENERIC.add
def swap_attention_heads(m: Mutable) -> None:
    """Query heads 0 and 1 exchanged (a head-major/row-major mix-up inside a projection)."""
    dims = m.converted.dims

    def split(step: Step, src: list[torch.Tensor]) -> list[torch.Tensor] | None:
        q, *rest = step.rule.forward(src, dims)
        hd = dims[step.rule.head_dim]
        return [swap_blocks(q, hd, 0, 1), *rest] if q.shape[0] >= 2 * hd else None

    def fused(step: Step, src: list[torch.Tensor]) -> list[torch.Tensor] | None:
        w, hd = step.rule.forward(src, dims)[0], dims[step.rule.head_dim]
        dim = 1 if step.rule.transposes and w.dim() == 2 else 0
        return [swap_blocks(w, hd, 0, 1, dim)] if dims[step.rule.heads] >= 2 else None

    query = _query_rotary(m.converted.steps, dims)

    def rotary(step: Step, src: list[torch.Tensor]) -> list[torch.Tensor] | None:
        if step.rule is not query or dims[step.rule.heads] < 2:
            return None
        return [swap_blocks(step.rule.forward(src, dims)[0], dims[step.rule.head_dim], 0, 1)]

    rerun(m, Split, split)
    rerun(m, GroupQKV, fused)
    rerun(m, Rotary, rotary)


# transformers' config and parameter names, the same across model types.
_ACTIVATION_KEYS = ("hidden_act", "activation_function")
_OTHER_GELU = {"gelu": "gelu_pytorch_tanh", "gelu_python": "gelu_pytorch_tanh", "gelu_new": "gelu_python",
               "gelu_pytorch_tanh": "gelu_python", "gelu_fast": "gelu_python"}
_EPS_KEYS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")
_GATE_UP = ((".w1.", ".w3."), ("gate_proj", "up_proj"))


def _is_norm(name: str) -> bool:
    module = name.rsplit(".", 2)[-2]
    return "norm" in module or module.startswith("ln") or module.endswith("_ln")



def _swap_last_two(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [xs[0], xs[2], xs[1]]


def _has_rope(config: dict[str, Any]) -> bool:
    return any(True for _ in config_items(config, lambda k: k == "rope_theta"))


def _heads(config: dict[str, Any]) -> tuple[int, int, int]:
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    hd = config.get("head_dim") or config["hidden_size"] // heads
    return heads, kv, hd


def _first_bias_rule_targets(m: Mutable) -> list[str]:
    """Targets of the first rule that writes a non-zero bias, over all its steps (every layer)."""
    for step in m.converted.steps:
        biases = [t for t in step.targets if t.endswith("bias") and t in m.tensors and m.tensors[t].any()]
        if biases:
            suffix = biases[0].rsplit(".", 2)[-2:]
            return [t for s in m.converted.steps if s.rule is step.rule for t in s.targets
                    if t.rsplit(".", 2)[-2:] == suffix and t in m.tensors]
    return []


def _swap_fused_qkv_blocks(m: Mutable, i: int, j: int) -> None:
    """Exchange blocks ``i`` and ``j`` of [q | k | v] in every GroupQKV output (the columns of a Conv1D c_attn)."""
    def fused(step: Step, src: list[torch.Tensor]) -> list[torch.Tensor]:
        w = step.rule.forward(src, m.converted.dims)[0]
        dim = 1 if step.rule.transposes and w.dim() == 2 else 0
        return [swap_blocks(w, w.shape[dim] // 3, i, j, dim)]

    rerun(m, GroupQKV, fused)


def _query_rotary(steps: list[Step], dims: dict[str, int]) -> Rotary | None:
    """The rotary rule of the query projection: the one declared with the most heads (GQA gives k fewer; with
    as many, the first declared, as tables list q before k)."""
    rules = list(dict.fromkeys(s.rule for s in steps if isinstance(s.rule, Rotary)))
    return max(rules, key=lambda r: dims[r.heads], default=None)
