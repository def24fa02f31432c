"""Gemma's named points: reference.py's probe names -> the ``GemmaForCausalLM`` sub-modules computing them."""

from harness.mapping.points import Point

_L = "model.layers.{layer}"
ATTENTION = ("rope_theta", "rope_parameters", "num_attention_heads", "num_key_value_heads", "head_dim")

POINTS = [
    Point("embedder", "model.embed_tokens", ("vocab_size", "hidden_size"), "embeddings (scaled by sqrt(hidden))"),
    Point(f"{_L}.input_layernorm", f"{_L}.input_layernorm", ("rms_norm_eps",), "input norm"),
    Point(f"{_L}.self_attn", f"{_L}.self_attn", ATTENTION,
          "attention (q/k/v projections, rotary, scores, output projection)"),
    Point(f"{_L}.self_attn.o_proj", f"{_L}.self_attn.o_proj", (), "output projection"),
    Point(f"{_L}.post_attention_layernorm", f"{_L}.post_attention_layernorm", ("rms_norm_eps",),
          "post-attention norm"),
    Point(f"{_L}.mlp", f"{_L}.mlp", ("hidden_act", "hidden_activation", "intermediate_size"), "MLP"),
    Point("model.norm", "model.norm", ("rms_norm_eps",), "final norm"),
    Point("sampler", "lm_head", ("tie_word_embeddings", "vocab_size"), "head"),
]
