"""clear_unused_bits against the DICOM rule worked out word by word in plain Python ints."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.deid.pixels import clear_unused_bits


def dicom_value(word: int, stored: int, signed: bool) -> int:
    """PS3.5 8.1.1 for HighBit = BitsStored - 1: the low ``stored`` bits, two's complement when signed."""
    value = word & ((1 << stored) - 1)
    if signed and value >= 1 << (stored - 1):
        value -= 1 << stored
    return value


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("stored", [8, 10, 12, 15])
@pytest.mark.parametrize("order", ["<", ">"])
def test_every_word_pattern_reads_as_its_stored_value(signed: bool, stored: int, order: str) -> None:
    words = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    arr = (words.view(np.int16) if signed else words).astype(f"{order}{'i' if signed else 'u'}2")
    out = clear_unused_bits(arr, stored, stored - 1, signed=signed)
    expected = [dicom_value(int(w), stored, signed) for w in words]
    assert out.dtype.kind == arr.dtype.kind
    assert out.astype(np.int64).tolist() == expected


@pytest.mark.parametrize("signed", [False, True])
def test_clean_words_come_back_untouched(signed: bool) -> None:
    # Already in range: the array itself is returned (no copy of a whole CT volume).
    rng = np.random.default_rng(7)
    lo, hi = (-2048, 2048) if signed else (0, 4096)
    arr = rng.integers(lo, hi, size=(4, 64, 64)).astype(np.int16 if signed else np.uint16)
    assert clear_unused_bits(arr, 12, 11, signed=signed) is arr
    empty = np.zeros((0, 3), dtype=arr.dtype)
    assert clear_unused_bits(empty, 12, 11, signed=signed) is empty


def test_one_junk_word_is_found_anywhere() -> None:
    arr = np.full((3, 8, 8), 100, dtype=np.uint16)
    arr[2, 7, 7] = 0x8000 | 100  # an overlay bit in the last word only
    out = clear_unused_bits(arr, 12, 11)
    assert out is not arr and int(out.max()) == 100 and int(arr[2, 7, 7]) == 0x8000 | 100


def test_stored_field_not_at_bit_zero_keeps_its_place() -> None:
    # HighBit 15, BitsStored 12: the low four bits are not part of the value (general path).
    arr = np.array([0xFFFF, 0x1230, 0x123F], dtype=np.uint16)
    assert clear_unused_bits(arr, 12, 15).tolist() == [0xFFF0, 0x1230, 0x1230]
