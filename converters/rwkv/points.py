"""RWKV's named points: reference.py's probe names -> the ``RwkvForCausalLM`` sub-modules computing them."""

from harness.mapping.points import Point

_B = "rwkv.blocks.{layer}"
_N = "num_hidden_layers"  # whether block N exists at all

POINTS = [
    Point("emb", "rwkv.embeddings", ("vocab_size",), "embeddings"),
    Point("blocks.0.ln0", "rwkv.blocks.0.pre_ln", ("layer_norm_epsilon",), "embedding norm (ln0)"),
    Point("blocks.{layer}.ln1", f"{_B}.ln1", ("layer_norm_epsilon", _N), "time-mixing norm"),
    Point("blocks.{layer}.att", f"{_B}.attention", ("attention_hidden_size", "rescale_every", _N),
          "time mixing (token shift, key/value/receptance, WKV with time_decay/time_first, output)"),
    Point("blocks.{layer}.ln2", f"{_B}.ln2", ("layer_norm_epsilon", _N), "channel-mixing norm"),
    Point("blocks.{layer}.ffn", f"{_B}.feed_forward", ("intermediate_size", "rescale_every", _N),
          "channel mixing (token shift, key, receptance, value)"),
    Point("ln_out", "rwkv.ln_out", ("layer_norm_epsilon",), "final norm"),
    Point("head", "head", ("tie_word_embeddings", "vocab_size"), "head"),
]
