"""What Meta-format conversion scripts take as flags (``--converter`` templates: ``{num_shards}``, ``{llama_version}``).

transformers' ``convert_llama_weights_to_hf.py`` asks for the number of rank files (``--num_shards``) and the release
(``--llama_version``), which sets the context length, the rope scaling and how rank files split the embedding.
"""

from __future__ import annotations

from converters.llama.ranks import model_parallel_size
from harness.mapping.conversion import SourceCheckpoint

__all__ = ["facts"]


def facts(source: SourceCheckpoint) -> dict[str, str]:
    """``num_shards``: consolidated.NN.pth files; ``llama_version``: the release params.json describes.

    Llama 3.1 sets use_scaled_rope, Llama 3 states rope_theta 5e5; Llama 1 trained with norm_eps 1e-6 where Llama 2
    uses 1e-5 (their params.json have the same fields otherwise).
    """
    config = source.config
    if config.get("use_scaled_rope"):
        version = "3.1"
    elif source.layout == "llama3":
        version = "3"
    else:
        version = "1" if config.get("norm_eps") == 1e-6 else "2"
    return {"num_shards": str(model_parallel_size(source.tensors)), "llama_version": version}
