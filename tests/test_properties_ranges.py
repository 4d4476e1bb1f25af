"""Properties of fastbody's Range and If-Range answers against Starlette's on the same file.

One Starlette app, under Starlette's ``TestClient`` (the decisions are under test here, not the
byte paths: those are ``test_zerocopy_response.py``'s), serves the same files four ways:
``ZeroCopyResponse(path)`` and ``FileResponse(path)``, fastbody's ``StaticFiles`` and
Starlette's. Each example asks both pairs the same request (GET or HEAD; a Range header built
from RFC 9110 14.1.1's grammar, valid or not: single, multiple, overlapping, suffix, open, out
of bounds, huge numbers, empty list elements, other units, malformed elements; an If-Range of
the file's ETag, its Last-Modified, a weak or stale one, garbage), and compares the status,
Content-Range, Content-Length and the body (a multipart body by its parts' ranges and bytes, not
its boundary).

The header is generated from its parts, so the test knows what RFC 9110 makes of it (``Meant``);
fastbody's answer must be exactly that, and Starlette's must be the same, except in the classes
where fastbody deliberately answers otherwise (README, ``integrations/files/ranges.py``): each is
asserted exactly where it is decided, in ``expected_difference``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles as StarletteStaticFiles
from starlette.testclient import TestClient

from fastbody.integrations.files.ranges import MAX_RANGES
from fastbody.integrations.starlette import StaticFiles, ZeroCopyResponse

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BIG = settings(PROPERTY, max_examples=1500)
SIZES = {"empty.bin": 0, "one.bin": 1, "small.bin": 100, "big.bin": 70_000}  # big: > one 64 KiB read
NAMES = st.sampled_from(["empty.bin", "one.bin", "small.bin", "small.bin", "big.bin", "big.bin"])
PAIRS = [("/ours/", "/theirs/"), ("/static-ours/", "/static-theirs/")]


# ---- the app, the files ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ranges")
    rng = random.Random(13)
    for name, size in SIZES.items():
        (root / name).write_bytes(rng.randbytes(size))
    return root


@pytest.fixture(scope="module")
def client(root: Path) -> Iterator[TestClient]:
    async def ours(request: Request) -> Response:
        return ZeroCopyResponse(root / request.path_params["name"])

    async def theirs(request: Request) -> Response:
        return FileResponse(root / request.path_params["name"])

    app = Starlette(
        routes=[
            Route("/ours/{name}", ours, methods=["GET", "HEAD"]),
            Route("/theirs/{name}", theirs, methods=["GET", "HEAD"]),
            Mount("/static-ours", StaticFiles(directory=root)),
            Mount("/static-theirs", StarletteStaticFiles(directory=root)),
        ]
    )
    with TestClient(app) as client:
        yield client


# ---- the Range headers, from their parts -------------------------------------------------------


@dataclass
class Meant:
    """What RFC 9110 14.1.1/14.2 makes of a generated header, known from how it was built."""

    text: str
    valid: bool = True  # the ranges-specifier grammar, a range unit of "bytes", first <= last
    specs: list[tuple[int | None, int | None]] = field(default_factory=list)  # (first, last) / (None, suffix)
    elements: int = 0  # list elements, empty ones too (Starlette counts these)
    malformed: int = 0  # elements that are no range-spec at all ("abc", "0 -5")

    def ranges(self, size: int) -> list[tuple[int, int]] | None:
        """Half-open ranges to send, merged; [] for 416; None for the whole file (200)."""
        if not self.valid or not self.specs or len(self.specs) > MAX_RANGES:
            return None  # ignored: not a header this server can use (RFC 9110 14.2 allows it)
        wanted = []
        for first, last in self.specs:
            if first is None:  # a suffix
                assert last is not None
                if last > 0 and size > 0:
                    wanted.append((max(size - last, 0), size))
            elif first < size:
                wanted.append((first, size if last is None else min(last + 1, size)))
        if not wanted and size == 0 and any(f is None and last for f, last in self.specs):
            return None  # a suffix of nothing: satisfiable, nothing to cut: the whole (empty) file
        merged: list[tuple[int, int]] = []
        for start, end in sorted(wanted):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

    def unsatisfiable_part(self, size: int) -> bool:
        """Whether some spec is unsatisfiable (a first-pos past the end, a zero suffix)."""
        return any((f is None and not last) or (f is not None and f >= size) for f, last in self.specs)


@st.composite
def number(draw: st.DrawFn) -> int:
    """A range bound: mostly within the small files, sometimes within the big one, sometimes
    past any size (and past 2**63)."""
    which = draw(st.integers(0, 9))
    if which < 7:
        return draw(st.integers(0, 120))
    return draw(st.integers(0, 80_000) if which < 9 else st.integers(10**18, 10**30))


NUMBER = number()
OWS = st.sampled_from(["", "", "", " ", "\t", "  "])
BAD_ELEMENTS = st.sampled_from(
    [
        "abc",
        "-",
        "5",
        "0 -5",
        "0- 5",
        "+5-6",
        "5--6",
        "0x1-2",
        "\xb2-6",
        "-5-",
        "1-2-3",
        "5-+6",
        "5_0-60",
        "=5",
    ]
)


@st.composite
def range_headers(draw: st.DrawFn) -> Meant:
    meant = Meant("")
    unit = draw(st.sampled_from(["bytes"] * 40 + ["Bytes", "BYTES", "items", "byte", "", "bytes2", "none"]))
    meant.valid = unit.lower() == "bytes"
    # (Whitespace before "=" is outside the grammar, but both strip the unit: not a difference.)
    equals = draw(st.sampled_from(["="] * 30 + ["", " ="]))
    meant.valid = meant.valid and equals != ""
    texts = []
    if draw(st.integers(0, 19)) == 0:  # about MAX_RANGES elements, a few empty ones among them
        cheap = [("0-0", (0, 0)), ("7-", (7, None)), ("-1", (None, 1)), ("50-60", (50, 60)), ("", None)]
        for text, spec in draw(
            st.lists(st.sampled_from(cheap), min_size=MAX_RANGES - 2, max_size=MAX_RANGES + 3)
        ):
            texts.append(text)
            if spec is not None:
                meant.specs.append(spec)
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 2, 2, 3, 3, 4, 5]))):
        kinds = ["int"] * 12 + ["open"] * 3 + ["suffix"] * 4 + ["empty", "bad", "reversed"]
        after = [spec for spec in meant.specs if spec[0] is not None]
        kind = draw(st.sampled_from(kinds + ["next"] * 12 if after else kinds))
        if kind == "next":  # adjacent to, or overlapping, or inside the range before it
            first_before, last_before = after[-1]
            assert first_before is not None
            end_before = first_before + 10 if last_before is None else last_before
            first = max(end_before + draw(st.sampled_from([1, 1, 0, -1, -3])), 0)
            kind = "int"
        else:
            first = draw(NUMBER)
        if kind in ("int", "open", "reversed"):
            if kind == "open":
                last = None
            elif kind == "int":
                last = first + draw(st.integers(0, 30) if draw(st.integers(0, 3)) else st.integers(0, 400))
            else:
                last = first - draw(st.integers(1, 10)) if first else None
                meant.valid = meant.valid and last is None  # first > last: invalid (14.1.1)
            zeros = "0" * draw(st.sampled_from([0] * 8 + [1, 3]))
            text = f"{zeros}{first}-" + ("" if last is None else str(last))
            meant.specs.append((first, last))
        elif kind == "suffix":
            length = draw(st.one_of(st.integers(0, 200), NUMBER))
            text = f"-{length}"
            meant.specs.append((None, length))
        elif kind == "empty":
            text = ""
        else:
            text = draw(BAD_ELEMENTS)
            meant.valid, meant.malformed = False, meant.malformed + 1
        texts.append(draw(OWS) + text + draw(OWS))
    meant.elements = len(texts)
    meant.text = unit + equals + ",".join(texts)
    return meant


IF_RANGES = st.sampled_from(
    ["none"] * 12
    + ["etag", "etag", "last-modified", "last-modified", "weak", "stale etag", "stale date"]
    + ["garbage", "empty"]
)


def if_range(kind: str, etag: str, last_modified: str) -> str | None:
    return {
        "none": None,
        "etag": etag,
        "last-modified": last_modified,
        "weak": "W/" + etag,
        "stale etag": '"0123456789abcdef"',
        "stale date": formatdate(0, usegmt=True),
        "garbage": "abc, def",
        "empty": "",
    }[kind]


# ---- the answers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Got:
    status: int
    content_range: str | None
    content_length: str | None
    body: Any  # bytes; a multipart body: a tuple of (first, last, size, bytes) per part


def parts(body: bytes, content_type: str) -> tuple[tuple[int, int, int, bytes], ...]:
    """A ``multipart/byteranges`` body read strictly: each part's length from its Content-Range."""
    kind, _, boundary = content_type.partition("; boundary=")
    assert kind == "multipart/byteranges", content_type
    delimiter = b"--" + boundary.encode()
    found: list[tuple[int, int, int, bytes]] = []
    at = 0
    while True:
        assert body[at : at + len(delimiter)] == delimiter, (at, body[at : at + 80])
        at += len(delimiter)
        if body[at:] == b"--":
            return tuple(found)
        assert body[at : at + 2] == b"\r\n"
        head_end = body.index(b"\r\n\r\n", at)
        match = re.search(rb"(?im)^content-range: bytes (\d+)-(\d+)/(\d+)$", body[at + 2 : head_end])
        assert match, body[at:head_end]
        first, last, size = map(int, match.groups())
        start = head_end + 4
        found.append((first, last, size, body[start : start + last - first + 1]))
        at = start + last - first + 1
        assert body[at : at + 2] == b"\r\n"
        at += 2


