"""fastbody.integrations.files, the pure decisions: ranges (RFC 9110 14), conditionals (13),
the representation (media type, Accept-Encoding, Cache-Control, validators), one answer per
request (15.3.7, 15.4.5, 15.5.13, 15.5.17), and the X-Sendfile / X-Accel-Redirect handoff.

Tables for the RFC's examples and edge cases; hypothesis properties against brute-force models;
the multipart layout, the ETag and Last-Modified against Starlette's FileResponse itself.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.responses import FileResponse
from starlette.testclient import TestClient

from fastbody.integrations.files import conditions, ranges, representation
from fastbody.integrations.files.answer import (
    BODY_HEADERS,
    METADATA_HEADERS,
    FileAnswer,
    FileRange,
    answer,
)
from fastbody.integrations.files.handoff import (
    ACCEL_REDIRECT,
    X_ACCEL_REDIRECT,
    X_SENDFILE,
    XSENDFILE_ROOTS,
    Handoff,
    Refused,
    hand_off,
    open_target,
)

byte_ranges = ranges.byte_ranges
MAX_RANGES = ranges.MAX_RANGES

FEW = settings(max_examples=150, deadline=None)
SOME = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------------------------
# ranges.byte_ranges (RFC 9110 14.1, 14.2)
# --------------------------------------------------------------------------------------------

RFC_EXAMPLES = [
    # 14.1.2: a representation of 10000 bytes
    ("bytes=0-499", [(0, 500)]),  # the first 500 bytes
    ("bytes=500-999", [(500, 1000)]),  # the second 500 bytes
    ("bytes=-500", [(9500, 10000)]),  # the final 500 bytes
    ("bytes=9500-", [(9500, 10000)]),  # the final 500 bytes
    ("bytes=0-0,-1", [(0, 1), (9999, 10000)]),  # the first and last bytes only
    # 14.1.2: legal but not canonical specifications of the second 500 bytes
    ("bytes=500-600,601-999", [(500, 1000)]),
    ("bytes=500-700,601-999", [(500, 1000)]),
    # 14.1.1 / 14.2: several ranges in one request
    ("bytes=0-999, 4500-5499, -1000", [(0, 1000), (4500, 5500), (9000, 10000)]),
]


@pytest.mark.parametrize(("header", "expected"), RFC_EXAMPLES)
def test_byte_ranges_rfc_examples(header: str, expected: list[tuple[int, int]]) -> None:
    assert byte_ranges(header, 10000) == expected


IGNORED = [
    "items=0-1",  # a unit the server does not know (14.2: MUST ignore)
    "none=0-1",
    "bytes 0-1",  # no '='
    "bytes:0-1",
    "0-1",
    "=0-1",
    "bytes=",  # 1#range-spec: at least one
    "bytes=,",
    "bytes= , ,",
    "bytes=abc",
    "bytes=5-1",  # last-pos < first-pos: invalid (14.1.1), the whole header with it
    "bytes=0-1,5-1",
    "bytes=-",
    "bytes=1",
    "bytes=0-1-2",
    "bytes=--1",
    "bytes=+1-2",
    "bytes=-+1",
    "bytes=0x1-2",
    "bytes=1.5-2",
    "bytes=1_0-20",  # int() would take it
    "bytes=0-1;x",
    "bytes=0 -1",  # no whitespace inside a range-spec
    "bytes=0- 1",
    "bytes=0-1 2",
    "bytes=0-1,abc",
    "bytes=\u0660-\u0665",  # ARABIC-INDIC digits: isdigit(), not DIGIT
    "bytes=\uff10-\uff11",  # FULLWIDTH digits
    "bytes=\u00b9-\u00b2",  # superscripts
    "bytes=0-\u0661",
    "bytes=-\u0661",
    "",
]


@pytest.mark.parametrize("header", IGNORED)
def test_byte_ranges_ignored(header: str) -> None:
    assert byte_ranges(header, 10) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10-", 10),  # first-pos == length
        ("bytes=11-20", 10),
        ("bytes=10-10", 10),
        ("bytes=-0", 10),  # a zero suffix-length: unsatisfiable (14.1.1)
        ("bytes=-0,10-", 10),
        ("bytes=0-", 0),  # nothing is satisfiable in an empty representation
        ("bytes=0-0", 0),
        ("bytes=-0", 0),
    ],
)
def test_byte_ranges_unsatisfiable(header: str, size: int) -> None:
    assert byte_ranges(header, size) == []


@pytest.mark.parametrize("header", ["bytes=-1", "bytes=-5,0-,3-4"])
def test_a_suffix_of_an_empty_representation_sends_it_whole(header: str) -> None:
    # 14.1.1: a non-zero suffix-length is satisfiable, but there is nothing to cut: 200, as nginx.
    assert byte_ranges(header, 0) is None


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=5-100", 10, [(5, 10)]),  # last-pos past the end: clamped (14.1.2)
        ("bytes=0-9", 10, [(0, 10)]),
        ("bytes=0-10", 10, [(0, 10)]),
        ("bytes=9-9", 10, [(9, 10)]),
        ("bytes=-100", 10, [(0, 10)]),  # suffix longer than the representation: all of it
        ("bytes=-10", 10, [(0, 10)]),
        ("bytes=-1", 1, [(0, 1)]),
        ("bytes=0-", 1, [(0, 1)]),
        ("bytes=10-,2-3", 10, [(2, 4)]),  # the unsatisfiable spec dropped, the rest sent
        ("bytes=-0,2-3", 10, [(2, 4)]),
        # whitespace around commas (OWS in 1#element, 5.6.1) and empty list elements
        ("bytes=0-1 , 3-4", 10, [(0, 2), (3, 5)]),
        ("bytes=0-1,\t3-4", 10, [(0, 2), (3, 5)]),
        ("bytes=0-1 ,\t 3-4 ", 10, [(0, 2), (3, 5)]),
        ("bytes=0-1,,3-4", 10, [(0, 2), (3, 5)]),
        ("bytes=,0-1, ,3-4,", 10, [(0, 2), (3, 5)]),
        # range-unit is case-insensitive (14.1)
        ("BYTES=0-1", 10, [(0, 2)]),
        ("Bytes=0-1", 10, [(0, 2)]),
        ("bYtEs=-2", 10, [(8, 10)]),
        # sorted, overlapping and adjacent ones merged
        ("bytes=5-9,0-1", 10, [(0, 2), (5, 10)]),
        ("bytes=0-4,5-9", 10, [(0, 10)]),
        ("bytes=0-5,3-8", 10, [(0, 9)]),
        ("bytes=0-1,3-4", 10, [(0, 2), (3, 5)]),
        ("bytes=3-4,0-1,1-3", 10, [(0, 5)]),
        ("bytes=0-9,2-3", 10, [(0, 10)]),
        ("bytes=-3,7-", 10, [(7, 10)]),
        ("bytes=-3,0-0", 10, [(0, 1), (7, 10)]),
        ("bytes=1-1,1-1,1-1", 10, [(1, 2)]),
        ("bytes=000-001", 10, [(0, 2)]),  # leading zeros are still DIGITs
    ],
)
def test_byte_ranges_satisfiable(header: str, size: int, expected: list[tuple[int, int]]) -> None:
    assert byte_ranges(header, size) == expected


BIG = "9" * 30
HUGE = "9" * 5000  # past int()'s 4300-digit limit for str conversion


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"bytes=0-{BIG}", [(0, 10)]),
        (f"bytes={BIG}-", []),
        (f"bytes={BIG}-{BIG}", []),
        (f"bytes=-{BIG}", [(0, 10)]),
        (f"bytes=0-{HUGE}", [(0, 10)]),
        (f"bytes=3-{HUGE}", [(3, 10)]),
        (f"bytes={HUGE}-", []),
        (f"bytes={HUGE}-{HUGE}", []),
        (f"bytes=-{HUGE}", [(0, 10)]),
        (f"bytes={'0' * 5000}5-{'0' * 5000}7", [(5, 8)]),
        (f"bytes={HUGE}-{'1' * 5000}", None),  # last-pos < first-pos, however long
        (f"bytes={HUGE}9-{HUGE}", None),
        (f"bytes={'1' * 5000}-{HUGE}", []),
        (f"bytes=2-3,{HUGE}-", [(2, 4)]),
    ],
)
def test_byte_ranges_huge_numbers(header: str, expected: list[tuple[int, int]] | None) -> None:
    assert byte_ranges(header, 10) == expected


def test_byte_ranges_huge_size() -> None:
    size = 10**30
    assert byte_ranges(f"bytes=-{BIG}", size) == [(1, size)]
    assert byte_ranges(f"bytes=-{BIG}9", size) == [(0, size)]
    assert byte_ranges(f"bytes={10**29}-", size) == [(10**29, size)]
    assert byte_ranges(f"bytes=0-{HUGE}", size) == [(0, size)]


def test_byte_ranges_max_ranges() -> None:
    assert byte_ranges("bytes=" + ",".join(["0-0"] * MAX_RANGES), 10) == [(0, 1)]
    assert byte_ranges("bytes=" + ",".join(["0-0"] * (MAX_RANGES + 1)), 10) is None
    many = ",".join(f"{2 * i}-{2 * i}" for i in range(MAX_RANGES))
    assert byte_ranges(f"bytes={many}", 1000) == [(2 * i, 2 * i + 1) for i in range(MAX_RANGES)]
    # empty elements do not count
    assert byte_ranges("bytes=" + ",,".join(["0-0"] * MAX_RANGES), 10) == [(0, 1)]


# A brute-force model of 14.1: each spec parsed on its own, satisfiable bytes as a set.

Spec = tuple[int | None, int | None]  # (first-pos, last-pos) ; (None, n) is the suffix-range -n


def model_bytes(specs: list[Spec], size: int) -> set[int] | None:
    chosen: set[int] = set()
    suffix_of_nothing = False
    for first, last in specs:
        if first is None:
            assert last is not None
            if last > 0:
                suffix_of_nothing |= size == 0
                chosen |= set(range(max(size - last, 0), size))
            continue
        if last is not None and last < first:
            return None
        chosen |= set(range(first, size if last is None else min(last + 1, size)))
    return None if suffix_of_nothing and not chosen else chosen


def runs(chosen: set[int]) -> list[tuple[int, int]]:
    """The maximal runs of consecutive offsets, as half-open ranges."""
    found: list[tuple[int, int]] = []
    for offset in sorted(chosen):
        if found and found[-1][1] == offset:
            found[-1] = (found[-1][0], offset + 1)
        else:
            found.append((offset, offset + 1))
    return found


def render(spec: Spec) -> str:
    first, last = spec
    return f"{'' if first is None else first}-{'' if last is None else last}"


positions = st.integers(min_value=0, max_value=40)
specs_strategy = st.one_of(
    st.tuples(positions, st.none() | positions),  # int-range
    st.tuples(st.none(), positions),  # suffix-range
)
whitespace = st.sampled_from(["", " ", "\t", "  ", " \t"])


def well_formed(ranges_: ranges.ByteRanges, size: int) -> None:
    for start, end in ranges_:
        assert 0 <= start < end <= size
    for (_, end), (start, _) in itertools.pairwise(ranges_):
        assert end < start  # sorted, disjoint, not even adjacent (merged)


@FEW
@given(
    specs=st.lists(specs_strategy, min_size=1, max_size=8),
    size=st.integers(min_value=0, max_value=30),
    unit=st.sampled_from(["bytes", "BYTES", "Bytes"]),
    data=st.data(),
)
def test_byte_ranges_against_model(specs: list[Spec], size: int, unit: str, data: st.DataObject) -> None:
    elements = [data.draw(whitespace) + render(spec) + data.draw(whitespace) for spec in specs]
    header = f"{unit}=" + ",".join(elements)
    found = byte_ranges(header, size)
    expected = model_bytes(specs, size)
    if expected is None:
        assert found is None
        return
    assert found is not None
    well_formed(found, size)
    assert found == runs(expected)
    assert {offset for start, end in found for offset in range(start, end)} == expected


@FEW
@given(header=st.text(alphabet="bytesBYTES=-,0123456789 \t;x\u0661", max_size=30), size=st.integers(0, 50))
def test_byte_ranges_never_raises(header: str, size: int) -> None:
    found = byte_ranges(header, size)
    if found is not None:
        well_formed(found, size)


@FEW
@given(header=st.text(max_size=40), size=st.integers(0, 10**20))
def test_byte_ranges_any_text(header: str, size: int) -> None:
    found = byte_ranges(header, size)
    if found is not None:
        well_formed(found, size)


# --------------------------------------------------------------------------------------------
# conditions (RFC 9110 13)
# --------------------------------------------------------------------------------------------

ETAG = '"abc"'
WEAK = 'W/"abc"'
LM = "Sun, 06 Nov 1994 08:49:37 GMT"
LM_RFC850 = "Sunday, 06-Nov-94 08:49:37 GMT"
LM_ASCTIME = "Sun Nov  6 08:49:37 1994"
EARLIER = "Sat, 05 Nov 1994 08:49:37 GMT"
LATER = "Mon, 07 Nov 1994 08:49:37 GMT"
SECOND_LATER = "Sun, 06 Nov 1994 08:49:38 GMT"
INVALID = "not a date"

PRECONDITIONS = [
    # (method, request headers, etag, last_modified, expected)
    ("GET", {}, ETAG, LM, None),
    ("PUT", {}, ETAG, LM, None),
    # If-Match: strong comparison (13.1.1)
    ("GET", {"if-match": ETAG}, ETAG, LM, None),
    ("PUT", {"if-match": ETAG}, ETAG, LM, None),
    ("GET", {"if-match": '"xyz"'}, ETAG, LM, 412),
    ("PUT", {"if-match": '"xyz"'}, ETAG, LM, 412),
    ("GET", {"if-match": '"xyz", "abc"'}, ETAG, LM, None),
    ("GET", {"if-match": '"xyz","abc"'}, ETAG, LM, None),
    ("GET", {"if-match": ' "xyz" ,\t"abc" '}, ETAG, LM, None),
    ("GET", {"if-match": WEAK}, ETAG, LM, 412),  # a weak tag never matches strongly
    ("GET", {"if-match": ETAG}, WEAK, LM, 412),
    ("GET", {"if-match": WEAK}, WEAK, LM, 412),
    ("GET", {"if-match": "*"}, ETAG, LM, None),
    ("GET", {"if-match": "*"}, None, LM, None),  # the representation exists
    ("GET", {"if-match": " * "}, WEAK, None, None),
    ("GET", {"if-match": ETAG}, None, LM, 412),
    ("GET", {"if-match": '"a,b"'}, '"a,b"', LM, None),  # quoted commas
    ("GET", {"if-match": '"a", "b"'}, '"a,b"', LM, 412),
    ("GET", {"if-match": '"a,b", "abc"'}, ETAG, LM, None),
    ("GET", {"if-match": '"ab"'}, ETAG, LM, 412),
    ("GET", {"if-match": "abc"}, ETAG, LM, 412),  # unquoted: not the tag
    # If-Unmodified-Since (13.1.4)
    ("PUT", {"if-unmodified-since": EARLIER}, ETAG, LM, 412),
    ("GET", {"if-unmodified-since": EARLIER}, ETAG, LM, 412),
    ("PUT", {"if-unmodified-since": LM}, ETAG, LM, None),
    ("PUT", {"if-unmodified-since": LATER}, ETAG, LM, None),
    ("PUT", {"if-unmodified-since": INVALID}, ETAG, LM, None),  # not a date: ignored
    ("PUT", {"if-unmodified-since": EARLIER}, ETAG, None, None),  # no Last-Modified
    ("PUT", {"if-unmodified-since": EARLIER}, ETAG, INVALID, None),
    ("PUT", {"if-unmodified-since": f"{LATER}, {EARLIER}"}, ETAG, LM, None),  # a list: ignored
    ("PUT", {"if-unmodified-since": f"{EARLIER}, {LATER}"}, ETAG, LM, None),
    # If-Match beats If-Unmodified-Since (13.2.2 step 2: only without If-Match)
    ("PUT", {"if-match": ETAG, "if-unmodified-since": EARLIER}, ETAG, LM, None),
    ("PUT", {"if-match": "*", "if-unmodified-since": EARLIER}, ETAG, LM, None),
    ("PUT", {"if-match": '"xyz"', "if-unmodified-since": LATER}, ETAG, LM, 412),
    # If-None-Match: weak comparison (13.1.2); 304 for GET/HEAD, 412 otherwise
    ("GET", {"if-none-match": ETAG}, ETAG, LM, 304),
    ("HEAD", {"if-none-match": ETAG}, ETAG, LM, 304),
    ("POST", {"if-none-match": ETAG}, ETAG, LM, 412),
    ("PUT", {"if-none-match": ETAG}, ETAG, LM, 412),
    ("DELETE", {"if-none-match": ETAG}, ETAG, LM, 412),
    ("GET", {"if-none-match": WEAK}, ETAG, LM, 304),
    ("GET", {"if-none-match": ETAG}, WEAK, LM, 304),
    ("GET", {"if-none-match": WEAK}, WEAK, LM, 304),
    ("PUT", {"if-none-match": WEAK}, ETAG, LM, 412),
    ("GET", {"if-none-match": '"xyz"'}, ETAG, LM, None),
    ("GET", {"if-none-match": 'W/"xyz"'}, ETAG, LM, None),
    ("GET", {"if-none-match": '"xyz", W/"abc"'}, ETAG, LM, 304),
    ("GET", {"if-none-match": '  "xyz" ,  W/"abc"  '}, ETAG, LM, 304),
    ("GET", {"if-none-match": 'W/"xyz",W/"abc"'}, ETAG, LM, 304),
    ("GET", {"if-none-match": '"a,b", "abc"'}, ETAG, LM, 304),
    ("GET", {"if-none-match": '"x,abc"'}, ETAG, LM, None),
    ("GET", {"if-none-match": '"a,b"'}, '"a,b"', LM, 304),
    ("GET", {"if-none-match": '"a", "b"'}, '"a,b"', LM, None),
    ("GET", {"if-none-match": "*"}, ETAG, LM, 304),
    ("GET", {"if-none-match": "*"}, None, None, 304),
    ("PUT", {"if-none-match": "*"}, ETAG, LM, 412),
    ("GET", {"if-none-match": ETAG}, None, LM, None),
    # If-Modified-Since (13.1.3): GET and HEAD only
    ("GET", {"if-modified-since": LM}, ETAG, LM, 304),
    ("HEAD", {"if-modified-since": LM}, ETAG, LM, 304),
    ("GET", {"if-modified-since": LATER}, ETAG, LM, 304),
    ("GET", {"if-modified-since": SECOND_LATER}, ETAG, LM, 304),
    ("GET", {"if-modified-since": EARLIER}, ETAG, LM, None),
    ("GET", {"if-modified-since": LM_RFC850}, ETAG, LM, 304),  # all three formats (5.6.7)
    ("GET", {"if-modified-since": LM_ASCTIME}, ETAG, LM, 304),
    ("GET", {"if-modified-since": LM}, ETAG, LM_RFC850, 304),
    ("POST", {"if-modified-since": LM}, ETAG, LM, None),
    ("PUT", {"if-modified-since": LATER}, ETAG, LM, None),
    ("GET", {"if-modified-since": INVALID}, ETAG, LM, None),
    ("GET", {"if-modified-since": ""}, ETAG, LM, None),
    ("GET", {"if-modified-since": LM}, ETAG, None, None),
    ("GET", {"if-modified-since": f"{LATER}, {LM}"}, ETAG, LM, None),  # a list: ignored
    ("GET", {"if-modified-since": f"{LM_ASCTIME}, {LM_ASCTIME}"}, ETAG, LM, None),
    ("GET", {"if-modified-since": "Mon, 07 Nov 1994 08:49:37 +0000"}, ETAG, LM, None),  # not GMT
    ("GET", {"if-modified-since": "Mon, 07 Nov 1994 08:49:37"}, ETAG, LM, None),
    ("GET", {"if-modified-since": "Mon, \u0660\u0667 Nov 1994 08:49:37 GMT"}, ETAG, LM, None),
    ("GET", {"if-modified-since": "Mon, 31 Feb 1994 08:49:37 GMT"}, ETAG, LM, None),  # no such day
    ("GET", {"if-modified-since": f" {LATER} "}, ETAG, LM, 304),
    # If-None-Match beats If-Modified-Since (13.2.2 step 4: only without If-None-Match)
    ("GET", {"if-none-match": '"xyz"', "if-modified-since": LATER}, ETAG, LM, None),
    ("GET", {"if-none-match": ETAG, "if-modified-since": EARLIER}, ETAG, LM, 304),
    # the order of the steps
    ("GET", {"if-match": '"xyz"', "if-none-match": ETAG}, ETAG, LM, 412),
    ("GET", {"if-match": ETAG, "if-none-match": ETAG}, ETAG, LM, 304),
    ("PUT", {"if-match": ETAG, "if-none-match": ETAG}, ETAG, LM, 412),
    ("GET", {"if-unmodified-since": EARLIER, "if-none-match": ETAG}, ETAG, LM, 412),
    ("GET", {"if-unmodified-since": EARLIER, "if-modified-since": LATER}, ETAG, LM, 412),
    ("GET", {"if-match": ETAG, "if-modified-since": LATER}, ETAG, LM, 304),
    ("GET", {"if-unmodified-since": LATER, "if-modified-since": LATER}, ETAG, LM, 304),
]


@pytest.mark.parametrize(("method", "request_", "etag", "last_modified", "expected"), PRECONDITIONS)
def test_precondition(
    method: str, request_: dict[str, str], etag: str | None, last_modified: str | None, expected: int | None
) -> None:
    assert conditions.precondition(method, request_, etag, last_modified) == expected


@pytest.fixture
def far_east(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The server's local time 9 hours ahead of GMT: an HTTP-date is GMT whatever its format."""
    monkeypatch.setenv("TZ", "JST-9")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def far_west(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "HST10")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_east")
