"""The family contract, one part per layer that uses it, and the surface a family is written against.

A ``converters/<family>/__init__.py`` is ``FAMILY = Family(name, __doc__, source=source, tables=convert.TABLES,
oracle=Reference(...), mutations=mutants, cli=Flags(...))``:

- ``SourceFormat`` (``source_format``): the family's ``source`` module: ``read``, ``write``, ``tiny``, ``shapes``,
  ``CASES``, ``SIZES``, ``HUB_FILES``
- ``Tables`` (``tables``): config and key tables, ``convert``/``invert`` derived from them by ``KeyTables``, with
  one hook where a family departs (``layout``, ``custom_convert``, ``inverse_layout``)
- ``Oracle`` (``oracle``): the reference forward pass with its named points, and a loading hook (``Reference``)
- ``Mutations`` (``mutations``): the family's ``mutants`` module: ``MUTANTS``, ``CASES`` (``MutationCase``)
- ``CliOptions`` (``cli_options``): extra ``convparity convert`` flags (``Flags``)

``harness.registry`` checks every part against its protocol at discovery, signatures included
(``conformance``). What a family may import besides (``tests/test_layers.py`` holds it): ``harness.errors``,
``harness.family``; ``harness.io``'s ``tensor_store``, ``stacked_store``, ``source_files``, ``tiny``, ``raw_dtypes``,
``sniff``; ``harness.mapping``'s ``config_map``, ``config_kinds``, ``keymap``, ``rules``, ``transforms``,
``conversion``, ``points``; ``harness.mutation``'s ``planting``. Never ``harness.parity``, a front end or
transformers. This layer sits on ``mapping`` and below ``parity``.
"""

from harness.lazy import lazy_exports

__all__ = ["Case", "CliOptions", "Family", "Flags", "KeyTables", "MutationCase", "Mutations", "Oracle", "Reference",
           "SourceFormat", "Tables"]

__getattr__ = lazy_exports(__name__, {
    "family": ["Family"],
    "cases": ["Case", "MutationCase"],
    "source_format": ["SourceFormat"],
    "tables": ["KeyTables", "Tables"],
    "oracle": ["Oracle", "Reference"],
    "mutations": ["Mutations"],
    "cli_options": ["CliOptions", "Flags"],
})
