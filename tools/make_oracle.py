"""Make an upstream oracle case: tiny weights in the upstream on-disk layout, the logits the upstream code computes
from them, and the facts template every ``golden/upstream/<family>/README.md`` follows.

    python -m tools.make_oracle FAMILY CASE OUT_DIR --upstream pkg.module:function [--shim pkg.module:function]
        [--seed N] [--set key=json ...] [--container C] [--layout L] [--seq T]

``--upstream`` names ``function(source_dir: Path, input_ids: torch.Tensor) -> logits [B, T, V]``: a driver that
loads ``source_dir`` with the upstream project's own loader and runs its forward pass (run it in the upstream's
environment; nothing here imports the upstream). ``--shim`` names a context manager factory entered around it: what
a CPU run needs (CUDA-only kernels replaced, a process group faked); the README lists each shim. Writes
``OUT_DIR/case-CASE/{source/, meta.json, logits.safetensors}`` and, where absent, ``OUT_DIR/README.md``.
Copy the result into ``golden/upstream/<family>/`` (``tests/test_upstream_truth.py`` then requires it to pass).
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from harness.family.family import Family
from harness.registry import family as family_by_name

__all__ = ["Upstream", "main", "make_oracle", "readme_template"]

Upstream = Callable[[Path, torch.Tensor], torch.Tensor]  # (source dir, input ids [B, T]) -> logits [B, T, V]


def make_oracle(fam: Family, case: str, out: Path, upstream: Upstream, *, upstream_id: str, seed: int = 0,
                config: dict[str, Any] | None = None, container: str = "default", layout: str = "default",
                seq: int = 8, shim: Callable[[], AbstractContextManager[Any]] = nullcontext) -> Path:
    """One oracle case under ``out``; returns its folder. ``upstream_id`` (repository@commit:file) goes into
    ``meta.json``; ``config`` overrides the family's tiny defaults."""
    folder = out / f"case-{case}"
    tiny = fam.tiny(seed, layout=layout, **(config or {}))
    fam.write(tiny, folder / "source", container=container)
    vocab = int(fam.convert(fam.read(folder / "source")).config["vocab_size"])
    ids = torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(seed))
    with shim(), torch.no_grad():
        logits = upstream(folder / "source", ids).float().contiguous()
    if logits.shape[:2] != ids.shape:
        raise ValueError(f"{upstream_id} returned logits {tuple(logits.shape)} for input ids {tuple(ids.shape)}")
    save_file({"logits": logits}, str(folder / "logits.safetensors"))
    meta = {"family": fam.name, "case": case, "upstream": upstream_id, "config": tiny.config, "dtype": "float32",
            "input_ids": ids.tolist(), "seed": seed, "container": container, "layout": layout}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    readme = out / "README.md"
    if not readme.exists():
        readme.write_text(readme_template(fam, upstream_id, shim))
    return folder


def readme_template(fam: Family, upstream_id: str, shim: Callable[..., Any]) -> str:
    """The sections every oracle README has, with what is known filled in and the rest to write by hand."""
    shim_name = "none" if shim is nullcontext else f"`{shim.__module__}.{shim.__qualname__}`"
    return f"""# Oracle data: `{fam.name}` ({fam.about})

## Upstream code used

- Repository, commit and file that produced the logits: `{upstream_id}`.
- Environment (Python, torch and the upstream's own dependencies, with versions): TODO.
- Shims for a CPU run: {shim_name}. List each one and why it changes nothing numerical.

## How the data was generated

1. `tools/make_oracle.py`: `{fam.name}`'s `tiny(seed, **config)` weights, written by its `write` in the upstream
   layout (`source/`); the seed, config and input ids are in each case's `meta.json`.
2. The logits come from the upstream code loading `source/` with its own loader and running its forward pass
   (`logits.safetensors`, `[batch, seq, vocab]` float32).
3. Self-check: TODO (rerun and compare; the upstream loader on the written files).

## Cases

| case | what it exercises |
|---|---|
| TODO | TODO |

## Facts a converter must get right

Numbered, each with the upstream file and line it comes from: TODO.

## Traps hit while running upstream

TODO.

## Doubtful points

TODO.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.make_oracle", description=__doc__.split("\n\n")[0])
    parser.add_argument("family")
    parser.add_argument("case")
    parser.add_argument("out", type=Path)
    parser.add_argument("--upstream", required=True, metavar="MODULE:FUNCTION")
    parser.add_argument("--upstream-id", default="", help="repository@commit:file (default: MODULE:FUNCTION)")
    parser.add_argument("--shim", metavar="MODULE:FUNCTION", help="a context manager factory for a CPU run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a tiny config override")
    parser.add_argument("--container", default="default")
    parser.add_argument("--layout", default="default")
    parser.add_argument("--seq", type=int, default=8)
    args = parser.parse_args(argv)
    config = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    folder = make_oracle(family_by_name(args.family), args.case, args.out, _named(args.upstream),
                         upstream_id=args.upstream_id or args.upstream, seed=args.seed, config=config,
                         container=args.container, layout=args.layout, seq=args.seq,
                         shim=_named(args.shim) if args.shim else nullcontext)
    print(folder)
    return 0


def _named(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


if __name__ == "__main__":
    raise SystemExit(main())
