"""The one exception type users see: a problem with their input, worded as a single line."""

__all__ = ["ConversionError", "brief"]


class ConversionError(Exception):
    """Bad input or an inconsistent checkpoint.

    The CLI prints the message on one line and exits non-zero; nothing is written.

    >>> raise ConversionError("expected params.json beside consolidated.00.pth in /ckpt; pass --config FILE")
    Traceback (most recent call last):
    harness.errors.ConversionError: expected params.json beside consolidated.00.pth in /ckpt; pass --config FILE
    """


def brief(err: BaseException) -> str:
    """An exception raised by a library on bad bytes, as a clause of a one-line message: its type and the first
    sentence of its first line.

    >>> brief(KeyError(101)), brief(RuntimeError("PytorchStreamReader failed. This is an internal error.\\nmore"))
    ('KeyError: 101', 'RuntimeError: PytorchStreamReader failed')
    """
    lines = str(err).strip().splitlines()
    text = lines[0].split(". ")[0][:200] if lines else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
