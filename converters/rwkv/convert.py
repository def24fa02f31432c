"""RWKV-4: BlinkDL's ``.pth`` state dict -> transformers ``RwkvForCausalLM``.

Mirrors the old transformers script ``convert_rwkv_checkpoint_to_hf.py`` (huggingface/transformers @ 0851a87d,
``convert_state_dict``) for the key names, checked against the ``rwkv`` runtime 0.8.32 (``rwkv/model.py``,
"pkg" below) and transformers 5.23 ``modeling_rwkv.py`` ("HF"). Every tensor is copied unchanged: both sides
store ``nn.Linear`` ``[out, in]`` weights, ``time_mix_*`` as ``[1, 1, C]``, and the raw ``time_decay`` (each
consumer applies ``-exp`` itself: pkg L796-798, HF L178) and raw ``time_first`` (v4 adds it as is: pkg L1073,
HF L185-187).

``rescale_every`` (default: 6 for an fp16-stored file, else 0; ``--rescale-every N`` overrides): transformers
halves the hidden state after every N-th block in eval mode in every dtype (HF L585-592, weights divided in
place, L615-637); the runtime does so only when it computes in fp16 (pkg L634), because trained RWKV-4
activations grow with depth until fp16 overflows. LayerNorm is scale invariant, so the only fp32 effect is
through the LayerNorm eps. Measured (random tiny models, CPU, against the runtime in "cpu fp32", i.e. rescale
0): rescale 0 gives 0.0 at 13, 24 and 40 layers; rescale 6 gives 1.9e-5..2.4e-5 at 13 layers, 1.3e-4..2.2e-4 at
24 and 3.3e-3 at 40 (width 32), and 1e-6 against the runtime run with RWKV_RESCALE_LAYER=6 at any depth. fp16,
28 layers, residual stream growing 1.5x per block as in trained models: rescale 0 overflows to inf/nan, rescale
6 stays finite (tests/test_rwkv.py). So the config follows the runtime: 0 (exact fp32/bf16 parity at any
depth) unless the file is fp16, 6 for fp16; ``convert`` tells the user to pass 6 to run in fp16. The
reference runs with the same value, config["rescale_every"], as the runtime does with RWKV_RESCALE_LAYER.
"""

from __future__ import annotations

from converters.rwkv.source import CTX_LEN, shapes
from harness.family.tables import KeyTables
from harness.mapping.config_kinds import Count, NonNegativeInt, PositiveInt
from harness.mapping.config_map import ConfigMap, Field
from harness.mapping.conversion import Converted, SourceCheckpoint
from harness.mapping.keymap import KeyMap, Layouts
from harness.mapping.rules import Rename

__all__ = ["CONFIG", "KEYS", "ONE_LAYER_NOTE", "TABLES", "convert"]

CONFIG = ConfigMap(
    [
        Field("n_embd", "hidden_size", kind=PositiveInt),  # emb.weight.shape[1] (pkg L658)
        Field("n_layer", "num_hidden_layers", kind=Count),  # 1 + the largest block index (pkg L664-665)
        Field("dim_att", "attention_hidden_size", kind=PositiveInt),  # att.key.weight.shape[0] (pkg L659)
        # ffn.key.weight.shape[0]; HF would default to 4 * hidden
        Field("dim_ffn", "intermediate_size", kind=PositiveInt),
        Field("vocab_size", "vocab_size", kind=PositiveInt),  # emb.weight.shape[0]; RWKV-4 pads no vocabulary
        # --ctx-len; sizes HF's CUDA kernel only (HF L221-224)
        Field("ctx_len", "context_length", default=CTX_LEN, kind=PositiveInt),
        # --rescale-every or read()'s choice: see the module docstring; 0 = never
        Field("rescale_every", "rescale_every", default=0, kind=NonNegativeInt),
    ],
    fixed={
        "model_type": "rwkv",
        "architectures": ["RwkvForCausalLM"],
        # RWKV-4 has its own head (RWKV-LM model.py L738); True would silently replace it by emb (HF L668).
        "tie_word_embeddings": False,
        "layer_norm_epsilon": 1e-5,  # F.layer_norm's default, which every upstream path uses
        "bos_token_id": 0,  # GPT-NeoX-20B tokenizer's <|endoftext|>, used by the Pile models
        "eos_token_id": 0,
    },
    name="rwkv .pth (sizes from tensor shapes)",
)

