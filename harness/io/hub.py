"""SOURCE as the Hub names it: ``owner/name`` (with ``--revision``) resolves to a local snapshot of only the
files the family reads, through huggingface_hub's cache, and works offline from that cache.

``HF_HUB_OFFLINE=1`` (or no network) uses what is cached; a missing file or repository is a one-line error
saying what to download. Nothing here runs for a SOURCE that exists on disk.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from harness.errors import ConversionError

__all__ = ["is_repo_id", "resolve_source"]

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")


def is_repo_id(text: str) -> bool:
    """``owner/name`` as the Hub spells repository ids.

    >>> is_repo_id("mistralai/Mixtral-8x7B-v0.1"), is_repo_id("./ckpt"), is_repo_id("a/b/c")
    (True, False, False)
    """
    return bool(_REPO_ID.fullmatch(text)) and ".." not in text


def resolve_source(source: str | Path, patterns: Sequence[str], revision: str | None = None) -> Path:
    """A local path for SOURCE: itself when it exists, else the Hub snapshot of ``patterns`` from the repo.

    ``patterns`` are the family's upstream file globs (``params.json``, ``consolidated.*``): only those
    are fetched. Offline, the snapshot comes from the local cache or not at all.
    """
    path = Path(source)
    if path.exists() or not is_repo_id(str(source)):
        if revision is not None:
            raise ConversionError(f"--revision applies to a Hub repository id, and {source} is a local path")
        if not path.exists():
            raise ConversionError(f"source {source} does not exist (neither a local path nor a Hub id owner/name)")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(str(source), revision=revision, allow_patterns=list(patterns)))
    except LocalEntryNotFoundError:
        raise ConversionError(f"{source}@{revision or 'main'} is not in the local Hugging Face cache and the Hub "
                              f"cannot be reached (offline); download it once with network access: "
                              f"hf download {source} --include {' '.join(repr(p) for p in patterns)}") from None
    except RepositoryNotFoundError:
        raise ConversionError(f"Hub repository {source} not found (or private: log in with `hf auth login`)"
                              ) from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise ConversionError(f"cannot fetch {source} from the Hub: {str(err).splitlines()[0]}") from None
    if not any(folder.iterdir()):
        raise ConversionError(f"{source}@{revision or 'main'} holds none of the files this family reads "
                              f"({', '.join(patterns)})")
    return _holding(folder)


def _holding(folder: Path) -> Path:
    """The folder that holds the files: the snapshot itself, or its only subfolder when nothing else was fetched
    (Meta's Llama repositories keep the original release under ``original/``)."""
    entries = list(folder.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder
