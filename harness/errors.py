"""The one exception type users see: a problem with their input, worded as a single line."""

__all__ = ["ConversionError"]


class ConversionError(Exception):
    """Bad input or an inconsistent checkpoint.

    The CLI prints the message on one line and exits non-zero; nothing is written.

    >>> raise ConversionError("expected params.json beside consolidated.00.pth in /ckpt; pass --config FILE")
    Traceback (most recent call last):
    harness.errors.ConversionError: expected params.json beside consolidated.00.pth in /ckpt; pass --config FILE
    """
