"""The mutation layer: planted converter bugs that parity must catch.

What a family author uses in ``converters/<family>/mutants.py`` (``from harness.mutation import Mutable``;
imported on first use): ``Catalogue`` (``MUTANTS = Catalogue()``, then ``@MUTANTS.add`` on each bug),
``Mutable``, ``Mutant``, ``rerun``, ``set_config``, ``swap_names``, ``swap_blocks``, ``config_items`` —
``harness.mutation.planting``. The name-based bugs are ``harness.mutation.catalogue.GENERIC``; those derived from a
family's key table and named points are ``harness.mutation.structural``; the runner (``harness.mutation.runner``)
plants each in every case and holds it to parity; ``diagnosis`` and ``accuracy`` name a failure's likely bug.
"""

from harness.lazy import lazy_exports

__all__ = ["Catalogue", "Mutable", "Mutant", "config_items", "rerun", "set_config", "swap_blocks", "swap_names"]

__getattr__ = lazy_exports(__name__, {"planting": __all__})
