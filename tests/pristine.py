"""A family's tiny source, written once by its own ``write``, with what corruptions need to know about it.

All of it is read from the family contract (``tiny``, ``write``, ``CASES``, ``OPTIONS``) and the family's
tables (``converters.<family>.convert.CONFIG`` and ``KEYS``, as ``convparity describe`` reads them), so every
family, present and future, is described the same way.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConversionError
from harness.family.family import Family
from harness.mapping.config_kinds import Kind, Valid
from harness.mapping.config_map import ConfigMap
from harness.mapping.conversion import SourceCheckpoint
from harness.mapping.rules import Drop

__all__ = ["Pristine"]


@dataclass
class Pristine:
    family: Family
    case: str
    checkpoint: SourceCheckpoint  # as tiny() made it, before write
    container: str
    path: Path  # written here once; each corruption works on a copy
    carried: list[str]  # config fields (dotted) whose values the written files carry
    has_config: bool  # a side-car config beside the weights or inside an archive
    options: dict[str, dict[str, Any]]  # the family's integer and choice options

    @classmethod
    def build(cls, family: Family, case: str, folder: Path, seed: int = 0) -> Pristine:
        spec = family.cases[case]
        checkpoint = family.tiny(seed, layout=spec.layout, **spec.config)
        family.write(checkpoint, folder, container=spec.container)
        has_config = any(f.suffix in (".json", ".yaml", ".yml", ".nemo") and not f.name.endswith(".index.json")
                         for f in folder.rglob("*") if f.is_file())
        options = {flag: o for flag, o in family.options.items()
                   if o.get("type") is int or "choices" in o}
        pristine = cls(family, case, checkpoint, spec.container, folder, [], has_config, options)
        pristine.carried = pristine._carried_fields()
        return pristine

    @property
    def config_map(self) -> ConfigMap:
        return self.family.config

    def dropped(self, name: str) -> str | None:
        """Why the family's key tables leave ``name`` out (a Drop rule's reason), or None when they read it."""
        keys = self.family.keys
        for table in keys.values() if isinstance(keys, dict) else [keys]:
            for drop in table.drops:
                if isinstance(drop, Drop) and drop.regex.match(name):
                    return f"a Drop rule leaves {name} out ({drop.reason})"
        return None

    def may_hold(self, name: str, value: Any) -> str | None:
        """Why ``value`` is a legitimate value of the config field ``name``, or None when it must be refused."""
        kind = self._kind(name)
        if kind is not None:
            return f"{name} accepts {value!r} ({kind.expected})" if kind.accepts(value) else None
        cm = self.config_map
        ignored = next((why for key, why in cm.ignored.items() if name == key or name.startswith(key + ".")), None)
        if ignored is not None:
            return f"{name} is ignored: {ignored}"
        return None  # a field that the table reads without declaring its kind: any odd value must be refused

    def _kind(self, name: str) -> Kind | None:
        cm = self.config_map
        kinds = [kind] if (kind := cm.kind(name)) is not None else []
        kinds += [c.kind for c in cm.checks if isinstance(c, Valid) and c.field == name]
        return kinds[0] if kinds else None

    def _carried_fields(self) -> list[str]:
        """The leaf fields whose value the family's ``read`` gets back from the written files: each is set to a
        marker string in turn (fields that only name files, or that ``read`` derives from shapes, are not)."""
        carried = []
        with tempfile.TemporaryDirectory(prefix="probe-", dir=self.path.parent) as tmp:  # beside the source
            for i, name in enumerate(_leaves(self.checkpoint.config)):
                out, marker = Path(tmp) / str(i), f"probe{i}marker"
                config = set_field(self.checkpoint.config, name, marker)
                try:
                    self.family.write(SourceCheckpoint(config, self.checkpoint.tensors, self.checkpoint.layout), out,
                                      container=self.container)
                    carried += [name] if marker in repr(self.family.read(out).config) else []
                except ConversionError:  # read refused the marker: it got there
                    carried.append(name)
                except Exception:  # the writer itself needs this field as a number: not a user-editable value
                    pass
                finally:
                    shutil.rmtree(out, ignore_errors=True)
        return carried


def _leaves(config: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def set_field(config: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of ``config`` with the dotted field set to ``value`` (nested dicts copied on the way)."""
    out = dict(config)
    node = out
    *parents, leaf = dotted.split(".")
    for part in parents:
        node[part] = dict(node[part])
        node = node[part]
    node[leaf] = value
    return out
