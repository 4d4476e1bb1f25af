"""How an HTTP/1 body is delimited: one pure decision, and the bytes around each piece.

Sans-IO, in the manner of h11's ``_writers.py``: a ``BodyWriter`` is told the *size* of each
piece and answers the bytes that go before and after it; it never sees the piece itself, so
the bytes can move by sendfile or splice while the framing stays exact. Every integration
(gunicorn, uvicorn's httptools path, the proxy) decides framing here and writes through the
engine's ``ResponseWriter``, which asks these writers.

Reading and writing share one vocabulary: ``declared`` parses what a head says (strictly:
ambiguous framing is the stuff of request smuggling), ``for_response`` decides how a server
frames a body it sends, ``for_message`` how a received response is delimited (RFC 9112 6.3).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_EXTENSIONS = re.compile(rb"(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*" % (_TOKEN, _TOKEN, _QUOTED))
"""RFC 9112 7.1.1: ``*( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )``."""

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"


class FramingError(ValueError):
    """A head whose body framing is invalid or ambiguous, or a body that breaks its framing."""


class Delimit(enum.Enum):
    """What ends a body on the wire."""

    NONE = "none"  # no body: HEAD, 1xx, 204, 304
    LENGTH = "length"  # Content-Length bytes
    CHUNKED = "chunked"  # Transfer-Encoding: chunked, ended by the last chunk
    CLOSE = "close"  # the end of the connection


@dataclass(frozen=True)
class Declared:
    """What a head's own fields say about its body."""

    length: int | None = None  # Content-Length, when given
    chunked: bool = False  # Transfer-Encoding: chunked


@dataclass(frozen=True)
class Framing:
    """How one body goes on the wire."""

    delimit: Delimit
    length: int | None = None  # LENGTH: the body's bytes
    add_length: bool = False  # the head needs ``Content-Length: length`` added (the app set none)
    add_chunked: bool = False  # the head needs ``Transfer-Encoding: chunked`` added
    close: bool = False  # the connection ends with the body (CLOSE, or HTTP/1.0 without length)

    def header(self) -> tuple[bytes, bytes] | None:
        """The framing field the head must gain, if any."""
        if self.add_length:
            return (b"content-length", b"%d" % (self.length or 0))
        if self.add_chunked:
            return (b"transfer-encoding", b"chunked")
        return None


def body_allowed(method: str | bytes, status: int) -> bool:
    """Whether a response to ``method`` with ``status`` may carry a body (RFC 9110 6.4.1)."""
    head = method in ("HEAD", b"HEAD")
    return not head and status >= 200 and status not in (204, 304)


def length_allowed(status: int) -> bool:
    """Whether a response with ``status`` may state a Content-Length (RFC 9110 8.6)."""
    return status >= 200 and status != 204


def content_length(value: bytes | str) -> int:
    """A Content-Length field's value: digits only (no sign, no list, no spaces inside)."""
    raw = value.encode("latin-1") if isinstance(value, str) else bytes(value)
    raw = raw.strip(b" \t")
    if not raw or not _DIGITS.issuperset(raw) or len(raw) > 18:
        raise FramingError(f"invalid Content-Length: {raw[:40]!r}")
    return int(raw)


def declared(headers: Iterable[tuple[bytes | str, bytes | str]]) -> Declared:
    """What ``headers`` declare about the body; ``FramingError`` for anything ambiguous:
    repeated or list-valued Content-Length, Transfer-Encoding other than one ``chunked``,
    both fields at once."""
    lengths: list[int] = []
    codings: list[bytes] = []
    for name, value in headers:
        key = (name.encode("latin-1") if isinstance(name, str) else bytes(name)).lower()
        if key == b"content-length":
            lengths.append(content_length(value))
        elif key == b"transfer-encoding":
            raw = value.encode("latin-1") if isinstance(value, str) else bytes(value)
            codings.append(raw.strip(b" \t").lower())
    if len(lengths) > 1:
        raise FramingError("duplicate Content-Length fields")
    if codings and codings != [b"chunked"]:
        raise FramingError(f"unsupported Transfer-Encoding: {b', '.join(codings)!r}")
    if lengths and codings:
        raise FramingError("both Content-Length and Transfer-Encoding")
    return Declared(lengths[0] if lengths else None, bool(codings))