@pytest.mark.parametrize("date", [LM, LM_RFC850, LM_ASCTIME])
def test_dates_are_gmt_in_any_local_time_east(date: str) -> None:
    assert conditions.precondition("GET", {"if-modified-since": date}, None, LM) == 304
    assert conditions.precondition("PUT", {"if-unmodified-since": date}, None, LM) is None


@pytest.mark.usefixtures("far_west")
@pytest.mark.parametrize("date", [LM, LM_RFC850, LM_ASCTIME])
def test_dates_are_gmt_in_any_local_time_west(date: str) -> None:
    assert conditions.precondition("GET", {"if-modified-since": date}, None, LM) == 304
    assert conditions.precondition("PUT", {"if-unmodified-since": date}, None, LM) is None
    # and one second off either way still counts
    assert conditions.precondition("GET", {"if-modified-since": EARLIER}, None, LM) is None
    assert conditions.precondition("PUT", {"if-unmodified-since": EARLIER}, None, LM) == 412


@pytest.mark.parametrize(
    ("if_range", "etag", "last_modified", "expected"),
    [
        (None, ETAG, LM, True),
        (ETAG, ETAG, LM, True),  # strong entity tag, strong comparison (13.1.5)
        (f" {ETAG} ", ETAG, LM, True),
        (ETAG, WEAK, LM, False),
        (WEAK, WEAK, LM, False),  # a weak tag never
        (WEAK, ETAG, LM, False),
        ('"xyz"', ETAG, LM, False),
        (ETAG, None, LM, False),
        (LM, ETAG, LM, True),  # the exact Last-Modified date
        (LM, None, LM, True),
        (EARLIER, ETAG, LM, False),
        (LATER, ETAG, LM, False),  # any other date: send it whole
        (SECOND_LATER, ETAG, LM, False),
        (LM_RFC850, ETAG, LM, False),  # "exactly matches": the same instant written otherwise
        (LM, ETAG, None, False),
        (INVALID, ETAG, INVALID, False),  # not a date at all
        ("", ETAG, LM, False),
        ("abc", ETAG, LM, False),
    ],
)
def test_range_applies(
    if_range: str | None, etag: str | None, last_modified: str | None, expected: bool
) -> None:
    assert conditions.range_applies(if_range, etag, last_modified) is expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('"a"', ['"a"']),
        ('W/"a"', ['W/"a"']),
        ('"a", "b"', ['"a"', '"b"']),
        ('"a","b"', ['"a"', '"b"']),
        ('W/"a",W/"b", "c"', ['W/"a"', 'W/"b"', '"c"']),
        ('  "a"  ,\t"b"\t', ['"a"', '"b"']),
        ('"a,b", "c"', ['"a,b"', '"c"']),
        ('"a, b",W/", "', ['"a, b"', 'W/", "']),
        ('""', ['""']),
        ('"a",, ,"b"', ['"a"', '"b"']),
        ('"a", ', ['"a"']),
        (', "a"', ['"a"']),
        ("", []),
        ("   ", []),
        ('"unterminated', []),
        ('"a", "unterminated', ['"a"']),
    ],
)
def test_entity_tags(header: str, expected: list[str]) -> None:
    assert conditions.entity_tags(header) == expected