def got(client: TestClient, method: str, url: str, headers: dict[str, str]) -> Got:
    # (As bytes: a header is latin-1 on the wire, and httpx would encode a str as ASCII.)
    answer = client.request(method, url, headers={k: v.encode("latin-1") for k, v in headers.items()})
    length = answer.headers.get("content-length")
    body: Any = answer.content
    if method == "GET":
        assert length is None or int(length) == len(body), (url, headers, length, len(body))
    content_type = answer.headers.get("content-type", "")
    if answer.status_code == 206 and content_type.startswith("multipart/") and method == "GET":
        body = parts(body, content_type)
    return Got(answer.status_code, answer.headers.get("content-range"), length, body)


def as_meant(meant: list[tuple[int, int]] | None, data: bytes, method: str) -> Got:
    """fastbody's answer, exactly, for what RFC 9110 makes of the request."""
    size = len(data)
    if meant is None:
        return Got(200, None, str(size), b"" if method == "HEAD" else data)
    if not meant:
        return Got(416, f"bytes */{size}", "0", b"")
    if len(meant) == 1:
        ((start, end),) = meant
        body = b"" if method == "HEAD" else data[start:end]
        return Got(206, f"bytes {start}-{end - 1}/{size}", str(end - start), body)
    # Multipart: its length is the body's (checked in got); the parts are what matter.
    pieces = tuple((start, end - 1, size, data[start:end]) for start, end in meant)
    return Got(206, None, None, b"" if method == "HEAD" else pieces)


