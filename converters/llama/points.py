"""Llama's named points: reference.py's probe names -> the ``LlamaForCausalLM`` sub-modules computing them."""

from harness.mapping.points import Point

ROPE = ("rope_theta", "rope_parameters", "rope_scaling", "num_attention_heads", "num_key_value_heads", "head_dim")

POINTS = [
    Point("embedding", "model.embed_tokens", ("vocab_size",), "embeddings"),
    Point("layers.{layer}.attention_norm", "model.layers.{layer}.input_layernorm", ("rms_norm_eps",), "input norm"),
    Point("layers.{layer}.attention", "model.layers.{layer}.self_attn", ROPE,
          "attention (q/k/v projections, rotary, scores, output projection)"),
    Point("layers.{layer}.attention.wo", "model.layers.{layer}.self_attn.o_proj", (), "output projection (wo)"),
    Point("layers.{layer}.ffn_norm", "model.layers.{layer}.post_attention_layernorm", ("rms_norm_eps",),
          "post-attention norm"),
    Point("layers.{layer}.feed_forward", "model.layers.{layer}.mlp", ("hidden_act", "intermediate_size"), "MLP"),
    Point("norm", "model.norm", ("rms_norm_eps",), "final norm"),
    Point("output", "lm_head", ("tie_word_embeddings", "vocab_size"), "head"),
]
