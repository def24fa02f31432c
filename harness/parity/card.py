"""The verification card: the proof of a conversion, kept inside the converted directory.

``convert --verify`` and ``verify --card`` write ``README.md`` (a Hugging Face model card, built with
huggingface_hub's ``ModelCard``/``ModelCardData``: base model, library, tags) whose body holds the parity
result, and the same as ``convparity.json``: metrics, bounds, every block's error, versions, command, date,
and the sha256 of every source and output file. A later ``verify --card`` on the same directory first checks
those hashes (a file changed since the card was written fails, naming it), then reruns the verification and
holds it to the recorded verdict; a directory with a card is never given a new one silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConversionError

__all__ = ["CARD_JSON", "CARD_README", "Card", "file_hashes", "render_card"]

CARD_JSON, CARD_README = "convparity.json", "README.md"


def file_hashes(path: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of ``path`` (a file) or of every file under it (relative POSIX names), except top-level ``skip``.

    Symbolic links are followed (a Hub snapshot links into its blob store).
    """
    if path.is_file():
        return {path.name: _sha256(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.relative_to(path).parts[0] not in skip)
    return {p.relative_to(path).as_posix(): _sha256(p) for p in files}


@dataclass
class Card:
    """The card of one converted directory: what it recorded (``previous``, None when there is none yet)."""

    source: Path
    converted: Path
    previous: dict[str, Any] | None

    @classmethod
    def open(cls, source: Path, converted: Path) -> Card:
        """Read the card in ``converted``, if any; a README.md that is not a convparity card is left alone."""
        record, readme = converted / CARD_JSON, converted / CARD_README
        if record.is_file():
            try:
                return cls(source, converted, json.loads(record.read_text()))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ConversionError(f"{record} is not a convparity card ({err}); delete it to write a new one"
                                      ) from None
        if readme.exists():
            raise ConversionError(f"{readme} exists and is not a convparity card (no {CARD_JSON} beside it); "
                                  f"move it away to write the verification card there")
        return cls(source, converted, None)

    def changed(self) -> list[str]:
        """One line per file whose sha256 is not the recorded one (or that appeared or went missing)."""
        if self.previous is None:
            return []
        out = []
        for side, now in (("source", self._source_hashes()), ("output", self._output_hashes())):
            then = self.previous.get("files", {}).get(side, {})
            for name in sorted(set(then) | set(now)):
                if then.get(name) != now.get(name):
                    where = self.source if side == "source" else self.converted
                    what = ("is missing" if name not in now else "is new" if name not in then else
                            f"changed: sha256 {now[name][:12]}, the card recorded {then[name][:12]}")
                    out.append(f"{side} file {where / name if where.is_dir() else where} {what}")
        return out

    def settle(self, result: Any, base_model: str | None = None) -> tuple[bool, list[str]]:
        """After verify: write the card when there is none; else check the rerun reproduces its verdict."""
        record = self._record(result, base_model)
        if self.previous is None:
            (self.converted / CARD_JSON).write_text(json.dumps(record, indent=2, default=str) + "\n")
            render_card(record).save(self.converted / CARD_README)
            files = record["files"]
            return True, [f"card: wrote {self.converted / CARD_README} and {CARD_JSON} ({len(files['source'])} "
                          f"source and {len(files['output'])} output files hashed)"]
        then, now = self.previous["result"], record["result"]
        keys = ("passed", "verdict", "first_divergent", "compute_dtype", "tokens_shape")
        differ = [k for k in keys if k in then and then.get(k) != now.get(k)]  # older cards lack "verdict"
        if differ:
            return False, [f"card: not reproduced: {k} was {then.get(k)!r}, now {now.get(k)!r}" for k in differ]
        return True, [f"card: reproduced {self.converted / CARD_README}: same verdict "
                      f"({now['verdict']}), same sha256 of every source and output file"]

    def _record(self, result: Any, base_model: str | None) -> dict[str, Any]:
        from harness.parity.report import SCHEMA, environment
        from harness.parity.verify import BOUNDS

        return {"schema": SCHEMA, "command": "verify", "environment": environment(), "base_model": base_model,
                "result": {"bound": asdict(BOUNDS[result.compute_dtype]), **result.as_dict()},
                "files": {"source": self._source_hashes(), "output": self._output_hashes()}}

    def _source_hashes(self) -> dict[str, str]:
        return file_hashes(self.source)

    def _output_hashes(self) -> dict[str, str]:
        return file_hashes(self.converted, skip=(CARD_JSON, CARD_README))


def render_card(record: dict[str, Any]) -> Any:
    """The model card (huggingface_hub ``ModelCard``) for a card record: metadata, then the parity result."""
    import jinja2
    from huggingface_hub import ModelCard, ModelCardData

    result = record["result"]
    data = ModelCardData(base_model=record.get("base_model"), library_name="transformers",
                         tags=["convparity", "converted", result["family"]])
    env = jinja2.Environment(loader=jinja2.PackageLoader("harness.parity", "templates"), autoescape=False,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    body = env.get_template("card.md.j2").render(r=result, env=record["environment"], files=record["files"],
                                                 rows=[*result["blocks"], *([result["logits"]] if result["logits"]
                                                                             else [])])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