# A brute-force model of 13.2.2 over a small universe of tags and dates.

DATES = {EARLIER: 1, LM: 2, LM_RFC850: 2, LM_ASCTIME: 2, SECOND_LATER: 3, LATER: 4, INVALID: None}
TAGS = ['"abc"', 'W/"abc"', '"xyz"', 'W/"xyz"', '"a,b"']


def model_precondition(
    method: str, request: dict[str, str], etag: str | None, last_modified: str | None
) -> int | None:
    def listed(header: str) -> list[tuple[bool, str]]:
        return [(bool(weak), opaque) for weak, opaque in re.findall(r'(W/)?"([^"]*)"', header)]

    def strong(header: str) -> bool:
        if header == "*":
            return True
        if etag is None or etag.startswith("W/"):
            return False
        return any(not weak and f'"{opaque}"' == etag for weak, opaque in listed(header))

    def weak(header: str) -> bool:
        if header == "*":
            return True
        if etag is None:
            return False
        return any(f'"{opaque}"' == etag.removeprefix("W/") for _, opaque in listed(header))

    modified = DATES.get(last_modified) if last_modified is not None else None
    safe = method in ("GET", "HEAD")
    if "if-match" in request:
        if not strong(request["if-match"]):
            return 412
    elif "if-unmodified-since" in request:
        date = DATES[request["if-unmodified-since"]]
        if date is not None and modified is not None and modified > date:
            return 412
    if "if-none-match" in request:
        if weak(request["if-none-match"]):
            return 304 if safe else 412
    elif "if-modified-since" in request and safe:
        date = DATES[request["if-modified-since"]]
        if date is not None and modified is not None and modified <= date:
            return 304
    return None


