"""One request for one file → status, headers and body parts, pure (RFC 9110 13 to 15).

    found = answer("GET", {"range": "bytes=0-99"}, [("content-type", "text/plain"), ...], size)
    found.status, found.headers, found.parts   # 206, [..., ("content-range", ...)], [FileRange(0, 100)]

``headers`` are those of the whole representation (a 200): Content-Type and, when the server
has them, ETag and Last-Modified (the validators), Cache-Control, Vary, Content-Encoding,
Content-Disposition. The answer's headers are final, Content-Length included; its ``parts`` are
literal bytes (multipart boundaries) and ``FileRange``s of the file, none for HEAD and for
304/412/416. Conditionals and ranges are evaluated for a 200 only (a file sent with another
status is sent whole, as RFC 9110 13.2.1 says).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from secrets import token_hex

from . import conditions, ranges

Header = tuple[str, str]


@dataclass(frozen=True)
class FileRange:
    """``count`` bytes of the response's file from ``offset``."""

    offset: int
    count: int


Part = bytes | FileRange
"""What follows the head: literal bytes (multipart boundaries) or a range of the file."""


@dataclass(frozen=True)
class FileAnswer:
    status: int
    headers: list[Header]
    parts: list[Part]

    @property
    def length(self) -> int:
        """The body's length (its Content-Length), HEAD or not; 0 for a 304, which has none."""
        return next((int(value) for name, value in self.headers if name == "content-length"), 0)


BODY_HEADERS = frozenset({"content-length", "content-range", "accept-ranges", "transfer-encoding"})
"""Headers about the body sent: ``answer`` sets them for what it sends."""

METADATA_HEADERS = frozenset({"content-type", "content-encoding", "content-language", "content-disposition"})
"""Representation metadata: what a body without the representation (304, 412, 416) leaves out
(RFC 9110 15.4.5: a 304 keeps only what guides cache updates)."""

VALIDATOR_HEADERS = frozenset({"etag", "last-modified"})
CACHING_HEADERS = frozenset({"cache-control", "expires", "vary", "content-location"})
"""Kept by a 304 (RFC 9110 15.4.5, with Last-Modified as nginx and Starlette keep it), not by
an error. Every other header (Set-Cookie, X-Request-Id, CORS) is the app's own: kept on every
status."""

ACCEPTS_RANGES = ("accept-ranges", "bytes")

_NOT_IN_A_304 = BODY_HEADERS | METADATA_HEADERS
_NOT_IN_AN_ERROR = BODY_HEADERS | METADATA_HEADERS | VALIDATOR_HEADERS | CACHING_HEADERS
_NOT_IN_THE_WHOLE = frozenset({"content-length", "content-range", "accept-ranges"})


def answer(
    method: str,
    request: Mapping[str, str],
    headers: Sequence[Header],
    size: int,
    *,
    status: int = 200,
    boundary: Callable[[], str] = lambda: token_hex(13),
) -> FileAnswer:
    """What to send for ``method`` with the request headers ``request`` (by lower-case name)
    for a file of ``size`` bytes whose 200 would carry ``headers`` (lower-case names)."""
    method = method.upper()
    fields = dict(headers)
    whole = [*_without(headers, _NOT_IN_THE_WHOLE), ACCEPTS_RANGES]
    if status != 200:
        return _whole(method, status, whole, size)
    etag, last_modified = fields.get("etag"), fields.get("last-modified")
    verdict = conditions.precondition(method, request, etag, last_modified)
    if verdict == conditions.NOT_MODIFIED:
        return FileAnswer(304, _without(headers, _NOT_IN_A_304), [])
    if verdict == conditions.PRECONDITION_FAILED:
        return FileAnswer(412, [*_without(headers, _NOT_IN_AN_ERROR), ("content-length", "0")], [])
    wanted = _ranges(method, request, size, etag, last_modified)
    if wanted is None:
        return _whole(method, status, whole, size)
    if not wanted:
        own = _without(headers, _NOT_IN_AN_ERROR)
        return FileAnswer(416, [*own, ("content-range", f"bytes */{size}"), ("content-length", "0")], [])
    if len(wanted) == 1:
        (start, end), *_ = wanted
        head = [
            *whole,
            ("content-range", f"bytes {start}-{end - 1}/{size}"),
            ("content-length", str(end - start)),
        ]
        return FileAnswer(206, head, [] if method == "HEAD" else [FileRange(start, end - start)])
    return _multipart(
        method, whole, wanted, size, fields.get("content-type", "application/octet-stream"), boundary()
    )


def _ranges(
    method: str, request: Mapping[str, str], size: int, etag: str | None, last_modified: str | None
) -> ranges.ByteRanges | None:
    header = request.get("range")
    if header is None or method not in ("GET", "HEAD"):
        return None
    if not conditions.range_applies(request.get("if-range"), etag, last_modified):
        return None
    return ranges.byte_ranges(header, size)


def _whole(method: str, status: int, headers: list[Header], size: int) -> FileAnswer:
    parts: list[Part] = [] if method == "HEAD" or size == 0 else [FileRange(0, size)]
    return FileAnswer(status, [*headers, ("content-length", str(size))], parts)


def _multipart(
    method: str, headers: list[Header], wanted: ranges.ByteRanges, size: int, content_type: str, boundary: str
) -> FileAnswer:
    """``multipart/byteranges`` (RFC 9110 14.6), laid out byte for byte as Starlette's
    FileResponse lays it out: each part's head, its bytes; CRLF between parts; the close."""
    parts: list[Part] = []
    separator = b""  # the CRLF that ends each part goes out with the next boundary
    for start, end in wanted:
        part_head = (
            f"--{boundary}\r\nContent-Type: {content_type}\r\n"
            f"Content-Range: bytes {start}-{end - 1}/{size}\r\n\r\n"
        )
        parts += [separator + part_head.encode("latin-1"), FileRange(start, end - start)]
        separator = b"\r\n"
    parts.append(separator + f"--{boundary}--".encode("latin-1"))
    length = sum(part.count if isinstance(part, FileRange) else len(part) for part in parts)
    head = [
        *_without(headers, {"content-type"}),
        ("content-type", f"multipart/byteranges; boundary={boundary}"),
        ("content-length", str(length)),
    ]
    return FileAnswer(206, head, [] if method == "HEAD" else parts)


def _without(headers: Sequence[Header], names: AbstractSet[str]) -> list[Header]:
    return [(name, value) for name, value in headers if name not in names]