def same_but_length(ours: Got, expected: Got) -> bool:
    """``ours`` is ``expected``; a multipart answer's Content-Length is its body's (any number)."""
    if expected.status == 206 and expected.content_range is None:
        return (ours.status, ours.content_range, ours.body) == (expected.status, None, expected.body)
    return ours == expected


def expected_difference(meant: Meant, applies: bool, data: bytes, theirs: Got, method: str) -> str | None:
    """The documented difference this request falls in, with Starlette's side of it checked
    exactly; None where both must answer alike."""
    size = len(data)
    if not applies:
        return None  # an If-Range that does not match: both send the whole file
    if not meant.text.lower().replace(" =", "=").startswith("bytes="):
        # README: "a Range it cannot parse or in another unit is ignored (200, where FileResponse
        # says 400)".
        assert theirs.status == 400, theirs
        return "another unit, or no '=': 200; Starlette 400"
    if meant.elements > MAX_RANGES:
        # Starlette sends the whole file for more than 100 list elements, empty ones counted
        # (count(",") + 1 > max_ranges); ranges.py counts range-specs (MAX_RANGES) and answers the
        # header by RFC 9110 when there are no more than that.
        assert theirs == as_meant(None, data, method), theirs
        return None if meant.ranges(size) is None else "over 100 list elements, not 100 ranges"
    if not meant.valid or not meant.specs:
        # README and ranges.py: a header that does not parse (bytes=abc, bytes=5-1) is ignored
        # (200): an invalid range-spec makes the whole header invalid, and so does an empty
        # list. Starlette answers 400, or, skipping the elements it cannot read (its int() also
        # reads "+5", "5_0", "\u0665"), 206 or 416 for the rest.
        nothing = not meant.specs and not meant.malformed  # "bytes=", "bytes=,": no element at all
        assert theirs.status in ((400,) if nothing else (400, 206, 416)), theirs
        return f"an invalid header: 200; Starlette {theirs.status}"
    if size == 0 and meant.ranges(size) is None:
        # ranges.py: "a suffix of an empty representation (bytes=-5)" is sent whole (200), as
        # nginx does (satisfiable by RFC 9110 14.1.1, but nothing to cut); Starlette: 416.
        assert (theirs.status, theirs.content_range) == (416, "bytes */0"), theirs
        return "a suffix of an empty file: 200; Starlette 416"
    if meant.ranges(size) and meant.unsatisfiable_part(size):
        # ranges.py: 416 only when no range overlaps the file (RFC 9110 14.1.1: the satisfiable
        # ones are served); Starlette answers 416 when any one first-pos is past the end.
        assert (theirs.status, theirs.content_range) == (416, f"bytes */{size}"), theirs
        return "an unsatisfiable range among satisfiable ones: 206; Starlette 416"
    return None