tag_lists = st.one_of(
    st.just("*"),
    st.lists(st.sampled_from(TAGS), min_size=1, max_size=3).map(", ".join),
)
dates = st.sampled_from(list(DATES))


@FEW
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE"]),
    if_match=st.none() | tag_lists,
    if_none_match=st.none() | tag_lists,
    if_unmodified_since=st.none() | dates,
    if_modified_since=st.none() | dates,
    etag=st.sampled_from([None, ETAG, WEAK, '"a,b"']),
    last_modified=st.sampled_from([None, LM, EARLIER, LATER]),
)
def test_precondition_against_model(
    method: str,
    if_match: str | None,
    if_none_match: str | None,
    if_unmodified_since: str | None,
    if_modified_since: str | None,
    etag: str | None,
    last_modified: str | None,
) -> None:
    request = {
        name: value
        for name, value in {
            "if-match": if_match,
            "if-none-match": if_none_match,
            "if-unmodified-since": if_unmodified_since,
            "if-modified-since": if_modified_since,
        }.items()
        if value is not None
    }
    expected = model_precondition(method, request, etag, last_modified)
    assert conditions.precondition(method, request, etag, last_modified) == expected


@FEW
@given(tags=st.lists(st.tuples(st.booleans(), st.text(alphabet="abc, \tW/!#~", max_size=5)), max_size=5))
def test_entity_tags_round_trip(tags: list[tuple[bool, str]]) -> None:
    """Any list of well-formed entity-tags (etagc: anything but DQUOTE) comes back as written."""
    written = [("W/" if weak else "") + f'"{opaque}"' for weak, opaque in tags]
    assert conditions.entity_tags(" , ".join(written)) == written
    assert conditions.entity_tags(",".join(written)) == written


@FEW
@given(header=st.text(max_size=30), etag=st.sampled_from([None, ETAG, WEAK]))
def test_conditions_never_raise(header: str, etag: str | None) -> None:
    for name in ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since"):
        assert conditions.precondition("GET", {name: header}, etag, LM) in (None, 304, 412)
    assert conditions.range_applies(header, etag, LM) in (True, False)
    assert conditions.precondition("GET", {"if-modified-since": LM}, etag, header) in (None, 304)


# --------------------------------------------------------------------------------------------
# representation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("x.css", "text/css; charset=utf-8"),
        ("x.html", "text/html; charset=utf-8"),
        ("x.txt", "text/plain; charset=utf-8"),
        ("dir/x.CSS", "text/css; charset=utf-8"),
        ("x.png", "image/png"),
        ("x.json", "application/json"),
        ("x.css.gz", "application/gzip"),  # a compressed file asked for by name: not text/css
        ("x.tar.gz", "application/gzip"),
        ("x.js.br", "application/x-brotli"),
        ("x.css.br", "application/x-brotli"),
        ("x.txt.bz2", "application/x-bzip2"),
        ("x.txt.xz", "application/x-xz"),
        ("x.unknownext", "application/octet-stream"),
        ("noext", "application/octet-stream"),
        ("x.unknownext.gz", "application/gzip"),
    ],
)
def test_media_type(name: str, expected: str) -> None:
    assert representation.media_type(name) == expected


@pytest.mark.parametrize(
    ("name", "max_age", "expected"),
    [
        ("app.0123abcd.css", None, None),  # max_age=None: no Cache-Control at all
        ("app.0123abcd.css", 60, representation.IMMUTABLE),
        ("app.0123456789ABCDEF.js", 60, representation.IMMUTABLE),
        ("static/app.deadbeef.css.gz", 60, representation.IMMUTABLE),
        ("app.deadbeef.css.br", None, None),
        ("a/b.c/app.deadbeef.js", 60, representation.IMMUTABLE),
        ("app.0123abc.css", 60, "public, max-age=60"),  # 7 hex digits: not a hash
        ("app.0123abcg.css", 60, "public, max-age=60"),  # not hex
        ("app.css", 60, "public, max-age=60"),
        ("app.css.gz", 60, "public, max-age=60"),
        ("app.0123abcd", 60, "public, max-age=60"),  # the hash must precede an extension
        ("0123abcd.css", 60, "public, max-age=60"),
        ("dir.0123abcd.x/app.css", 60, "public, max-age=60"),
        ("app.css", 0, "public, max-age=0"),
        ("app.css", None, None),
        ("app.css.gz", None, None),
    ],
)
def test_cache_control(name: str, max_age: int | None, expected: str | None) -> None:
    assert representation.cache_control(name, max_age) == expected


BOTH = ["br", "gzip"]


@pytest.mark.parametrize(
    ("accept_encoding", "offered", "expected"),
    [
        (None, BOTH, []),
        ("", BOTH, []),
        ("gzip", BOTH, ["gzip"]),
        ("br", BOTH, ["br"]),
        ("gzip, br", BOTH, ["br", "gzip"]),  # equal q: our preference, brotli first
        ("gzip, deflate, br, zstd", BOTH, ["br", "gzip"]),
        ("gzip;q=1.0, br;q=1", BOTH, ["br", "gzip"]),
        ("br;q=0.5, gzip", BOTH, ["gzip", "br"]),  # best q first
        ("gzip;q=0.8,br;q=0.9", BOTH, ["br", "gzip"]),
        ("  gzip ; q=0.8 ,  br ;q=0.9 ", BOTH, ["br", "gzip"]),
        ("gzip;q=0", BOTH, []),  # q=0: not acceptable
        ("gzip;q=0.000, br;q=0.001", BOTH, ["br"]),
        ("br;q=0, gzip", BOTH, ["gzip"]),
        ("*", BOTH, ["br", "gzip"]),
        ("*;q=0", BOTH, []),
        ("*, gzip;q=0", BOTH, ["br"]),
        ("*;q=0.5, gzip", BOTH, ["gzip", "br"]),
        ("*;q=0, br", BOTH, ["br"]),
        ("x-gzip", BOTH, ["gzip"]),  # x-gzip is gzip (12.5.3... 8.4.1.3)
        ("x-gzip;q=0.5, br;q=0.4", BOTH, ["gzip", "br"]),
        ("GZIP, BR", BOTH, ["br", "gzip"]),  # codings are case-insensitive
        ("Gzip;Q=0.5, bR;q=0.6", BOTH, ["br", "gzip"]),
        ("identity", BOTH, []),
        ("deflate", BOTH, []),
        ("gzip;q=abc", BOTH, []),
        ("br, gzip", ["gzip"], ["gzip"]),
        ("br, gzip", [], []),
        (",, gzip ,", BOTH, ["gzip"]),
    ],
)
def test_accepted_encodings(accept_encoding: str | None, offered: list[str], expected: list[str]) -> None:
    assert representation.accepted_encodings(accept_encoding, offered) == expected


@FEW
@given(
    weights=st.dictionaries(
        st.sampled_from(["br", "gzip", "*", "identity", "deflate"]),
        st.sampled_from(["", ";q=0", ";q=0.1", ";q=0.5", ";q=1", ";q=1.0", ";q=0.500"]),
        max_size=5,
    )
)
def test_accepted_encodings_against_model(weights: dict[str, str]) -> None:
    header = ", ".join(coding + params for coding, params in weights.items())

    def q(params: str) -> float:
        return float(params.removeprefix(";q=")) if params else 1.0

    qs = {coding: q(params) for coding, params in weights.items()}
    expected = [
        coding
        for coding in BOTH
        if qs.get(coding, qs.get("*", 0.0)) > 0  # listed, or else covered by "*"
    ]
    expected.sort(key=lambda coding: (-qs.get(coding, qs.get("*", 0.0)), BOTH.index(coding)))
    assert representation.accepted_encodings(header, BOTH) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("app.css", [("br", "app.css.br"), ("gzip", "app.css.gz")]),
        ("/srv/static/app.css", [("br", "/srv/static/app.css.br"), ("gzip", "/srv/static/app.css.gz")]),
        ("noext", [("br", "noext.br"), ("gzip", "noext.gz")]),
        ("app.css.gz", []),
        ("app.css.br", []),
    ],
)
def test_sibling_names(name: str, expected: list[tuple[str, str]]) -> None:
    assert representation.sibling_names(name) == expected


def stat_of(size: int, mtime: float) -> os.stat_result:
    return os.stat_result(
        (0o100644, 1, 1, 1, 0, 0, size, int(mtime), int(mtime), int(mtime)), {"st_mtime": mtime}
    )


@pytest.mark.parametrize(
    ("size", "mtime"),
    [(0, 0.0), (1, 1.0), (123, 784111777.0), (10**12, 1_700_000_000.123456), (5, 1.5e9 + 0.1)],
)
def test_validators_are_starlettes(size: int, mtime: float) -> None:
    headers = FileResponse("unused.txt", stat_result=stat_of(size, mtime)).headers
    assert representation.validators(size, mtime) == (headers["etag"], headers["last-modified"])


