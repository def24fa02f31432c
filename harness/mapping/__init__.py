"""The mapping layer: a family's tables and the contract the harness knows a family by.

What a family author uses (``from harness.mapping import KeyMap``; imported on first use):

- ``Family``, ``Case``, ``MutationCase`` — ``harness.mapping.family``: the one typed ``FAMILY`` object
- ``ConfigMap``, ``Field`` — ``harness.mapping.config_map``; value kinds and cross-field checks
  (``PositiveInt``, ``Divides``, ...) — ``harness.mapping.config_kinds``
- ``KeyMap``, ``Layouts``, ``Step`` — ``harness.mapping.keymap``; rule kinds (``Rename``, ``Rotary``, ``Split``,
  ``Unstack``, ``Drop``, ``Tie``, ...) — ``harness.mapping.rules``, their tensor work in ``transforms``
- ``SourceCheckpoint``, ``Converted``, ``convert_with``, ``invert_with`` — ``harness.mapping.conversion``

The harness's own: writing a conversion (``output``), and its torch-free path (``byte_plans``: each rule's outputs as
pieces of its inputs' bytes; ``raw_conversion``: those pieces placed in the source files).

Imports only ``harness.io`` below it, never transformers.
"""

from harness.lazy import lazy_exports

__all__ = ["Case", "ConfigMap", "Converted", "Family", "Field", "KeyMap", "Layouts", "MutationCase", "SourceCheckpoint",
           "Step", "convert_with", "invert_with"]

__getattr__ = lazy_exports(__name__, {
    "family": ["Case", "Family", "MutationCase"],
    "config_map": ["ConfigMap", "Field"],
    "keymap": ["KeyMap", "Layouts", "Step"],
    "conversion": ["Converted", "SourceCheckpoint", "convert_with", "invert_with"],
})
