"""The child side of ``--converter module:function``: ``python -m harness.parity.converter_call SPEC VALUES``.

Imports ``module`` (from the working directory first, as ``python -m`` would) and calls ``function(**values)``:
``source`` and ``output`` as ``Path``, every fact as ``str``. An exception exits 1 with its type and first line as
the last line on stderr, which is what the parent reports.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str]) -> int:
    spec, values = argv[0], json.loads(argv[1])
    module, _, name = spec.partition(":")
    kwargs = {k: Path(v) if k in ("source", "output") else v for k, v in values.items()}
    sys.path.insert(0, os.getcwd())
    try:
        getattr(importlib.import_module(module), name)(**kwargs)
    except Exception as err:  # noqa: BLE001 - the converter's own failure: reported as REFUSED with this line
        import traceback

        traceback.print_exc()
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"{type(err).__name__}: {first}" if first else type(err).__name__, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