@FEW
@given(size=st.integers(0, 2**63), mtime=st.floats(0, 2**33, allow_nan=False))
def test_validators_are_starlettes_property(size: int, mtime: float) -> None:
    headers = FileResponse("unused.txt", stat_result=stat_of(size, mtime)).headers
    etag, last_modified = representation.validators(size, mtime)
    assert (etag, last_modified) == (headers["etag"], headers["last-modified"])
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    assert last_modified == formatdate(mtime, usegmt=True)


def test_validators_of_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(b"hello")
    os.utime(path, (1_600_000_000.25, 1_600_000_000.75))
    found = os.stat(path)
    headers = FileResponse(path, stat_result=found).headers
    assert representation.validators(found.st_size, found.st_mtime) == (
        headers["etag"],
        headers["last-modified"],
    )


# --------------------------------------------------------------------------------------------
# answer.answer
# --------------------------------------------------------------------------------------------

SIZE = 1000
TYPE = "text/plain; charset=utf-8"
BASE = [
    ("content-type", TYPE),
    ("etag", ETAG),
    ("last-modified", LM),
    ("cache-control", "public, max-age=60"),
    ("vary", "Accept-Encoding"),
    ("content-encoding", "gzip"),
    ("content-disposition", 'attachment; filename="x.txt"'),
    ("content-length", "12345"),  # the app's: replaced by the answer's own
]
WHOLE = [*[header for header in BASE if header[0] != "content-length"], ("accept-ranges", "bytes")]


def fixed(value: str = "BOUNDARY") -> Callable[[], str]:
    return lambda: value


def body_length(found: FileAnswer) -> int:
    return sum(part.count if isinstance(part, FileRange) else len(part) for part in found.parts)


def test_answer_plain() -> None:
    found = answer("GET", {}, BASE, SIZE)
    assert found == FileAnswer(200, [*WHOLE, ("content-length", str(SIZE))], [FileRange(0, SIZE)])
    assert found.length == SIZE


def test_answer_plain_lower_case_method() -> None:
    assert answer("get", {"range": "bytes=0-0"}, BASE, SIZE).status == 206


def test_answer_empty_file() -> None:
    assert answer("GET", {}, BASE, 0) == FileAnswer(200, [*WHOLE, ("content-length", "0")], [])


def test_answer_head() -> None:
    found = answer("HEAD", {}, BASE, SIZE)
    assert found == FileAnswer(200, [*WHOLE, ("content-length", str(SIZE))], [])
    assert found.length == SIZE


def test_answer_without_validators() -> None:
    headers = [("content-type", TYPE)]
    found = answer("GET", {"if-none-match": ETAG, "if-modified-since": LATER}, headers, SIZE)
    assert found.status == 200
    assert answer("GET", {"if-none-match": "*"}, headers, SIZE).status == 304


def test_answer_single_range() -> None:
    found = answer("GET", {"range": "bytes=100-199"}, BASE, SIZE)
    assert found == FileAnswer(
        206,
        [*WHOLE, ("content-range", f"bytes 100-199/{SIZE}"), ("content-length", "100")],
        [FileRange(100, 100)],
    )


def test_answer_single_range_head() -> None:
    found = answer("HEAD", {"range": "bytes=-10"}, BASE, SIZE)
    assert found == FileAnswer(
        206, [*WHOLE, ("content-range", f"bytes 990-999/{SIZE}"), ("content-length", "10")], []
    )
    assert found.length == 10


def test_answer_coalesced_ranges_are_one_part() -> None:
    """15.3.7.2: never a multipart answer for what is one range."""
    found = answer("GET", {"range": "bytes=0-9,5-19,20-29"}, BASE, SIZE, boundary=fixed())
    assert found.status == 206
    assert dict(found.headers)["content-range"] == f"bytes 0-29/{SIZE}"
    assert found.parts == [FileRange(0, 30)]


def test_answer_multipart() -> None:
    found = answer("GET", {"range": "bytes=500-599,0-9,-5"}, BASE, SIZE, boundary=fixed())
    part_head = "--BOUNDARY\r\nContent-Type: {}\r\nContent-Range: bytes {}-{}/1000\r\n\r\n"
    assert found.parts == [
        part_head.format(TYPE, 0, 9).encode(),
        FileRange(0, 10),
        b"\r\n" + part_head.format(TYPE, 500, 599).encode(),
        FileRange(500, 100),
        b"\r\n" + part_head.format(TYPE, 995, 999).encode(),
        FileRange(995, 5),
        b"\r\n--BOUNDARY--",
    ]
    fields = dict(found.headers)
    assert found.status == 206
    assert fields["content-type"] == "multipart/byteranges; boundary=BOUNDARY"
    assert [name for name, _ in found.headers].count("content-type") == 1
    assert fields["content-length"] == str(body_length(found))
    assert "content-range" not in fields  # each part has its own
    for name in ("etag", "last-modified", "cache-control", "vary", "content-encoding"):
        assert fields[name] == dict(BASE)[name]


def test_answer_multipart_head() -> None:
    get = answer("GET", {"range": "bytes=0-0,-1"}, BASE, SIZE, boundary=fixed())
    head = answer("HEAD", {"range": "bytes=0-0,-1"}, BASE, SIZE, boundary=fixed())
    assert head == FileAnswer(206, get.headers, [])
    assert head.length == body_length(get)


def test_answer_multipart_default_type() -> None:
    found = answer("GET", {"range": "bytes=0-0,2-2"}, [("etag", ETAG)], 10, boundary=fixed())
    assert b"Content-Type: application/octet-stream\r\n" in found.parts[0]  # type: ignore[operator]


def test_answer_multipart_random_boundary() -> None:
    first = answer("GET", {"range": "bytes=0-0,2-2"}, BASE, 10)
    second = answer("GET", {"range": "bytes=0-0,2-2"}, BASE, 10)
    boundary = dict(first.headers)["content-type"].partition("boundary=")[2]
    assert re.fullmatch(r"[0-9a-f]{26}", boundary)
    assert first.headers != second.headers


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "request_",
    [
        {"if-none-match": ETAG},
        {"if-none-match": WEAK},
        {"if-none-match": "*"},
        {"if-modified-since": LM},
        {"if-none-match": ETAG, "range": "bytes=0-0"},
        {"if-modified-since": LATER, "range": "bytes=0-0,5-5"},
    ],
)
def test_answer_not_modified(method: str, request_: dict[str, str]) -> None:
    """15.4.5: a 304 keeps Cache-Control, Content-Location, Date, ETag, Expires, Vary (and
    Last-Modified) and the app's own headers, nothing of the content: no Content-Type,
    Content-Encoding, Content-Length."""
    headers = [*BASE, ("date", LATER), ("expires", LATER), ("content-location", "/x.txt"), ("x-other", "1")]
    found = answer(method, request_, headers, SIZE)
    assert found.status == 304
    assert found.parts == []
    assert found.headers == [
        ("etag", ETAG),
        ("last-modified", LM),
        ("cache-control", "public, max-age=60"),
        ("vary", "Accept-Encoding"),
        ("date", LATER),
        ("expires", LATER),
        ("content-location", "/x.txt"),
        ("x-other", "1"),
    ]
    assert not {name for name, _ in found.headers} & (BODY_HEADERS | METADATA_HEADERS)
    assert found.length == 0  # no body


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("GET", {"if-match": '"xyz"'}),
        ("GET", {"if-match": WEAK}),
        ("HEAD", {"if-unmodified-since": EARLIER}),
        ("PUT", {"if-none-match": ETAG}),
        ("POST", {"if-none-match": "*"}),
        ("GET", {"if-match": '"xyz"', "range": "bytes=0-0"}),
    ],
)
def test_answer_precondition_failed(method: str, request_: dict[str, str]) -> None:
    found = answer(method, request_, BASE, SIZE)
    assert found == FileAnswer(412, [("content-length", "0")], [])
    assert found.length == 0


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(("header", "size"), [("bytes=1000-", 1000), ("bytes=-0", 1000), ("bytes=0-", 0)])
def test_answer_range_not_satisfiable(method: str, header: str, size: int) -> None:
    found = answer(method, {"range": header}, BASE, size)
    assert found == FileAnswer(416, [("content-range", f"bytes */{size}"), ("content-length", "0")], [])


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("GET", {"range": "items=0-1"}),  # unknown unit
        ("GET", {"range": "bytes=5-1"}),  # invalid
        ("GET", {"range": "bytes=" + ",".join(["0-0"] * (MAX_RANGES + 1))}),
        ("POST", {"range": "bytes=0-0"}),  # range handling is GET's (14.2)
        ("PUT", {"range": "bytes=0-0"}),
        ("GET", {"range": "bytes=0-0", "if-range": '"xyz"'}),  # If-Range fails: whole (13.1.5)
        ("GET", {"range": "bytes=0-0", "if-range": WEAK}),
        ("GET", {"range": "bytes=0-0", "if-range": LATER}),
        ("GET", {"range": "bytes=1000-", "if-range": EARLIER}),  # whole, not 416
        ("GET", {"if-range": ETAG}),  # If-Range without Range: ignored
        ("GET", {"if-modified-since": EARLIER, "if-none-match": '"xyz"'}),
    ],
)
def test_answer_whole(method: str, request_: dict[str, str]) -> None:
    assert answer(method, request_, BASE, SIZE) == FileAnswer(
        200, [*WHOLE, ("content-length", str(SIZE))], [FileRange(0, SIZE)]
    )


