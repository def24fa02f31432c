"""Where verify's two sides run: each device checked before any work, and the reference beside the converted model.

With ``--reference-device`` the family's reference (its float32, noise and cast runs, in that order) runs on a
thread of its own, on its own device, while the converted model streams on ``--device`` on the main thread: plain
torch placement, joined at the end. Kernels release the GIL, so on two GPUs (or spare CPU cores) the two overlap,
and each side computes exactly what it computes alone. The one process-wide change a side makes is the noise
run's ``Tensor.float`` patch (``precision.float64_compute``), which leaves every tensor but a float64 one as
before; the converted model never holds float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from harness.errors import ConversionError
from harness.parity.background import background
from harness.parity.parity import cuda_skip_reason

__all__ = ["check_device", "placement", "side_by_side"]

R = TypeVar("R")
C = TypeVar("C")


def check_device(flag: str, device: str) -> None:
    """A ConversionError naming ``flag`` where ``device`` is not one torch can use on this machine.

    >>> check_device("--device", "cpu")
    """
    try:
        where = torch.device(device)
    except RuntimeError:
        raise ConversionError(f"{flag} {device}: not a device torch knows; expected cpu, cuda or cuda:N") from None
    if where.type != "cuda":
        return
    if cuda_skip_reason():
        raise ConversionError(f"{flag} {device}: {cuda_skip_reason()}")
    count = torch.cuda.device_count()
    if where.index is not None and where.index >= count:
        raise ConversionError(f"{flag} {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")


def placement(device: str, reference_device: str | None, gpus: int) -> tuple[str, str | None]:
    """Where the converted model and the reference run: as asked; a bare ``cuda`` on a machine with ``gpus`` > 1
    puts one side on each GPU (converted on cuda:0, reference on cuda:1), since the two then run at once.

    >>> placement("cuda", None, 2), placement("cuda", None, 1), placement("cuda:0", None, 2)
    (('cuda:0', 'cuda:1'), ('cuda', None), ('cuda:0', None))
    """
    if device == "cuda" and reference_device is None and gpus > 1:
        return "cuda:0", "cuda:1"
    return device, reference_device


def side_by_side(reference: Callable[[], R], converted: Callable[[], C], together: bool) -> tuple[R, C]:
    """``reference()`` then ``converted()``; where ``together``, both at once (the reference on a thread).

    >>> side_by_side(lambda: "ref", lambda: "converted", together=True)
    ('ref', 'converted')
    """
    if not together:
        ref = reference()
        return ref, converted()
    pending = background(reference, name="convparity-reference")
    out = converted()
    return pending.result(), out
