"""Ways a user's checkpoint arrives broken, applied to any family's tiny source (tests/test_fuzz.py).

Every kind works from what the files are (weights, side-car config, shard index, .nemo archive), never from the
family's name, so a new family is corrupted like the others. A kind returns a ``Broken``: what it did, the
conversion options it needs, and ``may_convert``: why converting anyway is right, when it is (an unused buffer,
a valid value); without one, the only acceptable outcome is a clean refusal. The kinds themselves are in
``corrupt_files.py`` (whole files, indexes, configs) and ``corrupt_values.py`` (config values, options, tensors).
"""

from __future__ import annotations

from collections.abc import Callable

from tests import corrupt_files as f
from tests import corrupt_values as v
from tests.corruption_tools import TORCH, WEIGHTS, Apply, Broken, CannotBuildError, indexes_in, weights_in
from tests.pristine import Pristine

__all__ = ["ALLOWED_MAY_CONVERT", "KINDS", "NONFINITE_MAY_CONVERT", "Broken", "CannotBuildError", "applicable"]

NONFINITE_MAY_CONVERT, ALLOWED_MAY_CONVERT = v.NONFINITE_MAY_CONVERT, v.ALLOWED_MAY_CONVERT


def applicable(pristine: Pristine) -> list[str]:
    """The kinds that can break this source (an index is needed to break an index, ...)."""
    return [name for name, (applies, _) in KINDS.items() if applies(pristine)]


def _always(p: Pristine) -> bool:
    return True


def _torchlike(p: Pristine) -> bool:
    return any(w.suffix in TORCH + (".nemo",) for w in weights_in(p.path))


KINDS: dict[str, tuple[Callable[[Pristine], bool], Apply]] = {
    "truncate": (_always, f.truncate),
    "flip-bytes": (_always, f.flip),
    "directory-for-weights": (_always, f.replace("directory-for-weights", f.as_directory)),
    "text-for-weights": (_always, f.replace("text-for-weights", f.as_text)),
    "random-bytes": (_always, f.replace("random-bytes", f.as_random)),
    "zero-filled": (_always, f.replace("zero-filled", f.as_zeros)),
    "empty-file": (_always, f.replace("empty-file", f.as_empty)),
    "wrong-container": (_always, f.wrong_container),
    "missing-weights": (_always, f.missing_weights),
    "stray-copy": (_always, f.stray_copy),
    "code-in-pickle": (_torchlike, f.code_in_pickle),
    "non-tensor-entry": (_torchlike, f.non_tensor_entry),
    "broken-index": (lambda p: bool(indexes_in(p.path)), f.broken_index),
    "config-missing": (lambda p: p.has_config, f.config_bytes("config-missing", f.deleted)),
    "config-not-utf8": (lambda p: p.has_config, f.config_bytes("config-not-utf8", f.utf16)),
    "config-bad-syntax": (lambda p: p.has_config, f.config_bytes("config-bad-syntax", f.bad_syntax)),
    "config-not-object": (lambda p: p.has_config, f.config_bytes("config-not-object", f.not_object)),
    "config-wrong-type": (lambda p: bool(p.carried), v.config_value("config-wrong-type", v.wrong_type)),
    "config-wrong-value": (lambda p: bool(p.carried), v.config_value("config-wrong-value", v.wrong_value)),
    "option-value": (lambda p: bool(p.options), v.option_value),
    "wrong-file-as-source": (lambda p: any(x.suffix not in WEIGHTS for x in p.path.rglob("*") if x.is_file()),
                             f.wrong_file_as_source),
    "empty-source-dir": (_always, f.empty_dir),
    "tensor-removed": (_always, v.tensor_kind("tensor-removed", v.removed)),
    "tensor-renamed": (_always, v.tensor_kind("tensor-renamed", v.renamed)),
    "tensor-reshaped": (_always, v.tensor_kind("tensor-reshaped", v.reshaped)),
    "tensor-odd-dtype": (_always, v.tensor_kind("tensor-odd-dtype", v.odd_dtype)),
    "tensor-float-dtype": (_always, v.tensor_kind("tensor-float-dtype", v.float_dtype)),
    "tensor-nonfinite": (_always, v.tensor_kind("tensor-nonfinite", v.nonfinite)),
    "tensor-nonfinite-allowed": (_always, v.tensor_kind("tensor-nonfinite-allowed", v.nonfinite_allowed,
                                                       {"allow_nonfinite": True}, ("--allow-nonfinite",))),
    "tensor-extra": (_always, v.tensor_kind("tensor-extra", v.extra)),
}