@pytest.mark.parametrize("if_range", [ETAG, LM])
def test_answer_if_range_holds(if_range: str) -> None:
    found = answer("GET", {"range": "bytes=0-0", "if-range": if_range}, BASE, SIZE)
    assert (found.status, found.parts) == (206, [FileRange(0, 1)])


@pytest.mark.parametrize("status", [404, 403, 500, 201, 203])
@pytest.mark.parametrize(
    "request_",
    [
        {},
        {"if-none-match": ETAG},
        {"if-modified-since": LATER},
        {"if-match": '"xyz"'},
        {"if-unmodified-since": EARLIER},
        {"range": "bytes=0-0"},
        {"range": "bytes=0-0,5-5"},
        {"range": "bytes=5000-"},
    ],
)
def test_answer_other_status_is_whole(status: int, request_: dict[str, str]) -> None:
    """13.2.1: no preconditions for a response that would not be 2xx; ranges are 200's."""
    assert answer("GET", request_, BASE, SIZE, status=status) == FileAnswer(
        status, [*WHOLE, ("content-length", str(SIZE))], [FileRange(0, SIZE)]
    )
    assert answer("HEAD", request_, BASE, SIZE, status=status) == FileAnswer(
        status, [*WHOLE, ("content-length", str(SIZE))], []
    )


def test_answer_drops_the_apps_range_headers() -> None:
    headers = [("content-type", TYPE), ("content-range", "bytes 0-0/1"), ("accept-ranges", "none")]
    found = answer("GET", {}, headers, SIZE)
    assert found.headers == [
        ("content-type", TYPE),
        ("accept-ranges", "bytes"),
        ("content-length", str(SIZE)),
    ]


range_headers = st.lists(specs_strategy, min_size=1, max_size=6).map(
    lambda specs: "bytes=" + ",".join(render(spec) for spec in specs)
)


@FEW
@given(
    method=st.sampled_from(["GET", "HEAD", "POST"]),
    header=st.none() | range_headers,
    size=st.integers(0, 45),
    if_range=st.sampled_from([None, ETAG, LM, '"xyz"']),
    status=st.sampled_from([200, 200, 200, 404]),
)
def test_answer_length_is_the_parts(
    method: str, header: str | None, size: int, if_range: str | None, status: int
) -> None:
    request = {
        name: value for name, value in (("range", header), ("if-range", if_range)) if value is not None
    }
    found = answer(method, request, BASE, size, status=status, boundary=fixed())
    fields = dict(found.headers)
    assert [name for name, _ in found.headers].count("content-length") == 1
    if method == "HEAD":
        assert found.parts == []
        get = answer("GET", request, BASE, size, status=status, boundary=fixed())
        assert found.headers == get.headers
        assert found.length == body_length(get)
    else:
        assert found.length == body_length(found)
    for part in found.parts:
        if isinstance(part, FileRange):
            assert 0 <= part.offset < part.offset + part.count <= size
    if found.status == 206:
        wanted = byte_ranges(request["range"], size)
        assert wanted
        assert [(p.offset, p.offset + p.count) for p in get_parts(method, request, size)] == wanted
        assert len(wanted) > 1 or fields["content-range"] == f"bytes {wanted[0][0]}-{wanted[0][1] - 1}/{size}"
    elif found.status == 416:
        assert fields["content-range"] == f"bytes */{size}"
    else:
        assert found.status == status


def get_parts(method: str, request: dict[str, str], size: int) -> list[FileRange]:
    found = answer("GET", request, BASE, size, boundary=fixed())
    return [part for part in found.parts if isinstance(part, FileRange)]


# The multipart layout, byte for byte, against Starlette's FileResponse on a real file.

CONTENT = bytes(range(256)) * 4 + b"tail"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    path = tmp_path_factory.mktemp("served") / "x.txt"
    path.write_bytes(CONTENT)
    stat_result = os.stat(path)

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await FileResponse(path, stat_result=stat_result)(scope, receive, send)

    with mock.patch("starlette.responses.token_hex", lambda _: "BOUNDARY"):
        yield TestClient(app), path  # (no lifespan)


def ours(path: Path, method: str, request: dict[str, str]) -> tuple[FileAnswer, bytes]:
    found = os.stat(path)
    etag, last_modified = representation.validators(found.st_size, found.st_mtime)
    headers = [
        ("content-type", representation.media_type(path.name)),
        ("accept-ranges", "bytes"),
        ("content-length", str(found.st_size)),
        ("last-modified", last_modified),
        ("etag", etag),
    ]
    reply = answer(method, request, headers, found.st_size, boundary=fixed())
    data = path.read_bytes()
    body = b"".join(
        data[part.offset : part.offset + part.count] if isinstance(part, FileRange) else part
        for part in reply.parts
    )
    return reply, body


def compare(client: TestClient, path: Path, request: dict[str, str]) -> None:
    theirs = client.get("/", headers=request)
    reply, body = ours(path, "GET", request)
    assert reply.status == theirs.status_code
    assert body == theirs.content
    assert reply.length == len(body) == int(theirs.headers["content-length"])
    fields = dict(reply.headers)
    for name in ("content-type", "content-range", "etag", "last-modified", "accept-ranges"):
        assert fields.get(name) == theirs.headers.get(name), name


@pytest.mark.parametrize(
    "request_",
    [
        {},
        {"range": "bytes=0-0"},
        {"range": "bytes=-4"},
        {"range": "bytes=100-"},
        {"range": "bytes=0-0,-1"},
        {"range": "bytes=0-9, 20-29, 1000-1027"},
        {"range": "bytes=20-29,0-9"},
        {"range": "bytes=0-9,5-14,100-109"},
        {"range": "bytes=0-99,100-199,300-399"},
    ],
)
def test_answer_lays_out_as_starlette(served: tuple[TestClient, Path], request_: dict[str, str]) -> None:
    compare(*served, request_)


