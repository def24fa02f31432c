"""Casts on raw bits give what torch's ``Tensor.to`` gives: every 16-bit pattern, and float32 edges and random bits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from harness.io.bit_casts import CASTABLE, cast_bits, cast_counting
from harness.io.raw_dtypes import BY_NAME

_SIGNED = {2: (np.int16, torch.int16), 4: (np.int32, torch.int32)}
# float32 bit patterns where rounding decides: ties at both parities, the largest finite values of the narrower
# formats and just past them, subnormals of float16, the smallest float32 subnormal, signed zeros and infinities.
_EDGES = [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x3F808000, 0x3F818000,
          0x3F80_8001, 0x477FEFFF, 0x477FF000, 0x477FE000, 0x38800000, 0x387FC000, 0x33800000, 0x33000000,
          0x33000001, 0x00000001, 0x80000001]


def _patterns(dtype: str) -> np.ndarray:
    if BY_NAME[dtype].itemsize == 2:
        return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    rng = np.random.default_rng(0)
    random = rng.integers(0, 1 << 32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    # weights as they come (float16's normal range, where the casts use arithmetic), and exact ties to even there
    weights = (rng.standard_normal(1 << 16) * 10.0 ** rng.integers(-6, 5, 1 << 16)).astype(np.float32)
    ties = (weights.view(np.uint32) & ~np.uint32(0x1FFF)) | np.uint32(0x1000)
    return np.concatenate([np.array(_EDGES, dtype=np.uint32), random, weights.view(np.uint32), ties])


def _as_torch(bits: np.ndarray, dtype: str) -> torch.Tensor:
    signed = _SIGNED[bits.itemsize]
    return torch.from_numpy(bits.view(signed[0]).copy()).view(getattr(torch, dtype))


@pytest.mark.parametrize(("source", "target"), list(itertools.permutations(CASTABLE, 2)))
def test_every_value_casts_as_torch_casts_it(source: str, target: str) -> None:
    bits = _patterns(source)
    values = _as_torch(bits, source)
    expected = values.to(getattr(torch, target))
    got = _as_torch(cast_bits(bits, BY_NAME[source], BY_NAME[target]), target)
    nan = torch.isnan(values)
    exp_bits, got_bits = (t.view(_SIGNED[BY_NAME[target].itemsize][1]) for t in (expected, got))
    assert torch.equal(got_bits[~nan], exp_bits[~nan])  # finite and infinite values: the same bits
    assert bool(torch.isnan(got[nan]).all())  # a NaN stays a NaN (its payload is the CPU's business)


@pytest.mark.parametrize(("source", "target"), list(itertools.product(CASTABLE, repeat=2)))
def test_a_counting_cast_counts_the_sources_nan_and_inf(source: str, target: str) -> None:
    bits = _patterns(source)
    out = np.empty(bits.shape, dtype=f"<u{BY_NAME[target].itemsize}")
    expected = int((~torch.isfinite(_as_torch(bits, source))).sum())
    assert expected > 0
    assert cast_counting(bits, BY_NAME[source], BY_NAME[target], out) == expected
    assert np.array_equal(out, cast_bits(bits, BY_NAME[source], BY_NAME[target]))


def test_a_cast_to_the_same_type_copies_the_bits_and_fills_a_given_buffer() -> None:
    bits = _patterns("bfloat16")
    out = np.empty_like(bits)
    assert cast_bits(bits, BY_NAME["bfloat16"], BY_NAME["bfloat16"], out) is out and np.array_equal(out, bits)
    into = np.empty(bits.size, dtype=np.uint32)
    assert cast_bits(bits, BY_NAME["bfloat16"], BY_NAME["float32"], into) is into
    assert np.array_equal(into, cast_bits(bits, BY_NAME["bfloat16"], BY_NAME["float32"]))


def test_a_strided_output_is_refused_rather_than_left_unwritten() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        cast_counting(np.zeros(4, np.uint16), BY_NAME["bfloat16"], BY_NAME["float16"], np.zeros(8, np.uint16)[::2])


def test_other_types_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot cast float64 to float16"):
        cast_bits(np.zeros(2, np.uint64), BY_NAME["float64"], BY_NAME["float16"])
