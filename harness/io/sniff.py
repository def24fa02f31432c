"""What a file holds, judged from its first bytes: for messages that say what was found instead of what broke.

A checkpoint that cannot be read is most often something else under the expected name: a Git LFS pointer that
was never pulled, an HTML error page, a safetensors file named ``.pth``, a file of zeros left by a failed copy.
Saying so is more useful than the parser's complaint about byte 0.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

__all__ = ["container", "describe_file", "wide_text"]


def container(path: Path) -> str | None:
    """``"zip"``, ``"pickle"``, ``"safetensors"``, ``"tar"`` or ``"gzip"`` when the first bytes say so, else None.

    >>> container(Path("/nowhere")) is None
    True
    """
    head = _head(path, 4096)
    if head is None:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "zip"  # torch.save's format since 1.6 (torch.serialization._is_zipfile checks the same 4 bytes)
    # Before the pickle test: a safetensors header length such as 896 (0x0380) starts with the bytes 80 03.
    if _is_safetensors(path, head):
        return "safetensors"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"  # PROTO opcode, protocol 2..5: the legacy torch.save format
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    return None


def describe_file(path: Path) -> str:
    """A short phrase for what ``path`` holds, to follow "found" in an error message.

    >>> describe_file(Path("/nowhere"))
    'nothing (no such file)'
    """
    if path.is_dir():
        return "a directory"
    head = _head(path, 1 << 16)
    if head is None:
        return "nothing (no such file)" if not path.exists() else "a file that cannot be opened"
    if not head:
        return "an empty file (0 bytes)"
    kind = container(path)
    if kind is not None:
        return _CONTAINERS[kind]
    if not head.strip(b"\0"):
        return f"only zero bytes (the first {len(head)} of {path.stat().st_size}; a failed copy or download?)"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights (run `git lfs pull` in that repository)"
    wide = wide_text(head)
    if wide is not None:
        return wide
    text = _text(head)
    if text is not None:
        snippet = " ".join(text.split())[:40]
        return f"text ({snippet!r}{'...' if len(text.strip()) > 40 else ''})"
    return f"unrecognised binary data (first bytes {head[:8].hex(' ')})"


_CONTAINERS = {
    "zip": "a zip archive (the torch.save format, for .pth / .pt / .bin / .ckpt)",
    "pickle": "a pickle (the legacy torch.save format)",
    "safetensors": "a safetensors file (for .safetensors)",
    "tar": "a tar archive (the .nemo format)",
    "gzip": "a gzip file",
}


def wide_text(data: bytes) -> str | None:
    """``"UTF-16 text"`` (or UTF-32, or UTF-16 without a byte-order mark) when ``data`` looks like it, else None.

    UTF-16 of ASCII is valid UTF-8 byte for byte (a NUL after each character), so decoding alone misses it.

    >>> wide_text("{}".encode("utf-16-le")), wide_text(b"{}")
    ('UTF-16 text without a byte-order mark', None)
    """
    if data.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "UTF-32 text"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text"
    sample = data[:4096]
    for zeros, chars in ((sample[1::2], sample[::2]), (sample[::2], sample[1::2])):
        if len(sample) >= 2 and not zeros.strip(b"\0") and _text(chars.strip(b"\0")) is not None:
            return "UTF-16 text without a byte-order mark"  # every other byte NUL, the rest printable
    return None


def _head(path: Path, n: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return None


def _is_safetensors(path: Path, head: bytes) -> bool:
    """An 8-byte little-endian header length, then that many bytes of JSON object within the file."""
    if len(head) < 10 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    try:
        size = path.stat().st_size
    except OSError:
        return False
    if 8 + n > size:
        return False
    if 8 + n <= len(head):
        try:
            return isinstance(json.loads(head[8:8 + n]), dict)
        except ValueError:
            return False
    return True


def _text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a character cut at the end of the sample
            return None
        text = head[:err.start].decode("utf-8")
    printable = sum(c.isprintable() or c in "\t\n\r" for c in text)
    return text if text and printable >= 0.95 * len(text) else None
