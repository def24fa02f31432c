"""GPT-SW3's named points: reference.py's probe names -> the ``GPT2LMHeadModel`` sub-modules computing them."""

from harness.mapping.points import Point

_H = "transformer.h.{layer}"
ATTENTION = ("n_head", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn")

POINTS = [
    Point("word_embeddings", "transformer.wte", ("vocab_size",), "word embeddings"),
    Point("position_embeddings", "transformer.wpe", ("n_positions",), "position embeddings"),
    Point("layers.{layer}.input_layernorm", f"{_H}.ln_1", ("layer_norm_epsilon",), "input norm"),
    Point("layers.{layer}.self_attention", f"{_H}.attn", ATTENTION,
          "attention (fused qkv projection, scores, output projection)"),
    Point("layers.{layer}.post_attention_layernorm", f"{_H}.ln_2", ("layer_norm_epsilon",), "post-attention norm"),
    Point("layers.{layer}.mlp", f"{_H}.mlp", ("activation_function", "n_inner"), "MLP"),
    Point("final_layernorm", "transformer.ln_f", ("layer_norm_epsilon",), "final norm"),
    Point("output_layer", "lm_head", ("tie_word_embeddings", "vocab_size"), "head (tied to the word embeddings)"),
]