@SOME
@given(
    spans=st.lists(
        st.one_of(
            st.tuples(st.integers(0, len(CONTENT) - 1), st.integers(0, 60)).map(
                lambda pair: f"{pair[0]}-{min(pair[0] + pair[1], len(CONTENT) - 1)}"
            ),
            st.integers(0, len(CONTENT) - 1).map(lambda start: f"{start}-"),
            st.integers(1, 2 * len(CONTENT)).map(lambda length: f"-{length}"),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_answer_lays_out_as_starlette_property(served: tuple[TestClient, Path], spans: list[str]) -> None:
    compare(*served, {"range": "bytes=" + ", ".join(spans)})


def test_answer_head_as_starlette(served: tuple[TestClient, Path]) -> None:
    client, path = served
    for request in ({}, {"range": "bytes=0-0"}, {"range": "bytes=0-0,5-9"}):
        theirs = client.head("/", headers=request)
        reply, body = ours(path, "HEAD", request)
        assert (reply.status, body) == (theirs.status_code, b"")
        assert reply.length == int(theirs.headers["content-length"])
        assert dict(reply.headers).get("content-type") == theirs.headers["content-type"]


# --------------------------------------------------------------------------------------------
# handoff.Handoff
# --------------------------------------------------------------------------------------------


def test_from_environ_unset() -> None:
    assert Handoff.from_environ({}) is None
    assert Handoff.from_environ({XSENDFILE_ROOTS: "", ACCEL_REDIRECT: ""}) is None
    assert Handoff.from_environ({XSENDFILE_ROOTS: " : ", ACCEL_REDIRECT: " , "}) is None
    assert Handoff.from_environ({"OTHER": "/x"}) is None


def test_from_environ_roots(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "b")
    found = Handoff.from_environ({XSENDFILE_ROOTS: f" {tmp_path}/a : {tmp_path}/link/ "})
    assert found == Handoff((os.path.realpath(tmp_path / "a"), os.path.realpath(tmp_path / "b")), ())


def test_from_environ_locations_longest_first(tmp_path: Path) -> None:
    real = os.path.realpath(tmp_path)
    found = Handoff.from_environ(
        {ACCEL_REDIRECT: f"/a/={tmp_path}/x/, /a/b/={tmp_path}/y/,/c/={tmp_path}/z, /a/bc/={tmp_path}"}
    )
    assert found is not None
    assert found.sendfile_roots == ()
    assert found.locations == (
        ("/a/bc/", real),
        ("/a/b/", f"{real}/y"),
        ("/a/", f"{real}/x"),
        ("/c/", f"{real}/z"),
    )


@pytest.mark.parametrize(
    "environ",
    [
        {XSENDFILE_ROOTS: "relative/dir"},
        {XSENDFILE_ROOTS: "/abs:relative"},
        {XSENDFILE_ROOTS: "."},
        {ACCEL_REDIRECT: "/p/=relative/"},
        {ACCEL_REDIRECT: "/p/"},  # no '='
        {ACCEL_REDIRECT: "/p/:/srv"},
        {ACCEL_REDIRECT: "p/=/srv/"},  # not a URI path
        {ACCEL_REDIRECT: "=/srv/"},
        {ACCEL_REDIRECT: "/p/=/srv/,/q/"},
        {ACCEL_REDIRECT: "/p/="},
    ],
)
def test_from_environ_malformed(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Handoff.from_environ(environ)


def test_named_only_configured() -> None:
    both = [("X-Sendfile", "/srv/a"), ("X-Accel-Redirect", "/p/a")]
    sendfile = Handoff(("/srv",), ())
    accel = Handoff((), (("/p/", "/srv"),))
    assert sendfile.named(both) == (X_SENDFILE, "/srv/a")
    assert sendfile.named(both[1:]) is None
    assert accel.named(both) == (X_ACCEL_REDIRECT, "/p/a")
    assert accel.named(both[:1]) is None
    assert Handoff(("/srv",), (("/p/", "/srv"),)).named(both) == (X_SENDFILE, "/srv/a")
    assert Handoff(("/srv",), (("/p/", "/srv"),)).named(both[::-1]) == (X_ACCEL_REDIRECT, "/p/a")
    assert Handoff().named(both) is None
    assert sendfile.named([]) is None
    assert sendfile.named([("content-type", "text/plain"), ("x-sendfile", "/srv/b")]) == (
        X_SENDFILE,
        "/srv/b",
    )
    assert accel.named([("X-ACCEL-REDIRECT", "/p/a")]) == (X_ACCEL_REDIRECT, "/p/a")


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Handoff, Path, Path]:
    """root/{a.txt, c d.txt, sub/b.txt, links}; outside/secret.txt beside it; root2 (a name
    that starts like root's)."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (tmp_path / "root2").mkdir()
    (root / "a.txt").write_bytes(b"a")
    (root / "c d.txt").write_bytes(b"cd")
    (root / "%2e%2e").write_bytes(b"literal")
    (root / "sub" / "b.txt").write_bytes(b"b")
    (outside / "secret.txt").write_bytes(b"secret")
    (tmp_path / "root2" / "f.txt").write_bytes(b"f")
    (root / "link_in").symlink_to(root / "a.txt")
    (root / "sub" / "link_up").symlink_to("../a.txt")
    (root / "link_out").symlink_to("../outside/secret.txt")
    (root / "dir_out").symlink_to(outside)
    (root / "dangling").symlink_to(root / "missing.txt")
    (root / "loop").symlink_to(root / "loop")
    os.mkfifo(root / "fifo")
    handoff = Handoff.from_environ(
        {XSENDFILE_ROOTS: str(root), ACCEL_REDIRECT: f"/protected/={root}/,/protected/deep/={root}/sub/"}
    )
    assert handoff is not None
    return handoff, Path(os.path.realpath(root)), Path(os.path.realpath(outside))


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (X_SENDFILE, "{root}/a.txt", "a.txt"),
        (X_SENDFILE, "{root}/sub/b.txt", "sub/b.txt"),
        (X_SENDFILE, "{root}/sub/../a.txt", "a.txt"),  # '..' that stays inside
        (X_SENDFILE, "{root}//sub/./b.txt", "sub/b.txt"),
        (X_SENDFILE, "{root}/link_in", "a.txt"),  # a symlink inside: its target's real path
        (X_SENDFILE, "{root}/sub/link_up", "a.txt"),
        (X_SENDFILE, "{root}/c d.txt", "c d.txt"),
        (X_SENDFILE, "{root}/%2e%2e", "%2e%2e"),  # X-Sendfile is a path, not percent-encoded
        (X_ACCEL_REDIRECT, "/protected/a.txt", "a.txt"),
        (X_ACCEL_REDIRECT, "/protected//a.txt", "a.txt"),
        (X_ACCEL_REDIRECT, "/protected/sub/b.txt", "sub/b.txt"),
        (X_ACCEL_REDIRECT, "/protected/sub%2fb.txt", "sub/b.txt"),  # an encoded slash is a slash
        (X_ACCEL_REDIRECT, "/protected/sub%2Fb.txt", "sub/b.txt"),
        (X_ACCEL_REDIRECT, "/protected/c%20d.txt", "c d.txt"),
        (X_ACCEL_REDIRECT, "/protected/%61.txt", "a.txt"),
        (X_ACCEL_REDIRECT, "/protected/%252e%252e", "%2e%2e"),  # decoded once
        (X_ACCEL_REDIRECT, "/protected/a.txt?download=1", "a.txt"),  # query string stripped
        (X_ACCEL_REDIRECT, "/protected/a.txt?x=../../outside/secret.txt", "a.txt"),
        (X_ACCEL_REDIRECT, "/protected/a.txt#part", "a.txt"),
        (X_ACCEL_REDIRECT, "/protected/sub/../a.txt", "a.txt"),
        (X_ACCEL_REDIRECT, "/protected/link_in", "a.txt"),
        (X_ACCEL_REDIRECT, "/protected/deep/b.txt", "sub/b.txt"),  # the longest prefix
    ],
)
def test_target_found(tree: tuple[Handoff, Path, Path], name: str, value: str, expected: str) -> None:
    handoff, root, _ = tree
    found = handoff.target(name, value.format(root=root))
    assert found.path == str(root / expected)
    assert found.stat.st_size == (root / expected).stat().st_size
    assert found.stat.st_ino == (root / expected).stat().st_ino


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (X_SENDFILE, "{root}/../outside/secret.txt"),  # '..' out
        (X_SENDFILE, "{root}/sub/../../outside/secret.txt"),
        (X_SENDFILE, "{outside}/secret.txt"),  # outside the roots altogether
        (X_SENDFILE, "{root}2/f.txt"),  # root2 is not inside root
        (X_SENDFILE, "{root}/link_out"),  # a symlink leading out
        (X_SENDFILE, "{root}/dir_out/secret.txt"),
        (X_SENDFILE, "{root}/missing.txt"),
        (X_SENDFILE, "{root}/dangling"),
        (X_SENDFILE, "{root}/loop"),
        (X_SENDFILE, "{root}"),  # a directory
        (X_SENDFILE, "{root}/sub"),
        (X_SENDFILE, "{root}/sub/"),
        (X_SENDFILE, "{root}/fifo"),  # not a regular file
        (X_SENDFILE, "{root}/a.txt\0"),  # NUL
        (X_SENDFILE, "{root}/a.txt\0/../a.txt"),
        (X_SENDFILE, "a.txt"),  # relative: refused, whatever the working directory
        (X_SENDFILE, "root/a.txt"),
        (X_SENDFILE, "../root/a.txt"),
        (X_SENDFILE, ""),
        (X_ACCEL_REDIRECT, "/protected/../outside/secret.txt"),
        (X_ACCEL_REDIRECT, "/protected/%2e%2e/outside/secret.txt"),  # '..' percent-encoded
        (X_ACCEL_REDIRECT, "/protected/%2E%2E/outside/secret.txt"),
        (X_ACCEL_REDIRECT, "/protected/.%2e/outside/secret.txt"),
        (X_ACCEL_REDIRECT, "/protected/..%2foutside%2fsecret.txt"),  # encoded slashes too
        (X_ACCEL_REDIRECT, "/protected/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
        (X_ACCEL_REDIRECT, "/protected/sub/%2e%2e/%2e%2e/outside/secret.txt"),
        (X_ACCEL_REDIRECT, "/protected/deep/../../outside/secret.txt"),
        (X_ACCEL_REDIRECT, "/protected/%2f..%2foutside/secret.txt"),
        (X_ACCEL_REDIRECT, "/protected/link_out"),
        # each location is its own directory: out of root/sub into root is out
        (X_ACCEL_REDIRECT, "/protected/deep/../a.txt"),
        (X_ACCEL_REDIRECT, "/protected/deep/link_up"),
        (X_ACCEL_REDIRECT, "/protected/dir_out/secret.txt"),
        (X_ACCEL_REDIRECT, "/protected/missing.txt"),
        (X_ACCEL_REDIRECT, "/protected/"),  # the directory itself
        (X_ACCEL_REDIRECT, "/protected"),
        (X_ACCEL_REDIRECT, "/protected/sub"),
        (X_ACCEL_REDIRECT, "/protected/fifo"),
        (X_ACCEL_REDIRECT, "/protected/a.txt%00"),  # NUL, encoded
        (X_ACCEL_REDIRECT, "/protected/a.txt%00.png"),
        (X_ACCEL_REDIRECT, "/protected/%ff"),  # not UTF-8 once decoded
        (X_ACCEL_REDIRECT, "/protected/a%C3.txt"),
        (X_ACCEL_REDIRECT, "/protectedX/a.txt"),  # under no prefix
        (X_ACCEL_REDIRECT, "/other/a.txt"),
        (X_ACCEL_REDIRECT, "protected/a.txt"),
        (X_ACCEL_REDIRECT, "{root}/a.txt"),  # a file path is not a URI under a prefix
        (X_ACCEL_REDIRECT, ""),
        (X_ACCEL_REDIRECT, "?/protected/a.txt"),
    ],
)
def test_target_refused(tree: tuple[Handoff, Path, Path], name: str, value: str) -> None:
    handoff, root, outside = tree
    with pytest.raises(Refused):
        handoff.target(name, value.format(root=root, outside=outside))


def test_target_unconfigured(tree: tuple[Handoff, Path, Path]) -> None:
    _, root, _ = tree
    with pytest.raises(Refused):
        Handoff((), (("/protected/", str(root)),)).target(X_SENDFILE, str(root / "a.txt"))
    with pytest.raises(Refused):
        Handoff((str(root),), ()).target(X_ACCEL_REDIRECT, "/protected/a.txt")


def test_target_relative_to_working_directory(
    tree: tuple[Handoff, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative X-Sendfile is refused even when it would resolve to a file inside a root."""
    handoff, root, _ = tree
    monkeypatch.chdir(root)
    with pytest.raises(Refused, match="not an absolute path"):
        handoff.target(X_SENDFILE, "a.txt")


def test_target_root_is_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.txt").write_bytes(b"a")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    handoff = Handoff.from_environ(
        {XSENDFILE_ROOTS: str(tmp_path / "alias"), ACCEL_REDIRECT: f"/p/={tmp_path}/alias"}
    )
    assert handoff is not None
    real = os.path.realpath(tmp_path / "real" / "a.txt")
    assert handoff.target(X_SENDFILE, str(tmp_path / "alias" / "a.txt")).path == real
    assert handoff.target(X_SENDFILE, str(tmp_path / "real" / "a.txt")).path == real
    assert handoff.target(X_ACCEL_REDIRECT, "/p/a.txt").path == real


def test_target_filesystem_root(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"a")
    handoff = Handoff(("/",), (("/all/", "/"),))
    real = os.path.realpath(tmp_path / "a.txt")
    assert handoff.target(X_SENDFILE, str(tmp_path / "a.txt")).path == real
    assert handoff.target(X_ACCEL_REDIRECT, f"/all{tmp_path}/a.txt").path == real


@SOME
@given(
    segments=st.lists(
        st.sampled_from(
            ["..", ".", "%2e%2e", "%2E.", "sub", "a.txt", "%2f", "", "outside", "secret.txt", "link_out"]
        ),
        min_size=1,
        max_size=7,
    )
)
def test_target_never_leaves_the_root(tree: tuple[Handoff, Path, Path], segments: list[str]) -> None:
    """Whatever the path, a target is a regular file inside the root, or Refused."""
    handoff, root, _ = tree
    for name, value in (
        (X_ACCEL_REDIRECT, "/protected/" + "/".join(segments)),
        (X_SENDFILE, f"{root}/" + "/".join(segments)),
    ):
        try:
            found = handoff.target(name, value)
        except Refused:
            continue
        assert os.path.commonpath([found.path, str(root)]) == str(root)
        assert Path(found.path).is_file()
        assert os.path.realpath(found.path) == found.path


# ---- review follow-ups: dates are not hashes, suffixes by any case, weights by the grammar -----


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.20240101.pdf", "public, max-age=60"),  # a date: all digits
        ("release.12345678.tar", "public, max-age=60"),
        ("app.1234567a.js", representation.IMMUTABLE),
        ("app.3F2A9C1B.js", representation.IMMUTABLE),
    ],
)
def test_cache_control_needs_a_hex_letter(name: str, expected: str) -> None:
    assert representation.cache_control(name, 60) == expected