VALIDATORS: dict[str, tuple[str, str]] = {}


def validators(client: TestClient, name: str) -> tuple[str, str]:
    """The file's ETag and Last-Modified as FileResponse gives them (fastbody gives the same)."""
    if name not in VALIDATORS:
        answer = client.head(f"/theirs/{name}")
        VALIDATORS[name] = answer.headers["etag"], answer.headers["last-modified"]
    return VALIDATORS[name]


def check(client: TestClient, root: Path, name: str, meant: Meant, if_range_kind: str, method: str) -> str:
    data = (root / name).read_bytes()
    size = len(data)
    etag, last_modified = validators(client, name)
    condition = if_range(if_range_kind, etag, last_modified)
    headers = {"range": meant.text}
    if condition is not None:
        headers["if-range"] = condition
    applies = condition is None or condition in (etag, last_modified)
    expected = as_meant(meant.ranges(size) if applies else None, data, method)
    verdicts = set()
    for mine, starlette in PAIRS:
        ours = got(client, method, mine + name, headers)
        theirs = got(client, method, starlette + name, headers)
        assert same_but_length(ours, expected), (mine, headers, ours, expected)
        difference = expected_difference(meant, applies, data, theirs, method)
        if difference is None:
            assert ours == theirs, (mine, headers, ours, theirs)
            verdicts.add(f"same: {ours.status}")
        else:
            verdicts.add(f"documented difference: {difference}")
    return " / ".join(sorted(verdicts))


@PROPERTY
@given(
    name=NAMES,
    meant=range_headers(),
    if_range_kind=IF_RANGES,
    method=st.sampled_from(["GET"] * 4 + ["HEAD"]),
)
def test_range_answers_as_starlette(
    client: TestClient, root: Path, name: str, meant: Meant, if_range_kind: str, method: str
) -> None:
    event(check(client, root, name, meant, if_range_kind, method))


@pytest.mark.slow
@BIG
@given(
    name=NAMES,
    meant=range_headers(),
    if_range_kind=IF_RANGES,
    method=st.sampled_from(["GET"] * 4 + ["HEAD"]),
)
def test_range_answers_as_starlette_many(
    client: TestClient, root: Path, name: str, meant: Meant, if_range_kind: str, method: str
) -> None:
    event(check(client, root, name, meant, if_range_kind, method))
