"""Converters convparity did not write, for ``--converter`` tests: each a function of ``(source, output, family,
**facts)`` and, from the command line, ``python outside_converters.py NAME key=value ...``.

``correct`` is convparity's own conversion; ``bfloat16`` the same stored as bfloat16 (a cast, not a fault);
``no_rotary`` leaves layer 0's q rows in Meta's order (one permutation removed); ``refuse`` exits 1; ``unloadable``
writes a directory from_pretrained cannot load; ``remote_code`` one whose config.json asks for its own modelling code
(which, were it ever imported, would write $REMOTE_CODE_MARKER); ``hang`` never returns (it writes its pid to
$HANG_PIDFILE first).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["bfloat16", "correct", "hang", "no_rotary", "refuse", "remote_code", "unloadable"]


def correct(source: Path, output: Path, family: str, **facts: Any) -> None:
    _own(source, output, family)


def bfloat16(source: Path, output: Path, family: str, **facts: Any) -> None:
    _own(source, output, family, dtype="bfloat16")


def no_rotary(source: Path, output: Path, family: str, **facts: Any) -> None:
    """The rotary permutation undone on ``model.layers.0.self_attn.q_proj.weight``."""
    from safetensors.torch import load_file, save_file

    _own(source, output, family)
    heads = json.loads((Path(output) / "config.json").read_text())["num_attention_heads"]
    path = Path(output) / "model.safetensors"
    tensors = load_file(path)
    name = "model.layers.0.self_attn.q_proj.weight"
    w = tensors[name]
    tensors[name] = w.view(heads, 2, w.shape[0] // heads // 2, w.shape[1]).transpose(1, 2).reshape(w.shape).clone()
    save_file(tensors, path, metadata={"format": "pt"})


def refuse(source: Path, output: Path, family: str, **facts: Any) -> None:
    print("reading the checkpoint", file=sys.stderr)
    print(f"cannot convert {family}: no size preset matches this checkpoint", file=sys.stderr)
    sys.exit(1)


def unloadable(source: Path, output: Path, family: str, **facts: Any) -> None:
    Path(output).mkdir()
    (Path(output) / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                          "hidden_size": 64, "num_attention_heads": 4}))


def remote_code(source: Path, output: Path, family: str, **facts: Any) -> None:
    _own(source, output, family)
    config = json.loads((Path(output) / "config.json").read_text())
    config.update(model_type="outside", auto_map={"AutoConfig": "modeling_outside.OutsideConfig",
                                                  "AutoModelForCausalLM": "modeling_outside.OutsideModel"})
    (Path(output) / "config.json").write_text(json.dumps(config))
    (Path(output) / "modeling_outside.py").write_text(
        "import os, pathlib\npathlib.Path(os.environ['REMOTE_CODE_MARKER']).write_text('executed')\n")


def hang(source: Path, output: Path, family: str, **facts: Any) -> None:
    Path(output).mkdir()
    (Path(output) / "partial.safetensors").write_bytes(b"\0" * 1024)
    if "HANG_PIDFILE" in os.environ:
        Path(os.environ["HANG_PIDFILE"]).write_text(str(os.getpid()))
    while True:
        time.sleep(1)


def _own(source: Path, output: Path, family: str, dtype: str | None = None) -> None:
    from harness.mapping.output import write_converted
    from harness.registry import family as by_name

    fam = by_name(family)
    write_converted(fam.convert(fam.read(Path(source))), Path(output), dtype=dtype)


if __name__ == "__main__":
    name, pairs = sys.argv[1], dict(arg.split("=", 1) for arg in sys.argv[2:])
    globals()[name](**{k: Path(v) if k in ("source", "output") else v for k, v in pairs.items()})