def test_a_compressed_suffix_in_any_case_has_no_siblings() -> None:
    assert representation.sibling_names("app.css.GZ") == []
    assert representation.sibling_names("app.css.Br") == []
    assert representation.media_type("app.css.GZ") == "application/gzip"


@pytest.mark.parametrize("weight", ["2", "inf", "1e3", "-1", "0.5000", "1.5", "nan", ""])
def test_a_weight_outside_the_grammar_is_not_acceptable(weight: str) -> None:
    assert representation.accepted_encodings(f"br;q={weight}, gzip", ["br", "gzip"]) == ["gzip"]


@pytest.mark.parametrize("weight", ["0.5", "1", "1.000", "0.001", "1."])
def test_a_weight_by_the_grammar(weight: str) -> None:
    assert representation.accepted_encodings(f"br;q={weight}", ["br", "gzip"]) == ["br"]


def test_a_location_without_its_slash_is_still_a_directory(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    handoff = Handoff(locations=(("/p", str(tmp_path.resolve())),))
    assert handoff.target("x-accel-redirect", "/p/a.txt").path == str((tmp_path / "a.txt").resolve())
    with pytest.raises(Refused):
        handoff.target("x-accel-redirect", "/pa.txt")


@pytest.mark.parametrize(
    ("request_", "status"),
    [({"if-none-match": ETAG}, 304), ({"if-match": '"xyz"'}, 412), ({"range": "bytes=99999-"}, 416)],
)
def test_the_apps_own_headers_on_every_status(request_: dict[str, str], status: int) -> None:
    own = [("set-cookie", "s=1"), ("x-request-id", "42"), ("access-control-allow-origin", "*")]
    found = answer("GET", request_, [*BASE, *own], SIZE)
    assert found.status == status
    assert [(name, value) for name, value in found.headers if name in dict(own)] == own
    if status != 304:
        assert not {name for name, _ in found.headers} & {"etag", "last-modified", "cache-control", "vary"}


# ---- review follow-ups: what was opened is what was checked; names as the app gave them --------


def test_a_name_swapped_for_a_symlink_after_the_check_is_refused(tree: tuple[Handoff, Path, Path]) -> None:
    handoff, root, outside = tree
    target = handoff.target("x-sendfile", str(root / "a.txt"))
    (root / "a.txt").unlink()
    (root / "a.txt").symlink_to(outside / "secret.txt")  # between the check and the open
    with pytest.raises(Refused):
        open_target(target)


def test_a_directory_swapped_for_a_symlink_after_the_check_is_refused(
    tree: tuple[Handoff, Path, Path],
) -> None:
    handoff, root, outside = tree
    target = handoff.target("x-sendfile", str(root / "sub" / "b.txt"))
    (outside / "b.txt").write_bytes(b"outside")
    (root / "sub").rename(root / "sub-moved")
    (root / "sub").symlink_to(outside)  # the way to the name now leads outside
    with pytest.raises(Refused, match="outside"):
        open_target(target)


def test_what_was_checked_is_opened(tree: tuple[Handoff, Path, Path]) -> None:
    handoff, root, _ = tree
    with open_target(handoff.target("x-sendfile", str(root / "link_in"))) as file:
        assert file.read() == b"a"


def test_the_media_type_is_the_requested_names(tree: tuple[Handoff, Path, Path]) -> None:
    handoff, root, _ = tree
    (root / "blob").write_bytes(b"%PDF-1.7")
    (root / "report.pdf").symlink_to(root / "blob")  # content-addressed storage
    handed = hand_off(handoff, ("x-accel-redirect", "/protected/report.pdf"), "GET", {}, 200, [])
    assert handed.file is not None
    handed.file.close()
    assert ("content-type", "application/pdf") in handed.answer.headers


def test_an_x_sendfile_name_is_the_file_systems_bytes(tree: tuple[Handoff, Path, Path]) -> None:
    handoff, root, _ = tree
    (root / "ł.txt").write_bytes(b"l")
    as_latin1 = str(root / "ł.txt").encode().decode("latin-1")  # how ASGI and WSGI carry its bytes
    assert handoff.target("x-sendfile", as_latin1).path == str(root / "ł.txt")
    assert handoff.target("x-sendfile", str(root / "ł.txt")).path == str(root / "ł.txt")  # a str app
    accel = "/protected/" + "ł.txt".encode().decode("latin-1")  # raw UTF-8, not percent-encoded
    assert handoff.target("x-accel-redirect", accel).path == str(root / "ł.txt")


def test_a_symlink_loop_is_refused_not_raised(tree: tuple[Handoff, Path, Path]) -> None:
    handoff, root, _ = tree
    with pytest.raises(Refused):
        handoff.target("x-sendfile", str(root / "loop"))


def test_every_handoff_header_is_dropped_whichever_is_honoured() -> None:
    from fastbody.integrations.files.handoff import without_handoff

    headers = [("X-Sendfile", "/a"), ("X-Accel-Redirect", "/p/a"), ("Set-Cookie", "s=1")]
    assert without_handoff(headers) == [("Set-Cookie", "s=1")]
    raw = [(b"x-sendfile", b"/a"), (b"X-ACCEL-REDIRECT", b"/p/a"), (b"etag", b'"x"')]
    assert without_handoff(raw) == [(b"etag", b'"x"')]
