"""Mistral's named points: reference.py's probe names -> the ``MistralForCausalLM`` (or ``MinistralForCausalLM``)
sub-modules computing them. Mixtral's are the same around its own FFN point (``around``)."""

from harness.mapping.points import Point

ATTENTION = ("rope_theta", "rope_parameters", "num_attention_heads", "num_key_value_heads", "head_dim",
             "sliding_window", "layer_types")


def around(*ffn: Point) -> list[Point]:
    """Every point of a Mistral-format model, the ``ffn`` ones (``layers.{layer}.feed_forward``, and any inside it)
    after the post-attention norm."""
    return [
        Point("tok_embeddings", "model.embed_tokens", ("vocab_size",), "embeddings"),
        Point("layers.{layer}.attention_norm", "model.layers.{layer}.input_layernorm", ("rms_norm_eps",),
              "input norm"),
        Point("layers.{layer}.attention", "model.layers.{layer}.self_attn", ATTENTION,
              "attention (q/k/v projections, rotary, causal or windowed scores, output projection)"),
        Point("layers.{layer}.attention.wo", "model.layers.{layer}.self_attn.o_proj", (), "output projection (wo)"),
        Point("layers.{layer}.ffn_norm", "model.layers.{layer}.post_attention_layernorm", ("rms_norm_eps",),
              "post-attention norm"),
        *ffn,
        Point("norm", "model.norm", ("rms_norm_eps",), "final norm"),
        Point("output", "lm_head", ("tie_word_embeddings", "vocab_size"), "head"),
    ]


POINTS = around(Point("layers.{layer}.feed_forward", "model.layers.{layer}.mlp", ("hidden_act", "intermediate_size"),
                      "MLP"))
