"""Phi's named points: reference.py's probe names -> the ``PhiForCausalLM`` sub-modules computing them."""

from harness.mapping.points import Point

ATTENTION = ("rope_theta", "rope_parameters", "partial_rotary_factor", "num_attention_heads", "num_key_value_heads",
             "qk_layernorm")

POINTS = [
    Point("embd", "model.embed_tokens", ("vocab_size",), "embeddings"),
    Point("h.{layer}.ln", "model.layers.{layer}.input_layernorm", ("layer_norm_eps",), "input norm"),
    Point("h.{layer}.mixer", "model.layers.{layer}.self_attn", ATTENTION,
          "attention (q/k/v projections, rotary, scores, dense)"),
    Point("h.{layer}.mixer.out_proj", "model.layers.{layer}.self_attn.dense", (), "output projection (out_proj)"),
    Point("h.{layer}.mlp", "model.layers.{layer}.mlp", ("hidden_act", "intermediate_size"), "MLP"),
    Point("head.ln", "model.final_layernorm", ("layer_norm_eps",), "final norm"),
    Point("head.linear", "lm_head", ("tie_word_embeddings", "vocab_size"), "head"),
]
