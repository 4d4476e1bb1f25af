"""The ``Range`` request header (RFC 9110 14.2), pure.

``byte_ranges(header, size)`` is one of:

- ``None``: ignore the header and send the whole representation (200): an unknown range unit
  (``items=0-1``), a header that does not parse (``bytes=abc``, ``bytes=5-1``), one asking
  for more than ``MAX_RANGES`` pieces, or a suffix of an empty representation (``bytes=-5``);
- ``[]``: no range overlaps the representation: 416 with ``Content-Range: bytes */size``;
- ``[(start, end), ...]``: half-open byte ranges, sorted, overlapping and adjacent ones merged.
"""

from __future__ import annotations

MAX_RANGES = 100
"""More range-specs than this in one header is not a client reading a file: send it whole."""

ByteRanges = list[tuple[int, int]]


def byte_ranges(header: str, size: int) -> ByteRanges | None:
    unit, equals, spec_list = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    specs = [spec.strip(" \t") for spec in spec_list.split(",")]
    specs = [spec for spec in specs if spec]  # a list may carry empty elements (RFC 9110 5.6.1)
    if not specs or len(specs) > MAX_RANGES:
        return None
    ranges: ByteRanges = []
    suffix_of_nothing = False  # a non-zero suffix-length asked of an empty representation
    for spec in specs:
        first, dash, last = spec.partition("-")
        if not dash or not _digits(first, empty=True) or not _digits(last, empty=True):
            return None
        if not first:  # suffix-range: the last N bytes
            if not last:
                return None
            if last.strip("0") and size == 0:
                suffix_of_nothing = True
            elif last.strip("0"):
                ranges.append((max(size - _int(last, size), 0), size))
            continue
        if last and _less(last, first):
            return None  # an invalid range-spec makes the whole header invalid
        start = _int(first, size)
        if start < size:
            end = size if not last else min(_int(last, size) + 1, size)
            ranges.append((start, end))
    if not ranges and suffix_of_nothing:
        # Satisfiable (RFC 9110 14.1.1: a non-zero suffix-length), but there is nothing to cut
        # from an empty representation: it is sent whole (200), as nginx sends it.
        return None
    return _merged(ranges)


def _int(digits: str, ceiling: int) -> int:
    """``min(int(digits), ceiling)`` for any number of digits: ``int()`` refuses more than 4300
    (a ValueError), and any number past the size means the same as the size."""
    digits = digits.lstrip("0") or "0"
    return ceiling if len(digits) > len(str(ceiling)) else min(int(digits), ceiling)


def _less(digits: str, other: str) -> bool:
    """``int(digits) < int(other)``, however long they are."""
    digits, other = digits.lstrip("0"), other.lstrip("0")
    return (len(digits), digits) < (len(other), other)


def _digits(text: str, *, empty: bool) -> bool:
    return (empty and not text) or (text.isascii() and text.isdigit())


def _merged(ranges: ByteRanges) -> ByteRanges:
    merged: ByteRanges = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
