"""Hypothesis strategies for each family's tiny configs, keyed by family name: (case, checkpoint dtype).

Every draw is a valid upstream config (head counts divide, sizes fit the tokens of ``harness.mutation.runner``), small
enough that one conversion, load and forward takes a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import strategies as st

from harness.family.cases import Case

EPS = st.sampled_from([1e-6, 1e-5, 1e-3])


@st.composite
def _heads(draw: Callable, max_heads: int = 4) -> tuple[int, int]:
    heads = draw(st.sampled_from([h for h in (1, 2, 4) if h <= max_heads]))
    return heads, draw(st.sampled_from([k for k in (1, 2, 4) if heads % k == 0]))


@st.composite
def mixtral(draw: Callable) -> Case:
    heads, kv = draw(_heads())
    experts = draw(st.integers(2, 4))
    config = dict(dim=draw(st.sampled_from([16, 24, 32])), n_layers=draw(st.integers(1, 2)),
                  head_dim=draw(st.sampled_from([4, 8])), hidden_dim=draw(st.sampled_from([16, 24, 40])),
                  n_heads=heads, n_kv_heads=kv, norm_eps=draw(EPS), vocab_size=draw(st.integers(40, 160)),
                  rope_theta=draw(st.sampled_from([1e4, 1e6, None])),
                  moe=dict(num_experts=experts, num_experts_per_tok=draw(st.integers(1, experts))))
    return Case("sweep", config, layout=draw(st.sampled_from(["experts", "fused"])),
                container=draw(st.sampled_from(["pth", "safetensors"])))


@st.composite
def gemma(draw: Callable) -> Case:
    heads, kv = draw(_heads())
    config = dict(hidden_size=heads * draw(st.sampled_from([4, 8])), num_attention_heads=heads,
                  num_key_value_heads=kv, head_dim=draw(st.sampled_from([4, 8, 12])),
                  intermediate_size=draw(st.sampled_from([16, 24, 48])), num_hidden_layers=draw(st.integers(1, 2)),
                  vocab_size=draw(st.integers(40, 200)), rms_norm_eps=draw(EPS),
                  hidden_activation=draw(st.sampled_from(["gelu_tanh", "gelu_exact"])), quant=draw(st.booleans()))
    return Case("sweep", config)


@st.composite
def phi(draw: Callable) -> Case:
    heads, kv = draw(_heads())
    head_dim = draw(st.sampled_from([4, 8, 10]))
    config = dict(n_embd=heads * head_dim, n_head=heads, n_head_kv=kv, n_layer=draw(st.integers(1, 2)),
                  rotary_dim=draw(st.sampled_from([r for r in (2, 4, 6, 8) if r <= head_dim])),
                  n_inner=draw(st.sampled_from([None, 24, 40])), vocab_size=draw(st.integers(40, 160)),
                  pad_vocab_size_multiple=draw(st.sampled_from([1, 16, 64])), layer_norm_epsilon=draw(EPS),
                  activation_function=draw(st.sampled_from(["gelu_new", "gelu"])))
    return Case("sweep", config, layout=draw(st.sampled_from(["phi-msft", "mixformer-sequential"])))


@st.composite
def gpt_sw3(draw: Callable) -> Case:
    heads = draw(st.sampled_from([1, 2, 4]))
    config = dict(hidden_size=heads * draw(st.sampled_from([4, 8, 16])), num_attention_heads=heads,
                  num_layers=draw(st.integers(1, 2)), ffn_hidden_size=draw(st.sampled_from([16, 40, 64])),
                  vocab_size=draw(st.integers(40, 300)), make_vocab_size_divisible_by=draw(st.sampled_from([32, 128])),
                  layernorm_epsilon=draw(EPS), openai_gelu=draw(st.booleans()),
                  bias_activation_fusion=draw(st.booleans()),
                  apply_query_key_layer_scaling=draw(st.booleans()))
    return Case("sweep", config)


@st.composite
def rwkv(draw: Callable) -> Case:
    width = draw(st.sampled_from([8, 16, 32]))
    config = dict(n_layer=draw(st.integers(1, 3)), n_embd=width, dim_att=width,
                  dim_ffn=draw(st.sampled_from([16, 40, 4 * width])), vocab_size=draw(st.integers(40, 200)),
                  storage=draw(st.sampled_from(["float32", "bfloat16"])))
    return Case("sweep", config)


STRATEGIES = {"mixtral": mixtral(), "gemma": gemma(), "phi": phi(), "gpt_sw3": gpt_sw3(), "rwkv": rwkv()}


@st.composite
def llama(draw: Callable) -> Case:
    ranks = draw(st.sampled_from([1, 2, 4]))
    kv = draw(st.sampled_from([k for k in (1, 2, 4) if k % ranks == 0]))  # fairscale gives each rank whole kv heads
    heads = kv * draw(st.sampled_from([1, 2]))
    llama3 = draw(st.booleans())  # the embedding split over the vocabulary (Llama 3) or over its columns
    vocab = 4 * draw(st.integers(10, 60))  # output rows split over up to 4 ranks
    config = dict(dim=heads * draw(st.sampled_from([4, 8, 16])), n_layers=draw(st.integers(1, 2)), n_heads=heads,
                  n_kv_heads=draw(st.sampled_from([kv, None])) if kv == heads else kv,
                  multiple_of=draw(st.sampled_from([4, 16, 32])),
                  ffn_dim_multiplier=draw(st.sampled_from([None, 0.7, 1.3])),
                  norm_eps=draw(EPS), vocab_size=vocab if llama3 else draw(st.sampled_from([-1, vocab])),
                  rope_theta=5e5 if llama3 else draw(st.sampled_from([None, 1e4, 1e6])),
                  use_scaled_rope=draw(st.booleans()) if llama3 else None,
                  storage=draw(st.sampled_from(["float32", "bfloat16"])))
    return Case("sweep", config, container=f"mp{ranks}", layout="llama3" if llama3 else "llama2")


STRATEGIES["llama"] = llama()


@st.composite
def mistral(draw: Callable) -> Case:
    heads, kv = draw(_heads())
    n_layers = draw(st.sampled_from([1, 2, 4]))
    window = draw(st.sampled_from([None, 1, 3, 9, "pattern"]))  # a list repeats over the layers, null = full
    if window == "pattern":
        window = draw(st.lists(st.sampled_from([None, 5]), min_size=1, max_size=n_layers).filter(
            lambda w: n_layers % len(w) == 0))
    config = dict(dim=draw(st.sampled_from([16, 32, 48])), n_layers=n_layers,
                  head_dim=draw(st.sampled_from([4, 8, 16])), hidden_dim=draw(st.sampled_from([24, 40])),
                  n_heads=heads, n_kv_heads=kv, norm_eps=draw(EPS),
                  vocab_size=draw(st.integers(40, 160)), rope_theta=draw(st.sampled_from([None, 1e4, 1e6, 1e8])),
                  **{draw(st.sampled_from(["sliding_window", "_sliding_window"])): window})
    return Case("sweep", config, container=draw(st.sampled_from(["pth", "safetensors", "sharded"])))


STRATEGIES["mistral"] = mistral()
