"""The tensors of Meta's ``Transformer`` and their whole shapes (L2 = meta-llama/llama @ 689c7f26
``llama/model.py``): the names mistral-inference kept for its dense models, so both families list them from here."""

from __future__ import annotations

__all__ = ["meta_tensor_shapes"]


def meta_tensor_shapes(n_layers: int, dim: int, vocab: int, q_rows: int, kv_rows: int, hidden: int
                       ) -> dict[str, tuple[int, ...]]:
    """Every parameter of the model, unsplit: embedding, per block q/k/v/o, the SwiGLU w1/w2/w3 and two norms,
    then the final norm and the head."""
    out: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (vocab, dim)}
    for i in range(n_layers):
        p = f"layers.{i}."
        out |= {p + "attention.wq.weight": (q_rows, dim), p + "attention.wk.weight": (kv_rows, dim),
                p + "attention.wv.weight": (kv_rows, dim), p + "attention.wo.weight": (dim, q_rows),
                p + "feed_forward.w1.weight": (hidden, dim), p + "feed_forward.w2.weight": (dim, hidden),
                p + "feed_forward.w3.weight": (hidden, dim), p + "attention_norm.weight": (dim,),
                p + "ffn_norm.weight": (dim,)}
    return out | {"norm.weight": (dim,), "output.weight": (vocab, dim)}
