"""What gemma_pytorch-format conversion scripts take as flags (``--converter`` templates: ``{variant}``).

gemma_pytorch picks hyper-parameters by ``--variant`` (``gemma/config.py``), and so does transformers'
``convert_gemma_weights_to_hf.py`` (``--model_size 2B|7B``): neither reads them from the checkpoint.
"""

from __future__ import annotations

from harness.mapping.conversion import SourceCheckpoint

__all__ = ["facts"]


def facts(source: SourceCheckpoint) -> dict[str, str]:
    """``variant``: the released preset with this source's attention layout: 2b (one kv head), 7b (a kv head per
    q head, or groups: no release has them), 7b-quant (int8 weights)."""
    config = source.config
    if config["num_key_value_heads"] == 1:
        return {"variant": "2b"}
    return {"variant": "7b-quant" if config.get("quant") else "7b"}