_B, _HF = "blocks.{layer}", "rwkv.blocks.{layer}"
KEYS = Layouts("rwkv", KeyMap(
    [
        Rename("emb.weight", "rwkv.embeddings.weight"),
        # ln0 exists only in block 0, applied to the embeddings (RWKV-LM model.py L636-637) = HF pre_ln (L331).
        # Not folded into emb as the runtime does at load (pkg L756): that is lossy for bf16 files.
        Rename("blocks.0.ln0.weight", "rwkv.blocks.0.pre_ln.weight"),
        Rename("blocks.0.ln0.bias", "rwkv.blocks.0.pre_ln.bias"),
        Rename(f"{_B}.ln1.weight", f"{_HF}.ln1.weight"),
        Rename(f"{_B}.ln1.bias", f"{_HF}.ln1.bias"),
        Rename(f"{_B}.ln2.weight", f"{_HF}.ln2.weight"),
        Rename(f"{_B}.ln2.bias", f"{_HF}.ln2.bias"),
        Rename(f"{_B}.att.time_decay", f"{_HF}.attention.time_decay"),  # raw w: no exp, no negation
        Rename(f"{_B}.att.time_first", f"{_HF}.attention.time_first"),  # raw u: exp(u) is v5/v6 only
        Rename(f"{_B}.att.time_mix_k", f"{_HF}.attention.time_mix_key"),
        Rename(f"{_B}.att.time_mix_v", f"{_HF}.attention.time_mix_value"),
        Rename(f"{_B}.att.time_mix_r", f"{_HF}.attention.time_mix_receptance"),
        Rename(f"{_B}.att.key.weight", f"{_HF}.attention.key.weight"),
        Rename(f"{_B}.att.value.weight", f"{_HF}.attention.value.weight"),
        Rename(f"{_B}.att.receptance.weight", f"{_HF}.attention.receptance.weight"),
        Rename(f"{_B}.att.output.weight", f"{_HF}.attention.output.weight"),
        Rename(f"{_B}.ffn.time_mix_k", f"{_HF}.feed_forward.time_mix_key"),
        Rename(f"{_B}.ffn.time_mix_r", f"{_HF}.feed_forward.time_mix_receptance"),
        Rename(f"{_B}.ffn.key.weight", f"{_HF}.feed_forward.key.weight"),
        Rename(f"{_B}.ffn.receptance.weight", f"{_HF}.feed_forward.receptance.weight"),
        Rename(f"{_B}.ffn.value.weight", f"{_HF}.feed_forward.value.weight"),
        Rename("ln_out.weight", "rwkv.ln_out.weight"),
        Rename("ln_out.bias", "rwkv.ln_out.bias"),
        Rename("head.weight", "head.weight"),  # no "rwkv." prefix: the head sits on RwkvForCausalLM itself
    ],
    ranges={"layer": "n_layer"},
    dims=lambda c: {"n_layer": c["n_layer"]},
), title="RWKV")

# HF L378: RwkvPreTrainedModel._init_weights computes layer_id / (num_hidden_layers - 1), run by
# from_pretrained too, so stock transformers raises ZeroDivisionError on any 1-layer RWKV.
ONE_LAYER_NOTE = ("this is a 1-layer RWKV: the converted weights are exact, but stock transformers 5.x cannot load "
                  "it (RwkvPreTrainedModel._init_weights divides by num_hidden_layers - 1 and raises "
                  "ZeroDivisionError in from_pretrained; 4.57 loads it); load it with that method patched to a "
                  "no-op, as converters.rwkv.loading does")


def convert(source: SourceCheckpoint) -> Converted:
    """The tables' conversion, and a note where transformers cannot rebuild what it converts (one layer)."""
    converted = TABLES.derived_convert(source)
    if CONFIG.complete(source.config)["n_layer"] == 1:
        converted.notes.append(ONE_LAYER_NOTE)
    return converted


TABLES = KeyTables(CONFIG, KEYS, shapes, custom_convert=convert)
