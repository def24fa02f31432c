"""Loading a converted RWKV with stock transformers: the one case ``from_pretrained`` cannot build.

transformers 5.23 ``modeling_rwkv.py`` L378, ``RwkvPreTrainedModel._init_weights``: ``layer_id /
(num_hidden_layers - 1)``. ``from_pretrained`` runs it on every module after loading
(``_finalize_model_loading`` -> ``_initialize_missing_keys`` -> ``initialize_weights``), even when no key is
missing, so a 1-layer model raises ZeroDivisionError. The weights themselves are complete and exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["loading"]


@contextmanager
def loading(config: Mapping[str, Any]) -> Iterator[None]:
    """Around ``from_pretrained`` of a converted directory with this ``config.json``: for a 1-layer model,
    ``_init_weights`` is a no-op (every parameter comes from the checkpoint); otherwise nothing changes.

    Example: ``with loading(json.loads((d / "config.json").read_text())): AutoModelForCausalLM.from_pretrained(d)``
    """
    if config.get("num_hidden_layers") != 1:
        yield
        return
    from transformers.models.rwkv import modeling_rwkv  # deferred: only needed for this case

    cls = modeling_rwkv.RwkvPreTrainedModel
    original = cls.__dict__["_init_weights"]
    cls._init_weights = lambda self, module: None
    try:
        yield
    finally:
        cls._init_weights = original
