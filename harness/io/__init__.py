"""The I/O layer: checkpoints as bytes on disk, read lazily and safely, written atomically.

What a family author uses (``from harness.io import TensorStore``; each name is imported on first use, so that
importing one module of this package costs no more than that module):

- ``TensorStore`` (lazy, memory-mapped, data-only tensors), ``open_torch``, ``load_pickle``,
  ``state_dict_problem``, ``TensorSpec`` — ``harness.io.tensor_store``
- ``read_json_config``, ``read_bytes``, ``open_weights``, ``index_shards`` — ``harness.io.source_files``
- ``stacked_store`` (model-parallel rank files read as one store, stacked by rank) — ``harness.io.stacked_store``
- ``random_weights``, ``random_normal`` (bit-exact tiny weights on every CPU) — ``harness.io.tiny``

The rest is the harness's own: the shard writer (``writer``), kernel file-to-file copies (``file_regions``,
``row_gather``), tensors computed from file bytes without torch (``assembly``: transposes, rank joins, casts on raw
bits from ``bit_casts``), NaN/Inf refusal (``finite``), the output's temporary directory and stale partial outputs
(``staging``), container sniffing (``sniff``), Hub sources (``hub``). This layer imports nothing above it and never
imports transformers.
"""

from harness.lazy import lazy_exports

__all__ = ["TensorSpec", "TensorStore", "index_shards", "load_pickle", "open_torch", "open_weights",
           "random_normal", "random_weights", "read_bytes", "read_json_config", "stacked_store",
           "state_dict_problem"]

__getattr__ = lazy_exports(__name__, {
    "tensor_store": ["TensorSpec", "TensorStore", "load_pickle", "open_torch", "state_dict_problem"],
    "source_files": ["index_shards", "open_weights", "read_bytes", "read_json_config"],
    "tiny": ["random_normal", "random_weights"],
    "stacked_store": ["stacked_store"],
})