@functools.lru_cache(maxsize=1024)
def for_response(
    *, http11: bool, method: str | bytes, status: int, declared: Declared, known: int | None
) -> Framing:
    """How a server frames the body it sends: the app's own framing fields first, then the
    source's ``known`` length (added as Content-Length), then chunked for HTTP/1.1 and the
    connection's end for HTTP/1.0 — the order Go's ``net/http`` and gunicorn follow.

    A pure decision whose answer is immutable, so answers are remembered: a server asks the
    same few questions again and again, and making a frozen ``Framing`` costs more than
    looking one up."""
    if not body_allowed(method, status):
        # A HEAD may say what the GET would send; 1xx/204/304 get nothing added.
        add = method in ("HEAD", b"HEAD") and declared.length is None and known is not None
        add = add and not declared.chunked and length_allowed(status)
        return Framing(Delimit.NONE, known if add else None, add_length=add)
    if declared.chunked:
        if not http11:  # an HTTP/1.0 client cannot read chunks: the end of the connection instead
            return Framing(Delimit.CLOSE, close=True)
        return Framing(Delimit.CHUNKED)
    if declared.length is not None:
        return Framing(Delimit.LENGTH, declared.length)
    if known is not None:
        return Framing(Delimit.LENGTH, known, add_length=True)
    if http11:
        return Framing(Delimit.CHUNKED, add_chunked=True)
    return Framing(Delimit.CLOSE, close=True)


def for_message(*, method: str | bytes, status: int, declared: Declared) -> Framing:
    """How a received response's body is delimited (RFC 9112 6.3)."""
    if not body_allowed(method, status):
        return Framing(Delimit.NONE)
    if declared.chunked:
        return Framing(Delimit.CHUNKED)
    if declared.length is not None:
        return Framing(Delimit.LENGTH, declared.length)
    return Framing(Delimit.CLOSE, close=True)


def chunk_size(line: bytes) -> int:
    """The size in a chunk-size line (``1a2b;ext=1\\r\\n``, RFC 9112 7.1); anything else is
    refused: the extensions must be the RFC's grammar exactly (tokens, quoted strings, BWS),
    so a bare CR or LF, a control byte or a stray space in one never passes."""
    if not line.endswith(CRLF):
        raise FramingError(f"invalid chunk-size line: {line[:40]!r}")
    line = line[:-2]
    end = len(line) - len(line.lstrip(b"0123456789abcdefABCDEF"))
    size, extensions = line[:end], line[end:]
    if not size or len(size) > 15 or not _HEX.issuperset(size):
        raise FramingError(f"invalid chunk size: {line[:40]!r}")
    if not _EXTENSIONS.fullmatch(extensions):
        raise FramingError(f"invalid chunk extension: {extensions[:40]!r}")
    return int(size, 16)


# Writers: the bytes around each piece, given only its size


class BodyWriter(Protocol):
    """The framing bytes of one body, asked piece by piece (h11's writers, with sizes only)."""

    @property
    def chunked(self) -> bool:
        """Each piece's size must be known before its bytes go (a chunk's size line)."""

    @property
    def remaining(self) -> int | None:
        """Bytes the body still has to carry, when the framing fixes them (Content-Length)."""

    def piece(self, size: int) -> tuple[bytes, bytes]:
        """The bytes before and after ``size`` body bytes (``FramingError`` if they do not fit)."""

    def end(self) -> bytes:
        """The bytes after the last piece (``FramingError`` if the body is not complete)."""


class LengthWriter:
    """A Content-Length body: no bytes around pieces, and never more or fewer than declared."""

    chunked = False

    def __init__(self, length: int) -> None:
        self.remaining: int | None = length

    def piece(self, size: int) -> tuple[bytes, bytes]:
        left = self.remaining or 0
        if size > left:
            raise FramingError(f"body longer than its Content-Length ({size} bytes with {left} left)")
        self.remaining = left - size
        return b"", b""

    def end(self) -> bytes:
        if self.remaining:
            raise FramingError(f"body ended {self.remaining} bytes short of its Content-Length")
        return b""


class ChunkedWriter:
    """Transfer-Encoding: chunked. Every piece is one chunk; an empty piece writes nothing (a
    zero-size chunk would end the body)."""

    chunked = True
    remaining = None

    def piece(self, size: int) -> tuple[bytes, bytes]:
        if not size:
            return b"", b""
        return b"%x\r\n" % size, CRLF

    def end(self) -> bytes:
        return LAST_CHUNK


class CloseWriter:
    """A body ended by closing the connection: nothing around its bytes."""

    chunked = False
    remaining = None

    def piece(self, size: int) -> tuple[bytes, bytes]:
        return b"", b""

    def end(self) -> bytes:
        return b""


class NoBodyWriter:
    """HEAD, 1xx, 204, 304: no body byte may follow the head."""

    chunked = False
    remaining = 0

    def piece(self, size: int) -> tuple[bytes, bytes]:
        if size:
            raise FramingError("this response has no body")
        return b"", b""

    def end(self) -> bytes:
        return b""


def writer_for(framing: Framing) -> BodyWriter:
    """The writer that frames a body the way ``framing`` says."""
    if framing.delimit is Delimit.LENGTH:
        return LengthWriter(framing.length or 0)
    if framing.delimit is Delimit.CHUNKED:
        return ChunkedWriter()
    if framing.delimit is Delimit.CLOSE:
        return CloseWriter()
    return NoBodyWriter()
