"""The mapping layer: a family's config and key tables, and the conversion they drive.

What a family author uses (``from harness.mapping import KeyMap``; imported on first use):

- ``ConfigMap``, ``Field`` — ``harness.mapping.config_map``; value kinds and cross-field checks
  (``PositiveInt``, ``Divides``, ...) — ``harness.mapping.config_kinds``
- ``KeyMap``, ``Layouts``, ``Step`` — ``harness.mapping.keymap``; rule kinds (``Rename``, ``Rotary``, ``Split``,
  ``Unstack``, ``Drop``, ``Tie``, ...) — ``harness.mapping.rules``, one kind per module; a data-moving rule states
  its layout once (``rules.moves_data``) from the rearrangements in ``transforms``
- ``SourceCheckpoint``, ``Converted``, ``convert_with``, ``invert_with`` — ``harness.mapping.conversion``

The harness's own: writing a conversion (``output``), and its torch-free path (``byte_plans``: each rule's outputs as
pieces of its inputs' bytes; ``raw_conversion``: those pieces placed in the source files).

Imports only ``harness.io`` below it, never transformers. The family contract that carries these tables sits
one layer up, in ``harness.family``.
"""

from harness.lazy import lazy_exports

__all__ = ["ConfigMap", "Converted", "Field", "KeyMap", "Layouts", "SourceCheckpoint", "Step", "convert_with",
           "invert_with"]

__getattr__ = lazy_exports(__name__, {
    "config_map": ["ConfigMap", "Field"],
    "keymap": ["KeyMap", "Layouts", "Step"],
    "conversion": ["Converted", "SourceCheckpoint", "convert_with", "invert_with"],
})
