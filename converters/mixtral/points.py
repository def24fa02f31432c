"""Mixtral's named points: reference.py's probe names -> the ``MixtralForCausalLM`` sub-modules computing them."""

from harness.mapping.points import Point

ATTENTION = ("rope_theta", "rope_parameters", "num_attention_heads", "num_key_value_heads", "head_dim",
             "sliding_window")
MOE = ("num_local_experts", "num_experts_per_tok", "intermediate_size", "hidden_act", "router_jitter_noise")

POINTS = [
    Point("tok_embeddings", "model.embed_tokens", ("vocab_size",), "embeddings"),
    Point("layers.{layer}.attention_norm", "model.layers.{layer}.input_layernorm", ("rms_norm_eps",), "input norm"),
    Point("layers.{layer}.attention", "model.layers.{layer}.self_attn", ATTENTION,
          "attention (q/k/v projections, rotary, scores, output projection)"),
    Point("layers.{layer}.attention.wo", "model.layers.{layer}.self_attn.o_proj", (), "output projection (wo)"),
    Point("layers.{layer}.ffn_norm", "model.layers.{layer}.post_attention_layernorm", ("rms_norm_eps",),
          "post-attention norm"),
    Point("layers.{layer}.feed_forward", "model.layers.{layer}.mlp", MOE, "router and experts"),
    Point("layers.{layer}.feed_forward.router", "model.layers.{layer}.mlp.gate", ("num_local_experts",),
          "router (gate logits, one per expert)"),
    Point("norm", "model.norm", ("rms_norm_eps",), "final norm"),
    Point("output", "lm_head", ("tie_word_embeddings", "vocab_size"), "head"),
]
